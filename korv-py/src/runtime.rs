//! The Tokio runtime that every server of the process shares, and blocking
//! waits on it or on a client's engine that Ctrl-C interrupts.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use korv_client::engine::Engine;
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
pub(crate) const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// What a blocking wait runs its future on.
pub(crate) trait Blocker: Sync {
    /// Runs `future` to completion on the calling thread.
    fn run<F: Future>(&self, future: F) -> F::Output;
}

impl Blocker for Runtime {
    fn run<F: Future>(&self, future: F) -> F::Output {
        self.block_on(future)
    }
}

impl Blocker for Engine {
    fn run<F: Future>(&self, future: F) -> F::Output {
        self.block_on(future)
    }
}

/// Runs `future` to completion on the shared runtime; see [`block_on_with`].
pub(crate) fn block_on<F>(py: Python<'_>, future: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    block_on_with(py, runtime()?, future)
}

/// Runs `future` to completion on `blocker`, detached from Python, while
/// the calling thread keeps handling signals: a `KeyboardInterrupt` (or any
/// exception a signal handler raises) drops the future and is returned.
pub(crate) fn block_on_with<B, F>(py: Python<'_>, blocker: &B, future: F) -> PyResult<F::Output>
where
    B: Blocker,
    F: Future + Send,
    F::Output: Send,
{
    let mut future = std::pin::pin!(future);
    loop {
        let slice = py.detach(|| {
            blocker.run(async { tokio::time::timeout(SIGNAL_CHECK, &mut future).await })
        });
        match slice {
            Ok(output) => return Ok(output),
            Err(_elapsed) => py.check_signals()?,
        }
    }
}

/// A client's engine (see `korv_client::engine`): the thread that blocks
/// on a request runs the connection meanwhile, so a blocking call costs no
/// thread switch.
pub(crate) fn engine() -> PyResult<Engine> {
    Engine::new("korv-client")
        .map_err(|err| PyRuntimeError::new_err(format!("cannot start a client's runtime: {err}")))
}
