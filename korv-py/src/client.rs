//! `Client`: one SSH connection to a Korv server with one multiplexed stream,
//! over `korv_client::KorvClient`.
//!
//! Each client runs on an engine of its own (`korv_client::engine`). Three
//! ways to make a request:
//!
//! - `request`: blocks the calling thread, detached from Python, until the
//!   answer (Ctrl-C still interrupts it); that thread runs the connection
//!   while it waits, so the request costs no thread switch;
//! - `request_with_callback`: returns at once; the callback runs on the
//!   client's callback thread, one answer after another;
//! - `request_async`: returns at once; the answer resolves an asyncio future
//!   through its loop's `call_soon_threadsafe`, from one bridge thread that
//!   every client shares.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use korv_client::engine::Engine;
use korv_client::{ChannelKind, HostKeyPolicy, KorvClient, Response, Verb};
use korv_server::Headers;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use serde_json::Value;
use tokio::task::AbortHandle;

use crate::convert;
use crate::errors;
use crate::pool::PyPool;
use crate::runtime;

/// How a client connects: a `korv_client::ClientConfig` built from the
/// keyword arguments of `korv.KorvClient`.
#[pyclass(module = "korv._korv", name = "ClientConfig", frozen)]
pub(crate) struct Config(korv_client::ClientConfig);

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a non-negative number of seconds, not {value}"
        ))
    })
}

#[pymethods]
impl Config {
    /// Settings for `host`:`port`. With `identities` given, only those keys
    /// are tried (and the ssh-agent only when `use_agent` is true); without,
    /// the `~/.ssh` keys and the agent. `known_hosts` defaults to
    /// `~/.ssh/known_hosts`, checked strictly unless `accept_new`.
    /// `passphrase` decrypts encrypted identity files.
    #[new]
    #[pyo3(signature = (
        host, port, *, user = None, identities = None, known_hosts = None,
        accept_new = false, timeout = Some(30.0), connect_timeout = 10.0,
        subsystem = false, use_agent = None, passphrase = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: String,
        port: u16,
        user: Option<String>,
        identities: Option<Vec<PathBuf>>,
        known_hosts: Option<PathBuf>,
        accept_new: bool,
        timeout: Option<f64>,
        connect_timeout: f64,
        subsystem: bool,
        use_agent: Option<bool>,
        passphrase: Option<String>,
    ) -> PyResult<Self> {
        let mut config = korv_client::ClientConfig::new(host)
            .port(port)
            .request_timeout(timeout.map(|t| seconds("timeout", t)).transpose()?)
            .connect_timeout(seconds("connect_timeout", connect_timeout)?);
        if let Some(user) = user {
            config = config.user(user);
        }
        match identities {
            Some(identities) => {
                config = config
                    .default_identities(false)
                    .use_agent(use_agent.unwrap_or(false));
                for identity in identities {
                    config = config.identity_file(identity);
                }
            }
            None => config = config.use_agent(use_agent.unwrap_or(true)),
        }
        if let Some(known_hosts) = known_hosts {
            config = config.known_hosts(known_hosts);
        }
        if accept_new {
            config = config.host_key_policy(HostKeyPolicy::AcceptNew);
        }
        if subsystem {
            config = config.channel(ChannelKind::Subsystem);
        }
        if let Some(passphrase) = passphrase {
            config = config.passphrase(passphrase);
        }
        Ok(Config(config))
    }
}

/// A connected client. Built by `korv.KorvClient` and `korv.aio.KorvClient`.
#[pyclass(module = "korv._korv", name = "Client", frozen)]
pub(crate) struct Client {
    /// `None` once closed.
    inner: Mutex<Option<KorvClient>>,
    /// Runs response callbacks, in the order the answers arrive.
    callbacks: PyPool,
    /// Requests with a callback that has not returned yet.
    pending: Arc<Pending>,
    /// Runs the connection: the thread blocked on it, or its own.
    engine: Arc<Engine>,
}

impl Client {
    fn new(inner: KorvClient, engine: Arc<Engine>) -> Self {
        Client {
            inner: Mutex::new(Some(inner)),
            callbacks: crate::pool::py_pool("korv-callbacks", 1),
            pending: Arc::default(),
            engine,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<KorvClient>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks and converts a request's arguments, while attached.
    fn prepare(
        &self,
        py: Python<'_>,
        verb: &str,
        resource: String,
        body: Option<&Bound<'_, PyAny>>,
        headers: Option<Headers>,
    ) -> PyResult<Call> {
        let verb = verb
            .parse::<Verb>()
            .map_err(|err| PyValueError::new_err(err.to_string()))?;
        let body = match body {
            Some(body) if !body.is_none() => Some(convert::to_json(body)?),
            _ => None,
        };
        let client = self
            .lock()
            .clone()
            .ok_or_else(|| errors::client_closed(py))?;
        Ok(Call {
            client,
            verb,
            resource,
            body,
            headers: headers.unwrap_or_default(),
        })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.callbacks.close();
        // The connection's tasks are dropped with the runtime entered.
        let _entered = self.engine.enter();
        self.lock().take();
    }
}

/// One request, ready to be sent without Python.
struct Call {
    client: KorvClient,
    verb: Verb,
    resource: String,
    body: Option<Value>,
    headers: Headers,
}

impl Call {
    async fn send(self) -> Result<Response, korv_client::Error> {
        self.client
            .request(self.verb, &self.resource, self.body.as_ref(), self.headers)
            .await
    }
}

#[pymethods]
impl Client {
    /// Connects, blocking (Ctrl-C interrupts); raises a `korv.KorvError`.
    #[staticmethod]
    fn connect(py: Python<'_>, config: &Config) -> PyResult<Client> {
        let config = config.0.clone();
        let engine = Arc::new(runtime::engine()?);
        match runtime::block_on_with(py, &*engine, KorvClient::connect(config))? {
            Ok(client) => Ok(Client::new(client, engine)),
            Err(err) => Err(errors::client_error(py, err)),
        }
    }

    /// Connects in the background and resolves `future` (of `event_loop`)
    /// with the `Client`, or with the `korv.KorvError`.
    #[staticmethod]
    fn connect_async(
        config: &Config,
        event_loop: Py<PyAny>,
        future: Py<PyAny>,
    ) -> PyResult<RequestHandle> {
        let config = config.0.clone();
        let engine = Arc::new(runtime::engine()?);
        let task = engine.spawn({
            let engine = Arc::clone(&engine);
            async move {
                let connected = KorvClient::connect(config).await;
                settle(event_loop, future, move |py| match connected {
                    Ok(client) => Ok(Py::new(py, Client::new(client, engine))?.into_any()),
                    Err(err) => Err(errors::client_error(py, err)),
                });
            }
        });
        Ok(RequestHandle(task.abort_handle()))
    }

    /// Sends a request and blocks until its answer, the response dict.
    #[pyo3(signature = (verb, resource, body = None, headers = None))]
    fn request(
        &self,
        py: Python<'_>,
        verb: &str,
        resource: String,
        body: Option<&Bound<'_, PyAny>>,
        headers: Option<Headers>,
    ) -> PyResult<Py<PyDict>> {
        let call = self.prepare(py, verb, resource, body, headers)?;
        match runtime::block_on_with(py, &*self.engine, call.send())? {
            Ok(response) => Ok(response_dict(py, &response)?.unbind()),
            Err(err) => Err(errors::client_error(py, err)),
        }
    }

    /// Sends a request and returns at once; `on_done(response, error)` is
    /// called on the callback thread with the response dict and `None`, or
    /// `None` and the `korv.KorvError`.
    #[pyo3(signature = (verb, resource, body, headers, on_done))]
    fn request_with_callback(
        &self,
        py: Python<'_>,
        verb: &str,
        resource: String,
        body: Option<&Bound<'_, PyAny>>,
        headers: Option<Headers>,
        on_done: Py<PyAny>,
    ) -> PyResult<()> {
        let call = self.prepare(py, verb, resource, body, headers)?;
        let pending = PendingGuard::new(&self.pending);
        let callbacks = self.callbacks.clone();
        self.engine.spawn(async move {
            let result = call.send().await;
            let job = Box::new(move |py: Python<'_>| {
                let (response, error) = match result {
                    Ok(response) => match response_dict(py, &response) {
                        Ok(dict) => (dict.into_any(), py.None().into_bound(py)),
                        Err(err) => (
                            py.None().into_bound(py),
                            err.into_value(py).into_bound(py).into_any(),
                        ),
                    },
                    Err(err) => (
                        py.None().into_bound(py),
                        errors::client_error(py, err)
                            .into_value(py)
                            .into_bound(py)
                            .into_any(),
                    ),
                };
                if let Err(err) = on_done.bind(py).call1((response, error)) {
                    err.write_unraisable(py, None);
                }
                drop(pending);
            });
            // A closed client drops the job, and with it the pending mark.
            let _ = callbacks.submit(job);
        });
        Ok(())
    }

    /// Sends a request and returns at once; the answer resolves `future` (of
    /// `event_loop`) with the response dict or the `korv.KorvError`. The
    /// handle cancels the request.
    #[pyo3(signature = (verb, resource, body, headers, event_loop, future))]
    #[allow(clippy::too_many_arguments)]
    fn request_async(
        &self,
        py: Python<'_>,
        verb: &str,
        resource: String,
        body: Option<&Bound<'_, PyAny>>,
        headers: Option<Headers>,
        event_loop: Py<PyAny>,
        future: Py<PyAny>,
    ) -> PyResult<RequestHandle> {
        let call = self.prepare(py, verb, resource, body, headers)?;
        let task = self.engine.spawn(async move {
            let result = call.send().await;
            settle(event_loop, future, move |py| match result {
                Ok(response) => Ok(response_dict(py, &response)?.into_any().unbind()),
                Err(err) => Err(errors::client_error(py, err)),
            });
        });
        Ok(RequestHandle(task.abort_handle()))
    }

    /// Sends `WATCH resource` and blocks until the server confirms it: the
    /// watch, whose `next` gives its events. A refusal raises
    /// `korv.WatchRefusedError` with the server's response.
    #[pyo3(signature = (resource, body = None))]
    fn watch(
        &self,
        py: Python<'_>,
        resource: String,
        body: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<crate::watch::Watch> {
        let call = self.prepare(py, "WATCH", resource, body, None)?;
        let started = runtime::block_on_with(py, &*self.engine, async move {
            call.client.watch(&call.resource, call.body.as_ref()).await
        })?;
        match started {
            Ok(watch) => Ok(crate::watch::Watch::new(watch, Arc::clone(&self.engine))),
            Err(err) => Err(errors::client_error(py, err)),
        }
    }

    /// Sends `WATCH resource`; the confirmed watch (or the error) resolves
    /// `future` of `event_loop`.
    #[pyo3(signature = (resource, body, event_loop, future))]
    fn watch_async(
        &self,
        py: Python<'_>,
        resource: String,
        body: Option<&Bound<'_, PyAny>>,
        event_loop: Py<PyAny>,
        future: Py<PyAny>,
    ) -> PyResult<RequestHandle> {
        let call = self.prepare(py, "WATCH", resource, body, None)?;
        let engine = Arc::clone(&self.engine);
        let task = self.engine.spawn(async move {
            let started = call.client.watch(&call.resource, call.body.as_ref()).await;
            settle(event_loop, future, move |py| match started {
                Ok(watch) => Ok(Py::new(py, crate::watch::Watch::new(watch, engine))?.into_any()),
                Err(err) => Err(errors::client_error(py, err)),
            });
        });
        Ok(RequestHandle(task.abort_handle()))
    }

    /// Waits until every callback of a request made with a callback has
    /// returned, at most `timeout` seconds (`None`: forever); returns whether
    /// none is left. Ctrl-C interrupts it.
    #[pyo3(signature = (timeout = None))]
    fn wait_idle(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = match timeout {
            Some(limit) => Some(Instant::now() + seconds("timeout", limit)?),
            None => None,
        };
        loop {
            let slice = match deadline {
                Some(deadline) => deadline
                    .saturating_duration_since(Instant::now())
                    .min(runtime::SIGNAL_CHECK),
                None => runtime::SIGNAL_CHECK,
            };
            if py.detach(|| self.pending.wait_idle(slice)) {
                return Ok(true);
            }
            py.check_signals()?;
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(false);
            }
        }
    }

    /// Requests made with a callback whose callback has not returned yet.
    #[getter]
    fn pending(&self) -> usize {
        self.pending.count()
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.lock().is_none()
    }

    /// Closes the connection: requests in flight fail with
    /// `korv.ConnectionClosedError`, as do later ones.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let client = self.lock().take();
        self.callbacks.close();
        py.detach(|| {
            let _entered = self.engine.enter();
            drop(client);
        });
        Ok(())
    }
}

/// Cancels a request made with `request_async` (or a `connect_async`).
#[pyclass(module = "korv._korv", name = "RequestHandle", frozen)]
pub(crate) struct RequestHandle(AbortHandle);

impl RequestHandle {
    pub(crate) fn new(task: AbortHandle) -> Self {
        RequestHandle(task)
    }
}

#[pymethods]
impl RequestHandle {
    /// Stops waiting for the answer; a late answer is dropped.
    fn cancel(&self) {
        self.0.abort();
    }
}

/// Counts requests whose callback has not returned.
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, usize> {
        self.count
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(&self) -> usize {
        *self.lock()
    }

    fn wait_idle(&self, limit: Duration) -> bool {
        let count = self.lock();
        let (count, _) = self
            .idle
            .wait_timeout_while(count, limit, |count| *count > 0)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *count == 0
    }
}

/// One pending request; dropping it (after the callback, or with the job of
/// a closed client) takes it off the count.
struct PendingGuard(Arc<Pending>);

impl PendingGuard {
    fn new(pending: &Arc<Pending>) -> Self {
        *pending.lock() += 1;
        PendingGuard(Arc::clone(pending))
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut count = self.0.lock();
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.0.idle.notify_all();
        }
    }
}

/// The response as the dict the original client returned, plus `headers`:
/// `{'request_id': …, 'code': 200, 'body': …, 'headers': {…}}`.
pub(crate) fn response_dict<'py>(
    py: Python<'py>,
    response: &Response,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    let request_id = match &response.request_id {
        Some(id) => crate::server::request_id(py, id)?,
        None => py.None().into_bound(py),
    };
    dict.set_item(intern!(py, "request_id"), request_id)?;
    dict.set_item(intern!(py, "code"), response.code.as_u16())?;
    dict.set_item(intern!(py, "body"), convert::to_python(py, &response.body)?)?;
    dict.set_item(
        intern!(py, "headers"),
        crate::server::headers_dict(py, &response.headers)?,
    )?;
    Ok(dict)
}

/// The thread that resolves asyncio futures for every client.
fn bridge() -> &'static PyPool {
    static BRIDGE: OnceLock<PyPool> = OnceLock::new();
    BRIDGE.get_or_init(|| crate::pool::py_pool("korv-asyncio-bridge", 1))
}

/// Resolves `future` on `event_loop` with what `outcome` gives, from the
/// bridge thread.
pub(crate) fn settle<F>(event_loop: Py<PyAny>, future: Py<PyAny>, outcome: F)
where
    F: FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let job = Box::new(move |py: Python<'_>| {
        let (result, error) = match outcome(py) {
            Ok(result) => (result, py.None()),
            Err(err) => (py.None(), err.into_value(py).into_any()),
        };
        let scheduled = resolver(py).and_then(|resolve| {
            event_loop.bind(py).call_method1(
                intern!(py, "call_soon_threadsafe"),
                (resolve, future, result, error),
            )
        });
        // A loop that was closed meanwhile has nobody left to tell.
        drop(scheduled);
    });
    let _ = bridge().submit(job);
}

fn resolver(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    Ok(RESOLVE
        .get_or_try_init(py, || {
            wrap_pyfunction!(resolve_future, py).map(|function| function.into_any().unbind())
        })?
        .bind(py))
}

/// Sets `future`'s result (or its exception when `error` is not `None`),
/// unless it is already done (cancelled). Runs on the future's loop.
#[pyfunction]
pub(crate) fn resolve_future(
    future: &Bound<'_, PyAny>,
    result: &Bound<'_, PyAny>,
    error: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = future.py();
    if future.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    if error.is_none() {
        future.call_method1(intern!(py, "set_result"), (result,))?;
    } else {
        future.call_method1(intern!(py, "set_exception"), (error,))?;
    }
    Ok(())
}
