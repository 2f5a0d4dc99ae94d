//! Threads attached to Python that run jobs sent from Tokio.
//!
//! A [`PyPool`] is a `scheduler::Pool` of Python jobs: see there which
//! thread runs which job and when threads are added. Each thread attaches
//! to the interpreter once, for its whole life, and detaches while it waits
//! for work, so waiting never holds the GIL and the thread keeps one Python
//! thread state (its `threading.local` data survive between jobs, until the
//! thread ends after `scheduler::KEEP_ALIVE` idle). Once attached, a thread
//! runs every job queued before it detaches again: a burst of short jobs
//! costs one GIL acquisition, not one per job.

use std::panic::AssertUnwindSafe;

use pyo3::prelude::*;

use crate::scheduler::Pool;

/// Work for a pool thread, run attached to Python.
pub(crate) type Job = Box<dyn FnOnce(Python<'_>) + Send>;

/// A pool of threads attached to Python. Cheap to clone; clones share the
/// threads.
pub(crate) type PyPool = Pool<Job>;

/// A pool of at most `max_threads` threads (at least one), none started yet;
/// they are named `{name}-{n}`, in Python too.
pub(crate) fn py_pool(name: &'static str, max_threads: usize) -> PyPool {
    Pool::new(name, max_threads, run)
}

/// A pool thread: attached for life, detached while waiting.
fn run(pool: PyPool) {
    Python::attach(|py| {
        if let Some(name) = std::thread::current().name() {
            name_python_thread(py, name);
        }
        loop {
            // Jobs are taken only while attached: a thread that is draining
            // the queue is one that can run them at once.
            while let Some(job) = pool.next_job() {
                // A panicking job must not take the thread down with it:
                // the pool's accounting counts on it.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(py)));
            }
            if !py.detach(|| pool.wait_for_work()) {
                break;
            }
        }
    });
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
