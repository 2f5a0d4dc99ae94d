//! Threads attached to Python that run jobs sent from Tokio.
//!
//! A [`PyPool`] starts threads on demand, up to a maximum. Each thread
//! attaches to the interpreter once, for its whole life, and detaches while
//! it waits for work, so waiting never holds the GIL and the thread keeps one
//! Python thread state (its `threading.local` data survive between jobs).
//!
//! Jobs go to threads that are already draining the queue whenever there is
//! one: a thread that is attached and between jobs, or in one, takes the
//! next job itself before it detaches again. Under load one thread runs
//! burst after burst under one GIL acquisition, and a job costs no thread
//! wake-up and no GIL hand-over. Only when no thread is draining is an idle
//! thread woken (or a new one started).
//!
//! A job that blocks (a callback sleeping, reading a file) must not hold up
//! the jobs behind it: a watchdog thread, never attached, looks at the queue
//! every [`STALL`] while threads are draining, and when jobs waited a whole
//! `STALL` without any being taken it puts one more thread on them, while
//! the pool has room. A blocked job thus delays the others by at most about
//! two `STALL`s, and a burst of blocking jobs gets a thread each within
//! about two `STALL`s per job.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::prelude::*;

/// Work for a pool thread, run attached to Python.
pub(crate) type Job = Box<dyn FnOnce(Python<'_>) + Send>;

/// How long queued jobs may go untaken while threads are draining before
/// the watchdog adds a thread.
pub(crate) const STALL: Duration = Duration::from_millis(1);

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
    /// Idle threads wait here for a wake-up.
    work: Condvar,
    /// The watchdog waits here while no thread is draining.
    watch: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Threads waiting for work, or about to: they looked at an empty
    /// queue and will wait for a wake-up unless one came meanwhile.
    idle: usize,
    /// Threads that take jobs from the queue before they wait again:
    /// attached and between jobs or in one, or woken (or started) for that.
    draining: usize,
    /// Wake-ups sent to idle threads and not yet taken by one.
    wakeups: usize,
    /// Threads started and not yet finished.
    threads: usize,
    /// Threads ever started, for their names.
    started: usize,
    /// Jobs ever taken from the queue: the watchdog's sign of progress.
    taken: u64,
    /// Whether the watchdog thread was started.
    watchdog: bool,
    /// Whether the watchdog is looking at the queue every `STALL` (else it
    /// waits for a `submit` to ask it to).
    watching: bool,
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
                watch: Condvar::new(),
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
        if state.draining > 0 {
            // A draining thread takes it; the watchdog makes sure that the
            // thread is not stuck in a job meanwhile.
            if self.shared.max_threads > 1 && !state.watching {
                state.watching = true;
                let start = !state.watchdog;
                state.watchdog = true;
                drop(state);
                if start {
                    self.start_watchdog();
                } else {
                    self.shared.watch.notify_one();
                }
            }
            return Ok(());
        }
        if Shared::add_drainer(&self.shared, &mut state) {
            return Ok(());
        }
        // No thread at all could be started: hand the job back.
        if state.threads == 0
            && let Some(job) = state.queue.pop_back()
        {
            return Err(job);
        }
        Ok(())
    }

    /// Refuses new jobs and lets every thread finish once the queue is empty.
    /// Jobs already running are not interrupted.
    pub(crate) fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
        self.shared.watch.notify_all();
    }

    fn start_watchdog(&self) {
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(format!("{}-watchdog", self.shared.name))
            .spawn(move || shared.watchdog());
        if spawned.is_err() {
            // Without a watchdog a blocked job holds up the ones behind it
            // until it returns; the pool still works.
            let mut state = self.shared.lock();
            state.watchdog = false;
            state.watching = false;
        }
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

    /// Puts one more thread on the queue: wakes an idle one, or starts one
    /// while the pool has room. Returns whether it did.
    fn add_drainer(shared: &Arc<Shared>, state: &mut MutexGuard<'_, State>) -> bool {
        if state.idle > state.wakeups {
            state.draining += 1;
            state.wakeups += 1;
            shared.work.notify_one();
            return true;
        }
        if state.threads >= shared.max_threads {
            return false;
        }
        state.draining += 1;
        state.threads += 1;
        state.started += 1;
        let name = format!("{}-{}", shared.name, state.started);
        let worker = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || worker.run(&name));
        if spawned.is_err() {
            state.draining -= 1;
            state.threads -= 1;
            return false;
        }
        true
    }

    /// Waits, detached, for a wake-up; false once the pool is closed and
    /// its queue empty (the thread then ends). The thread is counted idle
    /// already (by `next_job`).
    fn wait_for_work(&self) -> bool {
        let mut state = self.lock();
        loop {
            if state.wakeups > 0 {
                // `add_drainer` counted this thread as draining.
                state.wakeups -= 1;
                state.idle -= 1;
                return true;
            }
            if state.closed {
                state.idle -= 1;
                if state.queue.is_empty() {
                    state.threads -= 1;
                    return false;
                }
                // Closing wakes every thread to finish the queue.
                state.draining += 1;
                return true;
            }
            state = self
                .work
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// The next job, or `None` when the queue is empty: the thread then
    /// stops draining and counts as idle, in the same step, so that a job
    /// queued after it looked wakes a thread (this one, maybe, before it
    /// even waits).
    fn next_job(&self) -> Option<Job> {
        let mut state = self.lock();
        match state.queue.pop_front() {
            Some(job) => {
                state.taken += 1;
                Some(job)
            }
            None => {
                state.draining -= 1;
                state.idle += 1;
                None
            }
        }
    }

    /// A pool thread: attached for life, detached while waiting. It starts
    /// out draining (started for a job).
    fn run(&self, name: &str) {
        Python::attach(|py| {
            name_python_thread(py, name);
            loop {
                // Jobs are taken only while attached, so none waits on a
                // thread that is itself waiting for the GIL.
                while let Some(job) = self.next_job() {
                    // A panicking job must not take the thread down with it:
                    // the pool's accounting counts on it.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(py)));
                }
                if !py.detach(|| self.wait_for_work()) {
                    break;
                }
            }
        });
    }

    /// The watchdog thread: while threads are draining, every `STALL` it
    /// checks that a job was taken since the last look whenever jobs were
    /// waiting all along, and otherwise puts one more thread on them.
    fn watchdog(self: Arc<Self>) {
        let mut state = self.lock();
        loop {
            if state.closed {
                return;
            }
            if !state.watching {
                state = self
                    .watch
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            let waiting = !state.queue.is_empty();
            let taken = state.taken;
            state = self
                .watch
                .wait_timeout(state, STALL)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
            if waiting && !state.queue.is_empty() && state.taken == taken {
                // Every draining thread is stuck in a job (or waiting for
                // the GIL another thread holds).
                Shared::add_drainer(&self, &mut state);
            }
            if state.draining == 0 {
                state.watching = false;
            }
        }
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
