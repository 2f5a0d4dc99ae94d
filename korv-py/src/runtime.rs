//! The Tokio runtime that every server and client of the process shares.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The shared runtime, started on first use. Its thread never attaches to
/// Python.
///
/// One I/O thread: Python runs one callback at a time (the GIL) on the
/// pool's threads, and one thread of Korv's engine does many times the
/// requests per second that Python does. With a second one, each answer a
/// callback sent woke a parked worker, which woke the other to share the
/// work: about one thread switch per request.
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("korv-io")
        .enable_all()
        .build()
        .map_err(|err| PyRuntimeError::new_err(format!("cannot start Korv's runtime: {err}")))?;
    // Two threads may race to start it; the loser's runtime is dropped unused.
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// How often a blocking wait comes back to run Python's signal handlers, so
/// that Ctrl-C interrupts it.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Runs `future` to completion on the runtime, detached from Python, while
/// the calling thread keeps handling signals: a `KeyboardInterrupt` (or any
/// exception a signal handler raises) drops the future and is returned.
pub(crate) fn block_on<F>(py: Python<'_>, future: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let runtime = runtime()?;
    let mut future = std::pin::pin!(future);
    loop {
        let slice = py.detach(|| {
            runtime.block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut future).await })
        });
        match slice {
            Ok(output) => return Ok(output),
            Err(_elapsed) => py.check_signals()?,
        }
    }
}
