//! `korv._korv`: the native half of the `korv` Python package.
//!
//! The Python-facing API (`korv.KorvServer`, `korv.KorvClient`,
//! `korv.aio.KorvClient`, the exceptions) is a small pure-Python layer in
//! `python/korv/`; this module gives it three classes over `korv-server` and
//! `korv-client`:
//!
//! - `Server`: routes whose handlers call Python callbacks, bound and served
//!   on a shared Tokio runtime.
//! - `Client`: one SSH connection with one multiplexed stream; blocking
//!   requests, requests answered through a callback, and requests that
//!   resolve an asyncio future.
//! - `Responder`: how an `async def` callback, awaited on an asyncio loop,
//!   answers its request.
//!
//! No thread holds the GIL across I/O: the Tokio runtime never attaches to
//! Python, and Python code runs on the threads of a pool (`pool`), which wait
//! for work detached from the interpreter.
//!
//! # Layout
//!
//! Each module uses only the ones listed before it.
//!
//! - `runtime`: the Tokio runtime every server and client shares.
//! - `scheduler`: a thread pool's bookkeeping, apart from Python.
//! - `pool`: threads attached to Python that run jobs sent from Tokio.
//! - `convert`: JSON values to Python objects and back, as the `json` module
//!   would.
//! - `errors`: Rust errors to the exceptions of `korv._errors`.
//! - `server`: `Server` and `Responder`.
//! - `client`: `Client`.

mod client;
mod convert;
mod errors;
mod pool;
mod runtime;
mod scheduler;
mod server;
mod watch;

use pyo3::prelude::*;

/// The `korv._korv` module.
#[pymodule]
fn _korv(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<server::Server>()?;
    module.add_class::<server::Responder>()?;
    module.add_class::<client::Config>()?;
    module.add_class::<client::Client>()?;
    module.add_class::<client::RequestHandle>()?;
    module.add_class::<watch::Watch>()?;
    module.add_function(wrap_pyfunction!(client::resolve_future, module)?)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
