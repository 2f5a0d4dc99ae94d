//! Threads attached to Python that run jobs sent from Tokio.
//!
//! A [`PyPool`] starts threads on demand, up to a maximum. Each thread
//! attaches to the interpreter once, for its whole life, and detaches while
//! it waits for work, so waiting never holds the GIL and the thread keeps one
//! Python thread state (its `threading.local` data survive between jobs).
//! Once attached, a thread runs every job that is queued before it detaches
//! again: a burst of short jobs costs one GIL hand-over, not one per job.
//!
//! A thread is started whenever more jobs wait than threads are idle, so a
//! job that blocks (a callback sleeping, reading a file) never holds up the
//! jobs behind it while the pool has room.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use pyo3::prelude::*;

/// Work for a pool thread, run attached to Python.
pub(crate) type Job = Box<dyn FnOnce(Python<'_>) + Send>;

/// A pool of threads attached to Python. Cheap to clone; clones share the
/// threads.
#[derive(Clone)]
pub(crate) struct PyPool {
    shared: Arc<Shared>,
}

struct Shared {
    /// Thread names are `{name}-{n}`.
    name: &'static str,
    max_threads: usize,
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Threads waiting for work.
    idle: usize,
    /// Threads started and not yet finished.
    threads: usize,
    /// Threads ever started, for their names.
    started: usize,
    closed: bool,
}

impl PyPool {
    /// A pool of at most `max_threads` threads (at least one), none started yet.
    pub(crate) fn new(name: &'static str, max_threads: usize) -> Self {
        PyPool {
            shared: Arc::new(Shared {
                name,
                max_threads: max_threads.max(1),
                state: Mutex::new(State::default()),
                work: Condvar::new(),
            }),
        }
    }

    /// Queues `job`. Returns it back when the pool is closed, or when no
    /// thread can be started and none is running.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(job);
        }
        state.queue.push_back(job);
        let start = state.queue.len() > state.idle && state.threads < self.shared.max_threads;
        if !start {
            drop(state);
            self.shared.work.notify_one();
            return Ok(());
        }
        state.threads += 1;
        state.started += 1;
        let name = format!("{}-{}", self.shared.name, state.started);
        drop(state);
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || shared.run(&name));
        if spawned.is_err() {
            let mut state = self.shared.lock();
            state.threads -= 1;
            if state.threads == 0 {
                // Nothing will ever run the queue: hand the newest job back.
                if let Some(job) = state.queue.pop_back() {
                    return Err(job);
                }
            }
        }
        Ok(())
    }

    /// Refuses new jobs and lets every thread finish once the queue is empty.
    /// Jobs already running are not interrupted.
    pub(crate) fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A job never runs under this lock, so a poisoned lock only means a
        // panic between two plain field updates: the state is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits, detached, until there is a job or the pool is closed and empty.
    fn wait_for_work(&self) -> bool {
        let mut state = self.lock();
        loop {
            if !state.queue.is_empty() {
                return true;
            }
            if state.closed {
                state.threads -= 1;
                return false;
            }
            state.idle += 1;
            state = self
                .work
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.idle -= 1;
        }
    }

    fn next_job(&self) -> Option<Job> {
        self.lock().queue.pop_front()
    }

    /// A pool thread: attached for life, detached while waiting.
    fn run(&self, name: &str) {
        Python::attach(|py| {
            name_python_thread(py, name);
            while py.detach(|| self.wait_for_work()) {
                // Jobs are taken only while attached, so none waits on a
                // thread that is itself waiting for the GIL.
                while let Some(job) = self.next_job() {
                    // A panicking job must not take the thread down with it:
                    // the pool's accounting counts on it.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(py)));
                }
            }
        });
    }
}

/// Gives the thread its name in Python (`threading.current_thread().name`,
/// which logging prints), instead of `Dummy-N`.
fn name_python_thread(py: Python<'_>, name: &str) {
    let named = py
        .import("threading")
        .and_then(|threading| threading.call_method0("current_thread"))
        .and_then(|thread| thread.setattr("name", name));
    if let Err(err) = named {
        err.write_unraisable(py, None);
    }
}
