//! `Watch`: the events of one `WATCH` (protocol 1.1), over
//! `korv_client::Watch`, for `korv.KorvClient.watch` (an iterator) and
//! `korv.aio.KorvClient.watch` (an async iterator).

use std::sync::Arc;

use futures_util::StreamExt;
use korv_client::engine::Engine;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::sync::Mutex;

use crate::client::{RequestHandle, response_dict, settle};
use crate::convert;
use crate::errors;
use crate::runtime;

/// What one step of a watch gives: an event, or the end.
enum Step {
    Event(serde_json::Value),
    End(Option<korv_client::Response>),
}

/// One watch. Dropping it (or `close`) cancels the watch with `UNWATCH`.
#[pyclass(module = "korv._korv", name = "Watch", frozen)]
pub(crate) struct Watch {
    inner: Arc<Mutex<Option<korv_client::Watch>>>,
    /// The engine of the client whose connection carries the watch.
    engine: Arc<Engine>,
}

impl Watch {
    pub(crate) fn new(inner: korv_client::Watch, engine: Arc<Engine>) -> Self {
        Watch {
            inner: Arc::new(Mutex::new(Some(inner))),
            engine,
        }
    }
}

/// The next event, or the end with the final frame (`None` when closed).
async fn step(inner: Arc<Mutex<Option<korv_client::Watch>>>) -> Result<Step, korv_client::Error> {
    let mut slot = inner.lock().await;
    let Some(watch) = slot.as_mut() else {
        return Ok(Step::End(None));
    };
    match watch.next().await {
        Some(Ok(event)) => Ok(Step::Event(event)),
        Some(Err(err)) => Err(err),
        None => Ok(Step::End(watch.end().cloned())),
    }
}

/// `(True, event)` or `(False, final response dict or None)`.
fn step_tuple(py: Python<'_>, step: Step) -> PyResult<Bound<'_, PyTuple>> {
    match step {
        Step::Event(event) => PyTuple::new(
            py,
            [
                true.into_pyobject(py)?.to_owned().into_any(),
                convert::to_python(py, &event)?,
            ],
        ),
        Step::End(end) => {
            let end = match end {
                Some(end) => response_dict(py, &end)?.into_any(),
                None => py.None().into_bound(py),
            };
            PyTuple::new(py, [false.into_pyobject(py)?.to_owned().into_any(), end])
        }
    }
}

async fn cancel(
    inner: Arc<Mutex<Option<korv_client::Watch>>>,
) -> Result<Option<korv_client::Response>, korv_client::Error> {
    let watch = inner.lock().await.take();
    match watch {
        Some(watch) => watch.cancel().await.map(Some),
        None => Ok(None),
    }
}

#[pymethods]
impl Watch {
    /// Blocks until the next event: `(True, event)`, or `(False, final)` at
    /// the end, `final` being the final frame's response dict.
    fn next(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        let inner = Arc::clone(&self.inner);
        match runtime::block_on_with(py, &*self.engine, step(inner))? {
            Ok(step) => Ok(step_tuple(py, step)?.unbind()),
            Err(err) => Err(errors::client_error(py, err)),
        }
    }

    /// Resolves `future` (of `event_loop`) with what `next` returns.
    fn next_async(&self, event_loop: Py<PyAny>, future: Py<PyAny>) -> PyResult<RequestHandle> {
        let inner = Arc::clone(&self.inner);
        let task = self.engine.spawn(async move {
            let result = step(inner).await;
            settle(event_loop, future, move |py| match result {
                Ok(step) => Ok(step_tuple(py, step)?.into_any().unbind()),
                Err(err) => Err(errors::client_error(py, err)),
            });
        });
        Ok(RequestHandle::new(task.abort_handle()))
    }

    /// Cancels the watch (`UNWATCH`) and blocks until its final frame: its
    /// response dict (`None` if the watch was closed already).
    fn cancel(&self, py: Python<'_>) -> PyResult<Option<Py<PyDict>>> {
        let inner = Arc::clone(&self.inner);
        match runtime::block_on_with(py, &*self.engine, cancel(inner))? {
            Ok(Some(end)) => Ok(Some(response_dict(py, &end)?.unbind())),
            Ok(None) => Ok(None),
            Err(err) => Err(errors::client_error(py, err)),
        }
    }

    /// Resolves `future` with what `cancel` returns.
    fn cancel_async(&self, event_loop: Py<PyAny>, future: Py<PyAny>) -> PyResult<RequestHandle> {
        let inner = Arc::clone(&self.inner);
        let task = self.engine.spawn(async move {
            let result = cancel(inner).await;
            settle(event_loop, future, move |py| match result {
                Ok(Some(end)) => Ok(response_dict(py, &end)?.into_any().unbind()),
                Ok(None) => Ok(py.None()),
                Err(err) => Err(errors::client_error(py, err)),
            });
        });
        Ok(RequestHandle::new(task.abort_handle()))
    }

    /// Stops the watch without waiting (`UNWATCH` if it has not ended).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let inner = Arc::clone(&self.inner);
        runtime::block_on_with(py, &*self.engine, async move {
            inner.lock().await.take();
        })
    }
}
