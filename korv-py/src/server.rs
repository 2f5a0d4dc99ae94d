//! `Server`: a `korv_server::KorvServer` whose routes call Python callbacks.
//!
//! A request reaches its route's handler on the Tokio runtime, which sends a
//! job to the server's [`PyPool`] and waits, detached, for the answer. On a
//! pool thread the job builds the request dict and calls the callback:
//!
//! - a plain function answers there and then, `(code, body)`;
//! - an `async def` returns an awaitable, which the job hands to the Python
//!   layer's `spawn(awaitable, responder)`; it is awaited on the server's
//!   asyncio loop, and the [`Responder`] sends its answer. `spawn` returns a
//!   function that cancels it, called when the request is abandoned (timed
//!   out, cut short by a shutdown, or its client gone).
//!
//! An exception becomes a `500` whose body has the `message` and the
//! `traceback` as `traceback.format_exception` gives it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use korv_server::routing::on;
use korv_server::{
    CertificateInfo, ClientInfo, Headers, KorvServer, Limits, Request, RequestId, Response,
    RouteError, ShutdownHandle, StatusCode, Verb,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use russh::keys::PublicKey;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::convert;
use crate::errors;
use crate::pool::PyPool;
use crate::runtime;

/// Where a route's answer goes.
type Reply = oneshot::Sender<Response>;

/// A Korv server serving Python callbacks. Built by `korv.KorvServer`.
#[pyclass(module = "korv._korv", name = "Server", frozen)]
pub(crate) struct Server {
    phase: Mutex<Phase>,
    dispatch: Arc<Dispatch>,
    finished: Arc<Finished>,
}

enum Phase {
    /// Routes may still be added.
    Building(Box<Builder>),
    /// Binding; `stop` records a shutdown asked for meanwhile.
    Starting { stop: bool },
    /// Bound and serving; the handle starts the graceful shutdown.
    Serving(ShutdownHandle),
    /// Stopped, or never to serve.
    Over,
}

/// A server's settings and routes until it starts. A `KorvServer` is made
/// from them to check each new route and, at the start, to serve.
struct Builder {
    listen: SocketAddr,
    limits: Limits,
    tracebacks: bool,
    host_keys: Vec<PathBuf>,
    host_certificate: Option<PathBuf>,
    authorized_keys_file: Option<PathBuf>,
    authorized_keys: Vec<(PublicKey, String)>,
    trusted_user_ca_keys: Option<PathBuf>,
    revoked_keys: Option<PathBuf>,
    routes: Vec<(Verb, String, Arc<Route>)>,
}

impl Builder {
    /// A `KorvServer` with `routes` registered, or the first conflict.
    fn with_routes(
        mut server: KorvServer,
        routes: &[(Verb, String, Arc<Route>)],
    ) -> Result<KorvServer, RouteError> {
        for (verb, pattern, route) in routes {
            let route = Arc::clone(route);
            let handler = move |request: Request| Arc::clone(&route).call(request);
            server = server.try_route(pattern, on(*verb, handler))?;
        }
        Ok(server)
    }

    /// Adds a route after checking it against the others: a malformed
    /// pattern, or a verb already served on an equivalent one, is refused.
    fn add(&mut self, verb: Verb, pattern: &str, route: Arc<Route>) -> Result<(), RouteError> {
        self.routes.push((verb, pattern.to_owned(), route));
        if let Err(err) = Self::with_routes(KorvServer::new(), &self.routes) {
            self.routes.pop();
            return Err(err);
        }
        Ok(())
    }

    /// The server to bind.
    fn build(self) -> Result<KorvServer, RouteError> {
        let mut server = KorvServer::new()
            .listen(self.listen)
            .limits(self.limits)
            .tracebacks(self.tracebacks);
        for key in self.host_keys {
            server = server.host_key_file(key);
        }
        if let Some(path) = self.host_certificate {
            server = server.host_certificate(path);
        }
        if let Some(path) = self.authorized_keys_file {
            server = server.authorized_keys_file(path);
        }
        for (key, comment) in self.authorized_keys {
            server = server.authorized_key(key, comment);
        }
        if let Some(path) = self.trusted_user_ca_keys {
            server = server.trusted_user_ca_keys(path);
        }
        if let Some(path) = self.revoked_keys {
            server = server.revoked_keys(path);
        }
        Self::with_routes(server, &self.routes)
    }
}

/// What every route of a server shares.
struct Dispatch {
    pool: PyPool,
    /// The Python layer's `spawn(awaitable, responder)`, which awaits the
    /// awaitable on the server's asyncio loop and returns a function that
    /// cancels it.
    spawn: OnceLock<Py<PyAny>>,
    tracebacks: bool,
    /// The `client` dict of the last request, for the client that sent it:
    /// requests of one connection come in runs, and copying a dict costs
    /// less than building it. Each request gets its own copy.
    last_client: Mutex<Option<(ClientInfo, Py<PyDict>)>>,
}

impl Dispatch {
    /// The request's `client` dict, a fresh one each time.
    ///
    /// The cache's lock is never held across a call into Python: building a
    /// dict may let another thread take the GIL (the first use of an
    /// interned key does, a collection running Python code can), and that
    /// thread, asking for the lock while holding the GIL, would wait forever
    /// on this one, which waits for the GIL.
    fn client_dict<'py>(
        &self,
        py: Python<'py>,
        client: &ClientInfo,
    ) -> PyResult<Bound<'py, PyDict>> {
        if client.certificate.is_some() {
            // Its nested `certificate` dict would be shared by the copies.
            return client_dict(py, client);
        }
        let cached = match self.last_client().as_ref() {
            Some((info, dict)) if info == client => Some(dict.clone_ref(py)),
            _ => None,
        };
        if let Some(dict) = cached {
            return dict.bind(py).copy();
        }
        let dict = client_dict(py, client)?;
        let kept = dict.copy()?.unbind();
        // The dict replaced is dropped after the lock.
        let replaced = self.last_client().replace((client.clone(), kept));
        drop(replaced);
        Ok(dict)
    }

    fn last_client(&self) -> MutexGuard<'_, Option<(ClientInfo, Py<PyDict>)>> {
        self.last_client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The outcome of serving, once it is over.
#[derive(Default)]
struct Finished {
    outcome: Mutex<Option<Result<(), String>>>,
    changed: Condvar,
}

impl Finished {
    fn lock(&self) -> MutexGuard<'_, Option<Result<(), String>>> {
        self.outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, outcome: Result<(), String>) {
        self.lock().get_or_insert(outcome);
        self.changed.notify_all();
    }

    /// The outcome, waiting for it at most `limit`.
    fn wait(&self, limit: Duration) -> Option<Result<(), String>> {
        let guard = self.lock();
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, limit, |outcome| outcome.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.clone()
    }
}

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a non-negative number of seconds, not {value}"
        ))
    })
}

#[pymethods]
impl Server {
    /// A server for `host`:`port` (port 0 picks a free one), not yet bound.
    #[new]
    #[pyo3(signature = (
        host, port, host_keys, *, authorized_keys_file = None, authorized_keys = None,
        trusted_user_ca_keys = None, revoked_keys = None, host_certificate = None,
        max_workers = 64, tracebacks = true, request_timeout = Some(30.0),
        shutdown_grace = 10.0, idle_timeout = Some(600.0), max_frame = None,
        max_in_flight = None, max_connections = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: &str,
        port: u16,
        host_keys: Vec<PathBuf>,
        authorized_keys_file: Option<PathBuf>,
        authorized_keys: Option<Vec<String>>,
        trusted_user_ca_keys: Option<PathBuf>,
        revoked_keys: Option<PathBuf>,
        host_certificate: Option<PathBuf>,
        max_workers: usize,
        tracebacks: bool,
        request_timeout: Option<f64>,
        shutdown_grace: f64,
        idle_timeout: Option<f64>,
        max_frame: Option<usize>,
        max_in_flight: Option<usize>,
        max_connections: Option<usize>,
    ) -> PyResult<Self> {
        let defaults = Limits::default();
        let limits = Limits {
            // No timeout is a timeout longer than any callback will run.
            request_timeout: match request_timeout {
                Some(limit) => seconds("request_timeout", limit)?,
                None => Duration::from_secs(365 * 24 * 3600),
            },
            shutdown_grace: seconds("shutdown_grace", shutdown_grace)?,
            idle_timeout: idle_timeout
                .map(|limit| seconds("idle_timeout", limit))
                .transpose()?,
            max_frame: max_frame.unwrap_or(defaults.max_frame),
            max_in_flight_per_stream: max_in_flight.unwrap_or(defaults.max_in_flight_per_stream),
            max_connections: max_connections.unwrap_or(defaults.max_connections),
            ..defaults
        };
        let authorized_keys = authorized_keys
            .unwrap_or_default()
            .iter()
            .map(|line| {
                let key = PublicKey::from_openssh(line.trim()).map_err(|err| {
                    PyValueError::new_err(format!(
                        "not an OpenSSH public key line ({err}): {line:?}"
                    ))
                })?;
                let comment = key.comment().to_string();
                Ok((key, comment))
            })
            .collect::<PyResult<_>>()?;
        let builder = Builder {
            listen: listen_address(host, port)?,
            limits,
            tracebacks,
            host_keys,
            host_certificate,
            authorized_keys_file,
            authorized_keys,
            trusted_user_ca_keys,
            revoked_keys,
            routes: Vec::new(),
        };
        Ok(Server {
            phase: Mutex::new(Phase::Building(Box::new(builder))),
            dispatch: Arc::new(Dispatch {
                pool: crate::pool::py_pool("korv-worker", max_workers),
                spawn: OnceLock::new(),
                tracebacks,
                last_client: Mutex::new(None),
            }),
            finished: Arc::default(),
        })
    }

    /// Routes `verb` requests for `pattern` (`{name}` segments capture) to
    /// `callback`.
    ///
    /// Raises `ValueError` for an unknown verb, a malformed pattern or a
    /// route already registered; `RuntimeError` once the server started.
    fn add_route(&self, verb: &str, pattern: &str, callback: Py<PyAny>) -> PyResult<()> {
        let verb = verb
            .parse::<Verb>()
            .map_err(|err| PyValueError::new_err(err.to_string()))?;
        let mut phase = self.lock();
        let Phase::Building(builder) = &mut *phase else {
            return Err(PyRuntimeError::new_err(
                "callbacks must be added before the server starts",
            ));
        };
        let route = Arc::new(Route {
            callback,
            dispatch: Arc::clone(&self.dispatch),
        });
        builder
            .add(verb, pattern, route)
            .map_err(|err| PyValueError::new_err(err.to_string()))
    }

    /// Binds and starts serving in the background; returns the bound
    /// `(host, port)`. `spawn(awaitable, responder)` is called for each
    /// callback that returned an awaitable.
    ///
    /// Raises `korv.ServerError` when the server cannot start (a host key or
    /// the authorized keys missing or unusable, the address taken).
    fn start(&self, py: Python<'_>, spawn: Py<PyAny>) -> PyResult<(String, u16)> {
        // The lock is released at the end of this statement, before `match`.
        let previous = std::mem::replace(&mut *self.lock(), Phase::Starting { stop: false });
        let builder = match previous {
            Phase::Building(builder) => builder,
            other => {
                *self.lock() = other;
                return Err(PyRuntimeError::new_err("the server was already started"));
            }
        };
        let _ = self.dispatch.spawn.set(spawn);
        let bound = builder
            .build()
            .map_err(|err| PyValueError::new_err(err.to_string()))
            .and_then(|server| {
                runtime::block_on(py, server.bind())?.map_err(|err| errors::server_error(py, err))
            });
        let bound = match bound {
            Ok(bound) => bound,
            Err(err) => {
                *self.lock() = Phase::Over;
                self.finished.set(Ok(()));
                return Err(err);
            }
        };
        let addr = bound.local_addr();
        let handle = bound.shutdown_handle();
        let previous = std::mem::replace(&mut *self.lock(), Phase::Serving(handle.clone()));
        if let Phase::Starting { stop: true } = previous {
            handle.shutdown();
        }
        let finished = Arc::clone(&self.finished);
        runtime::runtime()?.spawn(async move {
            let outcome = bound.run().await.map_err(|err| err.to_string());
            finished.set(outcome);
        });
        Ok((addr.ip().to_string(), addr.port()))
    }

    /// Starts the graceful shutdown: no new connections, `503` for new
    /// requests, requests in flight finish within the grace period.
    fn shutdown(&self) {
        let mut phase = self.lock();
        match &mut *phase {
            Phase::Serving(handle) => handle.shutdown(),
            Phase::Starting { stop } => *stop = true,
            Phase::Building(_) => {
                // The routes' callbacks are dropped after the lock: dropping
                // a Python object may run Python code, which may hand the
                // GIL to a thread that then waits for this lock.
                let routes = std::mem::replace(&mut *phase, Phase::Over);
                drop(phase);
                drop(routes);
                self.finished.set(Ok(()));
            }
            Phase::Over => {}
        }
    }

    /// Waits until serving is over, at most `timeout` seconds (`None`:
    /// forever); returns whether it is. Signal handlers run meanwhile, so
    /// Ctrl-C raises `KeyboardInterrupt` here.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
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
            if let Some(outcome) = py.detach(|| self.finished.wait(slice)) {
                return outcome
                    .map(|()| true)
                    .map_err(|message| errors::server_error_message(py, message));
            }
            py.check_signals()?;
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(false);
            }
        }
    }

    /// Lets the callback threads finish once serving is over.
    fn close(&self) {
        self.dispatch.pool.close();
    }
}

impl Server {
    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The address to listen on; `""` means every interface, as in the original.
fn listen_address(host: &str, port: u16) -> PyResult<SocketAddr> {
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    (host, port)
        .to_socket_addrs()
        .map_err(|err| PyValueError::new_err(format!("cannot resolve host {host:?}: {err}")))?
        .next()
        .ok_or_else(|| PyValueError::new_err(format!("host {host:?} has no address")))
}

/// One registered callback.
struct Route {
    callback: Py<PyAny>,
    dispatch: Arc<Dispatch>,
}

impl Route {
    /// The handler: runs the callback on a pool thread and waits for its answer.
    ///
    /// The server drops this future when nobody will read the answer any
    /// more: at the request timeout (`504`), when the grace period of a
    /// shutdown ends (`503`), or when the client's connection is gone. An
    /// `async def` callback still running then is cancelled.
    async fn call(self: Arc<Self>, request: Request) -> Response {
        let (reply, answer) = oneshot::channel();
        let route = Arc::clone(&self);
        let task = Arc::new(AsyncTask::default());
        let run_task = Arc::clone(&task);
        let job = Box::new(move |py: Python<'_>| route.run(py, request, reply, &run_task));
        if self.dispatch.pool.submit(job).is_err() {
            return Response::error(
                None,
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            );
        }
        let abandoned = CancelOnDrop {
            task,
            pool: self.dispatch.pool.clone(),
        };
        let response = answer.await.unwrap_or_else(|_| {
            Response::error(
                None,
                StatusCode::INTERNAL_SERVER_ERROR,
                "the callback ended without an answer",
            )
        });
        abandoned.task.finish();
        response
    }

    /// On a pool thread: calls the callback and answers, or hands its
    /// awaitable to the asyncio loop.
    fn run(&self, py: Python<'_>, request: Request, reply: Reply, task: &AsyncTask) {
        let tracebacks = self.dispatch.tracebacks;
        let called = request_dict(py, &request, &self.dispatch)
            .and_then(|dict| self.callback.bind(py).call1((dict,)));
        let response = match called {
            Err(err) => failure(
                py,
                &what(&request),
                err.value(py).as_any(),
                err.traceback(py).as_ref().map(Bound::as_any),
                tracebacks,
            ),
            Ok(result) if is_awaitable(py, &result) => {
                let responder = Responder {
                    reply: Mutex::new(Some(reply)),
                    what: what(&request),
                    tracebacks,
                };
                self.spawn(py, result, responder, task);
                return;
            }
            Ok(result) => answer(py, || what(&request), &result, tracebacks),
        };
        let _ = reply.send(response);
    }

    /// Hands `awaitable` to the asyncio loop; what `spawn` returns, the
    /// function that cancels it, goes to `task`.
    fn spawn(
        &self,
        py: Python<'_>,
        awaitable: Bound<'_, PyAny>,
        responder: Responder,
        task: &AsyncTask,
    ) {
        let responder = match Py::new(py, responder) {
            Ok(responder) => responder,
            Err(err) => return err.write_unraisable(py, None),
        };
        let scheduled = match self.dispatch.spawn.get() {
            Some(spawn) => spawn.bind(py).call1((awaitable, responder.clone_ref(py))),
            None => Err(PyRuntimeError::new_err("the server has no asyncio loop")),
        };
        match scheduled {
            Ok(cancel) => {
                if let Some(cancel) = task.started(cancel.unbind()) {
                    // Abandoned meanwhile: cancel it at once.
                    call_cancel(py, &cancel);
                }
            }
            Err(err) => responder.get().fail(py, err.value(py).as_any(), None),
        }
    }
}

/// Where the awaitable of a request's `async def` callback stands, shared
/// by the handler waiting for the answer and the pool thread that starts
/// the awaitable.
#[derive(Default)]
struct AsyncTask {
    state: Mutex<TaskState>,
}

#[derive(Default)]
enum TaskState {
    /// Not handed to the asyncio loop (yet, or ever: a plain callback).
    #[default]
    NotStarted,
    /// Running on the loop; calling this cancels it.
    Running(Py<PyAny>),
    /// The handler has its answer: nothing to cancel.
    Finished,
    /// Nobody waits for the answer any more.
    Abandoned,
}

impl AsyncTask {
    fn lock(&self) -> MutexGuard<'_, TaskState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the awaitable as running, with its `cancel`; gives `cancel`
    /// back when the request was abandoned already.
    fn started(&self, cancel: Py<PyAny>) -> Option<Py<PyAny>> {
        let mut state = self.lock();
        match *state {
            TaskState::NotStarted => {
                *state = TaskState::Running(cancel);
                None
            }
            TaskState::Abandoned => Some(cancel),
            TaskState::Running(_) | TaskState::Finished => None,
        }
    }

    /// The handler got its answer.
    fn finish(&self) {
        // The replaced `cancel`, if any, is dropped after the lock.
        let _previous = std::mem::replace(&mut *self.lock(), TaskState::Finished);
    }

    /// The handler was dropped: returns the `cancel` of a running awaitable.
    fn abandon(&self) -> Option<Py<PyAny>> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, TaskState::Abandoned) {
            TaskState::Running(cancel) => Some(cancel),
            TaskState::Finished => {
                *state = TaskState::Finished;
                None
            }
            TaskState::NotStarted | TaskState::Abandoned => None,
        }
    }
}

/// Cancels a request's awaitable when its handler is dropped before the
/// answer came.
struct CancelOnDrop {
    task: Arc<AsyncTask>,
    pool: PyPool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(cancel) = self.task.abandon() else {
            return;
        };
        // This runs on a Tokio thread, which must not wait for the GIL: a
        // pool thread calls `cancel`. A closed pool means the server has
        // stopped, and the Python layer cancels what is left on its loop.
        let job = Box::new(move |py: Python<'_>| call_cancel(py, &cancel));
        let _ = self.pool.submit(job);
    }
}

/// Calls the `cancel` that `spawn` returned.
fn call_cancel(py: Python<'_>, cancel: &Py<PyAny>) {
    if let Err(err) = cancel.call0(py) {
        err.write_unraisable(py, None);
    }
}

/// `GET /hello`, for messages and logs.
fn what(request: &Request) -> String {
    format!("{} {}", request.verb(), request.resource())
}

fn is_awaitable(py: Python<'_>, result: &Bound<'_, PyAny>) -> bool {
    !result.is_instance_of::<PyTuple>() && result.hasattr(intern!(py, "__await__")).unwrap_or(false)
}

/// The request as the callback's dict: `id`, `verb`, `resource`, `body`,
/// `headers`, `params` and `client`.
fn request_dict<'py>(
    py: Python<'py>,
    request: &Request,
    dispatch: &Dispatch,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item(intern!(py, "id"), request_id(py, request.id())?)?;
    dict.set_item(intern!(py, "verb"), verb_name(py, request.verb()))?;
    dict.set_item(intern!(py, "resource"), request.resource())?;
    let body = match request.body_raw() {
        Some(raw) => {
            let value: Value = serde_json::from_str(raw.get())
                .map_err(|err| PyValueError::new_err(format!("request body: {err}")))?;
            convert::to_python(py, &value)?
        }
        None => py.None().into_bound(py),
    };
    dict.set_item(intern!(py, "body"), body)?;
    dict.set_item(intern!(py, "headers"), headers_dict(py, request.headers())?)?;
    let params = PyDict::new(py);
    for (name, value) in request.params().iter() {
        params.set_item(name, value)?;
    }
    dict.set_item(intern!(py, "params"), params)?;
    dict.set_item(
        intern!(py, "client"),
        dispatch.client_dict(py, request.client())?,
    )?;
    Ok(dict)
}

fn verb_name(py: Python<'_>, verb: Verb) -> &Bound<'_, pyo3::types::PyString> {
    match verb {
        Verb::Get => intern!(py, "GET"),
        Verb::Store => intern!(py, "STORE"),
        Verb::Update => intern!(py, "UPDATE"),
        Verb::Delete => intern!(py, "DELETE"),
        Verb::Watch => intern!(py, "WATCH"),
        Verb::Unwatch => intern!(py, "UNWATCH"),
    }
}

/// A request id as the client sent it: an `int` or a `str`.
pub(crate) fn request_id<'py>(py: Python<'py>, id: &RequestId) -> PyResult<Bound<'py, PyAny>> {
    if let Some(int) = id.as_i64() {
        return Ok(int.into_pyobject(py)?.into_any());
    }
    if let Some(int) = id.as_u64() {
        return Ok(int.into_pyobject(py)?.into_any());
    }
    Ok(id
        .as_str()
        .unwrap_or_default()
        .into_pyobject(py)?
        .into_any())
}

pub(crate) fn headers_dict<'py>(
    py: Python<'py>,
    headers: &Headers,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in headers {
        dict.set_item(name, value)?;
    }
    Ok(dict)
}

fn client_dict<'py>(py: Python<'py>, client: &ClientInfo) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item(intern!(py, "user"), &client.user)?;
    dict.set_item(intern!(py, "fingerprint"), &client.fingerprint)?;
    dict.set_item(intern!(py, "algorithm"), &client.algorithm)?;
    dict.set_item(intern!(py, "comment"), &client.comment)?;
    dict.set_item(
        intern!(py, "peer"),
        client.peer.map(|peer| peer.to_string()),
    )?;
    let certificate = match &client.certificate {
        Some(certificate) => certificate_dict(py, certificate)?.into_any(),
        None => py.None().into_bound(py),
    };
    dict.set_item(intern!(py, "certificate"), certificate)?;
    Ok(dict)
}

/// An OpenSSH user certificate the client logged in with: `key_id`,
/// `serial`, `principals`, `ca_fingerprint`, and `valid_after` and
/// `valid_before` as Unix timestamps. An open end is `None`: `valid_after`
/// for a certificate valid from the start of time (OpenSSH's "always",
/// written as 0), `valid_before` for one that never expires.
fn certificate_dict<'py>(
    py: Python<'py>,
    certificate: &CertificateInfo,
) -> PyResult<Bound<'py, PyDict>> {
    let timestamp = |time: std::time::SystemTime| {
        time.duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs_f64())
            .unwrap_or(0.0)
    };
    let valid_after = (certificate.valid_after > std::time::UNIX_EPOCH)
        .then(|| timestamp(certificate.valid_after));
    let dict = PyDict::new(py);
    dict.set_item("key_id", &certificate.key_id)?;
    dict.set_item("serial", certificate.serial)?;
    dict.set_item("principals", &certificate.principals)?;
    dict.set_item("ca_fingerprint", &certificate.ca_fingerprint)?;
    dict.set_item("valid_after", valid_after)?;
    dict.set_item("valid_before", certificate.valid_before.map(timestamp))?;
    Ok(dict)
}

/// A callback's return value as the response, or a `500` saying what is
/// wrong with it. `what` names the request (`GET /hello`) for that `500`.
fn answer(
    py: Python<'_>,
    what: impl FnOnce() -> String,
    result: &Bound<'_, PyAny>,
    tracebacks: bool,
) -> Response {
    response_from(result)
        .unwrap_or_else(|err| failure(py, &what(), err.value(py).as_any(), None, tracebacks))
}

/// `(code,)`, `(code, body)` or `(code, body, headers)` as a response.
fn response_from(result: &Bound<'_, PyAny>) -> PyResult<Response> {
    let items: Vec<Bound<'_, PyAny>> = if let Ok(tuple) = result.cast::<PyTuple>() {
        tuple.iter().collect()
    } else if let Ok(list) = result.cast::<PyList>() {
        list.iter().collect()
    } else {
        return Err(PyTypeError::new_err(format!(
            "a callback must return (code, body), not {}",
            result.get_type().name()?
        )));
    };
    let [code, rest @ ..] = items.as_slice() else {
        return Err(PyTypeError::new_err(
            "a callback must return (code, body), not an empty tuple",
        ));
    };
    if rest.len() > 2 {
        return Err(PyTypeError::new_err(format!(
            "a callback must return (code, body) or (code, body, headers), not {} items",
            items.len()
        )));
    }
    let code: i64 = code.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "the status code must be an int, not {}",
            code.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    let code = u16::try_from(code)
        .ok()
        .and_then(StatusCode::from_u16)
        .ok_or_else(|| PyValueError::new_err(format!("status code {code} is outside 100..=599")))?;
    let body = match rest.first() {
        Some(body) => convert::to_json(body)?,
        None => Value::Null,
    };
    let headers: Headers = match rest.get(1) {
        Some(headers) if !headers.is_none() => headers
            .extract()
            .map_err(|_| PyTypeError::new_err("headers must be a dict of str to str"))?,
        _ => Headers::new(),
    };
    Ok(Response {
        request_id: None,
        code,
        body,
        headers,
        seq: None,
        more: None,
    })
}

/// The `500` for `error` raised by the callback of `what`: the body has the
/// `message` (`str(error)`) and the `traceback` (the lines of
/// `traceback.format_exception`) unless tracebacks are off. The exception is
/// also logged on the `korv` logger.
fn failure(
    py: Python<'_>,
    what: &str,
    error: &Bound<'_, PyAny>,
    traceback: Option<&Bound<'_, PyAny>>,
    tracebacks: bool,
) -> Response {
    let described = describe(py, error, traceback);
    let (message, lines) = match described {
        Ok(described) => described,
        Err(err) => (
            format!("the callback raised an exception that cannot be shown: {err}"),
            Vec::new(),
        ),
    };
    log_failure(py, what, error, traceback);
    if tracebacks {
        Response::new(
            None,
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "message": message, "traceback": lines }),
        )
    } else {
        Response::error(
            None,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error",
        )
    }
}

/// `str(error)` and `traceback.format_exception(type(error), error, tb)`.
fn describe(
    py: Python<'_>,
    error: &Bound<'_, PyAny>,
    traceback: Option<&Bound<'_, PyAny>>,
) -> PyResult<(String, Vec<String>)> {
    let message = error.str()?.to_cow()?.into_owned();
    let traceback = match traceback {
        Some(traceback) => traceback.clone(),
        None => error.getattr(intern!(py, "__traceback__"))?,
    };
    let lines = py
        .import(intern!(py, "traceback"))?
        .call_method1(
            intern!(py, "format_exception"),
            (error.get_type(), error, traceback),
        )?
        .extract()?;
    Ok((message, lines))
}

fn log_failure(
    py: Python<'_>,
    what: &str,
    error: &Bound<'_, PyAny>,
    traceback: Option<&Bound<'_, PyAny>>,
) {
    let logged = (|| -> PyResult<()> {
        let traceback = match traceback {
            Some(traceback) => traceback.clone(),
            None => error.getattr(intern!(py, "__traceback__"))?,
        };
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", (error.get_type(), error, traceback))?;
        py.import(intern!(py, "logging"))?
            .call_method1(intern!(py, "getLogger"), ("korv",))?
            .call_method(
                intern!(py, "error"),
                ("callback for %s raised; answered 500", what),
                Some(&kwargs),
            )?;
        Ok(())
    })();
    if let Err(err) = logged {
        err.write_unraisable(py, None);
    }
}

/// Answers the request of an `async def` callback once its awaitable is
/// done. Each responder answers once; later calls do nothing.
#[pyclass(module = "korv._korv", name = "Responder", frozen)]
pub(crate) struct Responder {
    reply: Mutex<Option<Reply>>,
    what: String,
    tracebacks: bool,
}

impl Responder {
    fn reply(&self, response: Response) {
        let reply = self
            .reply
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(reply) = reply {
            let _ = reply.send(response);
        }
    }
}

#[pymethods]
impl Responder {
    /// Answers with the awaitable's result, `(code, body)`.
    fn send(&self, py: Python<'_>, result: &Bound<'_, PyAny>) {
        self.reply(answer(py, || self.what.clone(), result, self.tracebacks));
    }

    /// Answers `500` for the exception the awaitable raised; `traceback`
    /// replaces `error.__traceback__` (to leave the awaiting frame out).
    #[pyo3(signature = (error, traceback = None))]
    fn fail(&self, py: Python<'_>, error: &Bound<'_, PyAny>, traceback: Option<&Bound<'_, PyAny>>) {
        self.reply(failure(py, &self.what, error, traceback, self.tracebacks));
    }
}
