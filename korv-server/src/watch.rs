//! Watches (protocol version 1.1): one `WATCH` request answered by a stream
//! of frames, until the handler, the client or the server ends it.
//!
//! A watch handler is a plain async function, like a [`Handler`](crate::Handler),
//! that returns the events to send as a [`Stream`] of JSON values (anything
//! [`IntoEvents`]); it may refuse the watch instead with an error, answered
//! as an ordinary response. The framework owns everything else:
//!
//! - frame 0 (`seq` 0, code 200, body null, `more: true`) confirms the
//!   watch once the handler has returned its stream, so every event the
//!   stream yields after it reaches the client;
//! - each event is one frame (`seq` 1, 2, … without gap, `more: true`);
//! - exactly one final frame (`more: false`) says why the watch ended: 200
//!   when the stream ends, 410 when the client cancels it (`UNWATCH` or its
//!   EOF), 503 on shutdown or when the client does not read fast enough;
//! - each watch has its own bounded queue of frames not yet written: when
//!   it is full, the watch ends with 503 after the events already queued,
//!   and nothing else waits: not the stream's other watches or requests, and
//!   not the stream of events, which is read as fast as it yields;
//! - the handler's stream is dropped as soon as the watch ends.
//!
//! ```
//! use futures_util::stream::{self, Stream};
//! use korv_server::routing::get;
//! use korv_server::{Error, KorvServer, Request};
//! use serde_json::{Value, json};
//!
//! async fn status(req: Request) -> Value {
//!     json!({"job": req.param("id"), "done": 40})
//! }
//!
//! async fn progress(req: Request) -> Result<impl Stream<Item = Value>, Error> {
//!     let job = req.param("id").unwrap_or_default().to_owned();
//!     if job == "0" {
//!         return Err(Error::new(404, "no such job"));
//!     }
//!     Ok(stream::iter((41..=100).map(move |done| json!({"job": job, "done": done}))))
//! }
//!
//! let server = KorvServer::new().route("/jobs/{id}/progress", get(status).watch(progress));
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Stream, StreamExt};
use korv_proto::{KorvCodec, RequestId, Response, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::codec::Encoder;
use tracing::Instrument;

use crate::handler::BoxFuture;
use crate::panic::CatchPanic;
use crate::request::Request;
use crate::response::{TRACEBACKS, error_response, internal_error};

/// The events of one watch: a boxed stream of JSON values. Any
/// `Stream<Item = Value>` converts into it ([`Events::new`]).
pub struct Events(Pin<Box<dyn Stream<Item = Value> + Send + 'static>>);

impl Events {
    /// The events `stream` yields, in order; the watch ends (200) when it ends.
    pub fn new(stream: impl Stream<Item = Value> + Send + 'static) -> Self {
        Events(Box::pin(stream))
    }
}

impl Stream for Events {
    type Item = Value;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Value>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

/// What a watch handler may return: its events, or the response that
/// refuses the watch.
///
/// - [`Events`], or any `Result<St, E>` whose `St` is a
///   `Stream<Item = Value>` and whose `E` converts into `anyhow::Error`. An
///   error refuses the watch with one ordinary response, as an error of a
///   request handler would: an [`Error`](crate::Error) with its own code, a
///   [`BodyError`](crate::BodyError) with `400`, anything else `500`.
pub trait IntoEvents {
    /// The events, or the response that refuses the watch.
    fn into_events(self) -> Result<Events, Response>;
}

impl IntoEvents for Events {
    fn into_events(self) -> Result<Events, Response> {
        Ok(self)
    }
}

impl<St, E> IntoEvents for Result<St, E>
where
    St: Stream<Item = Value> + Send + 'static,
    E: Into<anyhow::Error>,
{
    fn into_events(self) -> Result<Events, Response> {
        match self {
            Ok(stream) => Ok(Events::new(stream)),
            Err(err) => Err(error_response(err.into())),
        }
    }
}

/// A watch handler: a plain async function taking a [`Request`], or a
/// [`Request`] and the server's state `S`, and returning anything
/// [`IntoEvents`]. Registered with
/// [`MethodRouter::watch`](crate::routing::MethodRouter::watch).
///
/// The type parameter `T` only tells the two shapes apart.
pub trait WatchHandler<T, S>: Clone + Send + Sync + Sized + 'static {
    /// Runs the handler up to the point where it has its events.
    fn call(&self, request: Request, state: S) -> BoxFuture<Result<Events, Response>>;
}

impl<F, Fut, R, S> WatchHandler<(Request,), S> for F
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoEvents,
{
    fn call(&self, request: Request, _state: S) -> BoxFuture<Result<Events, Response>> {
        let future = self(request);
        Box::pin(async move { future.await.into_events() })
    }
}

impl<F, Fut, R, S> WatchHandler<(Request, S), S> for F
where
    F: Fn(Request, S) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoEvents,
{
    fn call(&self, request: Request, state: S) -> BoxFuture<Result<Events, Response>> {
        let future = self(request, state);
        Box::pin(async move { future.await.into_events() })
    }
}

/// A type-erased watch handler.
pub(crate) type BoxedWatchHandler<S> =
    Arc<dyn Fn(Request, S) -> BoxFuture<Result<Events, Response>> + Send + Sync>;

/// Erases a watch handler's type.
pub(crate) fn boxed_watch<T, S, H: WatchHandler<T, S>>(handler: H) -> BoxedWatchHandler<S> {
    Arc::new(move |request, state| handler.call(request, state))
}

/// Bytes of frames one watch may have waiting to be written, beyond the
/// first frame (which always fits, however large).
pub(crate) const WATCH_QUEUE_BYTES: usize = 1024 * 1024;

/// Why the framework ends a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// `UNWATCH`, or the client's EOF: 410.
    Cancelled,
    /// The server shuts down: 503.
    ShuttingDown,
}

impl Ending {
    fn response(self, id: RequestId) -> Response {
        match self {
            Ending::Cancelled => Response::error(id, StatusCode::GONE, "cancelled by the client"),
            Ending::ShuttingDown => Response::error(
                id,
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ),
        }
    }
}

/// The frames of one watch handed to the stream's writer and not yet
/// written: the watch's bounded queue.
#[derive(Debug, Default)]
pub(crate) struct WatchQueue {
    frames: AtomicUsize,
    bytes: AtomicUsize,
}

impl WatchQueue {
    /// Called by the writer once `frames` frames of `bytes` bytes are written.
    pub(crate) fn written(&self, frames: usize, bytes: usize) {
        self.frames.fetch_sub(frames, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Takes room for `frames` frames of `bytes` bytes; `false` when the
    /// queue has not that much room left.
    fn reserve(&self, frames: usize, bytes: usize, max_frames: usize) -> bool {
        let queued = self.frames.load(Ordering::Acquire);
        let queued_bytes = self.bytes.load(Ordering::Acquire);
        let fits = queued + frames <= max_frames
            && (queued_bytes == 0 || queued_bytes + bytes <= WATCH_QUEUE_BYTES);
        if fits {
            self.frames.fetch_add(frames, Ordering::AcqRel);
            self.bytes.fetch_add(bytes, Ordering::AcqRel);
        }
        fits
    }
}

/// Encoded frames of one watch, for the stream's writer, and the queue to
/// release once they are written.
pub(crate) struct WatchFrames {
    /// One or more encoded frames, in order.
    pub(crate) bytes: BytesMut,
    /// How many frames `bytes` holds.
    pub(crate) frames: usize,
    /// The watch's queue, released by the writer.
    pub(crate) queue: Arc<WatchQueue>,
}

/// Where a watch's frames go: the stream's writer, in order with the
/// stream's other answers.
pub(crate) trait Outlet: Send + Sync + 'static {
    /// Hands frames to the writer; `false` when the writer has stopped.
    fn send(&self, frames: WatchFrames) -> bool;
}

/// A watch ready to start: its id, the handler's future that yields the
/// events, and what the stream's loop knows of it.
pub(crate) struct WatchStart {
    pub(crate) id: RequestId,
    pub(crate) setup: BoxFuture<Result<Events, Response>>,
}

/// How a watch ended, for the stream's loop (metrics and logs).
pub(crate) struct Ended {
    pub(crate) id: RequestId,
    /// The code of the final frame; `None` when the stream went away first.
    pub(crate) code: Option<StatusCode>,
}

/// The watches of one stream: those active (cancellable by id), and every
/// watch task until its final frame is handed to the writer.
pub(crate) struct Watches {
    /// Active watches by id: the sender that ends each one.
    active: HashMap<RequestId, oneshot::Sender<Ending>>,
    /// Watches to end once the answers before them are handed to the writer
    /// (an `UNWATCH`'s `200` goes before the watch's final frame).
    to_end: Vec<(oneshot::Sender<Ending>, Ending)>,
    running: FuturesUnordered<BoxFuture<Ended>>,
    max_watches: usize,
    max_queue: usize,
    max_frame: usize,
    tracebacks: bool,
}

impl Watches {
    /// No watches yet; at most `max_watches` at once, each with a queue of
    /// `max_queue` frames.
    pub(crate) fn new(
        max_watches: usize,
        max_queue: usize,
        max_frame: usize,
        tracebacks: bool,
    ) -> Self {
        Watches {
            active: HashMap::new(),
            to_end: Vec::new(),
            running: FuturesUnordered::new(),
            max_watches,
            max_queue: max_queue.max(1),
            max_frame,
            tracebacks,
        }
    }

    /// Whether no watch task is running (every final frame is handed over).
    pub(crate) fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Checks that a `WATCH` with `id` may start: the `429` above the
    /// limit, or a `400` for an id already watching on this stream.
    pub(crate) fn admit(&self, id: &RequestId) -> Result<(), Response> {
        if self.active.contains_key(id) {
            return Err(Response::error(
                id.clone(),
                StatusCode::BAD_REQUEST,
                format!("a watch with id {id} is already active on this stream"),
            ));
        }
        if self.active.len() >= self.max_watches {
            return Err(Response::error(
                id.clone(),
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this stream already has {} watches, its limit",
                    self.max_watches
                ),
            ));
        }
        Ok(())
    }

    /// Starts a watch (admitted first) on its own task.
    pub(crate) fn start(&mut self, start: WatchStart, outlet: Arc<dyn Outlet>) {
        let (end_tx, end_rx) = oneshot::channel();
        self.active.insert(start.id.clone(), end_tx);
        let run = Run {
            id: start.id.clone(),
            outlet,
            queue: Arc::new(WatchQueue::default()),
            codec: KorvCodec::builder().max_frame(self.max_frame).build(),
            seq: 0,
            max_queue: self.max_queue,
        };
        let id = start.id;
        let task = tokio::spawn(
            TRACEBACKS
                .scope(self.tracebacks, run.run(start.setup, end_rx))
                .in_current_span(),
        );
        self.running.push(Box::pin(async move {
            match task.await {
                Ok(code) => Ended { id, code },
                Err(_) => Ended { id, code: None },
            }
        }));
    }

    /// Ends the active watch `id` at the client's request: `false` when no
    /// watch of that id is active. Its final frame (410) follows whatever
    /// is handed to the writer before [`Watches::end_pending`].
    pub(crate) fn cancel(&mut self, id: &RequestId) -> bool {
        match self.active.remove(id) {
            Some(end) => {
                self.to_end.push((end, Ending::Cancelled));
                true
            }
            None => false,
        }
    }

    /// Ends every active watch, after what is already handed to the writer.
    pub(crate) fn end_all(&mut self, ending: Ending) {
        self.to_end
            .extend(self.active.drain().map(|(_, end)| (end, ending)));
    }

    /// Ends the watches cancelled since the last call: to be called once
    /// the answers before their cancellation are handed to the writer.
    pub(crate) fn end_pending(&mut self) {
        for (end, ending) in self.to_end.drain(..) {
            let _ = end.send(ending);
        }
    }

    /// The next watch whose task has ended (its final frame handed over).
    /// Pending while none has, or none runs.
    pub(crate) async fn next_ended(&mut self) -> Ended {
        loop {
            match self.running.next().await {
                Some(ended) => {
                    // A watch that ended by itself is no longer active.
                    self.active.remove(&ended.id);
                    return ended;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// Events taken from the handler's stream in one go, at most.
const GATHER_EVENTS: usize = 64;

/// One watch's task.
struct Run {
    id: RequestId,
    outlet: Arc<dyn Outlet>,
    queue: Arc<WatchQueue>,
    codec: KorvCodec,
    /// The `seq` of the next frame.
    seq: u64,
    max_queue: usize,
}

impl Run {
    /// Runs the watch to its final frame; returns the final frame's code,
    /// or `None` when the stream went away first.
    async fn run(
        mut self,
        setup: BoxFuture<Result<Events, Response>>,
        mut end: oneshot::Receiver<Ending>,
    ) -> Option<StatusCode> {
        let setup = CatchPanic::new(setup);
        let events = tokio::select! {
            biased;
            ending = &mut end => {
                // Ended before the handler had its events: the final frame
                // is the only one.
                let last = ending.ok()?.response(self.id.clone());
                return self.finish(last);
            }
            outcome = setup => match outcome {
                Ok(Ok(events)) => events,
                Ok(Err(mut refusal)) => {
                    // A refused watch is one ordinary response.
                    refusal.request_id = Some(self.id.clone());
                    refusal.seq = None;
                    refusal.more = None;
                    let code = refusal.code;
                    self.send_now(&refusal)?;
                    return Some(code);
                }
                Err(panic) => {
                    tracing::error!(message = %panic.message, location = %panic.location, "watch handler panicked");
                    let mut response = internal_error(
                        format!("handler panicked: {}", panic.message),
                        vec![format!("panic: {}", panic.message), format!("at {}", panic.location)],
                    );
                    response.request_id = Some(self.id.clone());
                    let code = response.code;
                    self.send_now(&response)?;
                    return Some(code);
                }
            },
        };
        // The confirmation: room in an empty queue is certain.
        self.push(vec![Value::Null])?;
        let mut events = events;
        let mut batch: Vec<Value> = Vec::with_capacity(GATHER_EVENTS);
        loop {
            let next = tokio::select! {
                biased;
                ending = &mut end => {
                    let last = ending.ok()?.response(self.id.clone());
                    return self.finish(last);
                }
                next = CatchPanic::new(events.next()) => next,
            };
            let mut done = None;
            match next {
                Ok(Some(event)) => batch.push(event),
                Ok(None) => {
                    done = Some(Response::new(self.id.clone(), StatusCode::OK, Value::Null))
                }
                Err(panic) => done = Some(self.panicked(panic)),
            }
            // Whatever else is ready now leaves with it.
            while done.is_none() && batch.len() < GATHER_EVENTS {
                match CatchPanic::new(events.next()).now_or_never() {
                    None => break,
                    Some(Ok(Some(event))) => batch.push(event),
                    Some(Ok(None)) => {
                        done = Some(Response::new(self.id.clone(), StatusCode::OK, Value::Null));
                    }
                    Some(Err(panic)) => done = Some(self.panicked(panic)),
                }
            }
            if !batch.is_empty() {
                match self.push(std::mem::take(&mut batch)) {
                    Some(true) => {}
                    Some(false) => {
                        drop(events);
                        tracing::info!(id = %self.id, "ending a watch whose client does not read fast enough");
                        let last = Response::error(
                            self.id.clone(),
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the client did not read the watch's events fast enough",
                        );
                        return self.finish(last);
                    }
                    None => return None,
                }
            }
            if let Some(last) = done {
                drop(events);
                return self.finish(last);
            }
        }
    }

    fn panicked(&self, panic: crate::panic::Panic) -> Response {
        tracing::error!(message = %panic.message, location = %panic.location, "watch stream panicked");
        let mut response = internal_error(
            format!("the watch's events panicked: {}", panic.message),
            vec![
                format!("panic: {}", panic.message),
                format!("at {}", panic.location),
            ],
        );
        response.request_id = Some(self.id.clone());
        response
    }

    /// Queues one frame (code 200, `more: true`) per body if the watch's
    /// queue has room for them all: `Some(true)` when queued, `Some(false)`
    /// when full (nothing queued), `None` when the writer has stopped.
    fn push(&mut self, bodies: Vec<Value>) -> Option<bool> {
        let mut bytes = BytesMut::new();
        let mut seq = self.seq;
        let frames = bodies.len();
        for body in bodies {
            let frame = Response::new(self.id.clone(), StatusCode::OK, body).in_watch(seq, true);
            self.encode(&frame, &mut bytes);
            seq += 1;
        }
        if !self.queue.reserve(frames, bytes.len(), self.max_queue) {
            return Some(false);
        }
        self.seq = seq;
        let sent = self.outlet.send(WatchFrames {
            bytes,
            frames,
            queue: Arc::clone(&self.queue),
        });
        sent.then_some(true)
    }

    /// Sends the final frame, whatever the queue holds: it is the one frame
    /// a watch always gets.
    fn finish(mut self, last: Response) -> Option<StatusCode> {
        let code = last.code;
        let last = last.in_watch(self.seq, false);
        self.send_now(&last)?;
        Some(code)
    }

    /// Sends one frame past the queue's bound.
    fn send_now(&mut self, response: &Response) -> Option<()> {
        let mut bytes = BytesMut::new();
        self.encode(response, &mut bytes);
        self.queue.frames.fetch_add(1, Ordering::AcqRel);
        self.queue.bytes.fetch_add(bytes.len(), Ordering::AcqRel);
        self.outlet
            .send(WatchFrames {
                bytes,
                frames: 1,
                queue: Arc::clone(&self.queue),
            })
            .then_some(())
    }

    fn encode(&mut self, response: &Response, out: &mut BytesMut) {
        if let Err(err) = self.codec.encode(response, out) {
            tracing::error!(%err, "could not encode a watch's frame");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_refuses_frames_beyond_its_bound_until_they_are_written() {
        let queue = WatchQueue::default();
        assert!(queue.reserve(3, 30, 4));
        assert!(!queue.reserve(2, 20, 4), "5 frames exceed 4");
        assert!(queue.reserve(1, 10, 4));
        queue.written(2, 20);
        assert!(queue.reserve(2, 20, 4));
    }

    #[test]
    fn a_queue_takes_one_frame_of_any_size_but_bounds_bytes_after_it() {
        let queue = WatchQueue::default();
        assert!(queue.reserve(1, 3 * WATCH_QUEUE_BYTES, 100));
        assert!(!queue.reserve(1, 1, 100));
        queue.written(1, 3 * WATCH_QUEUE_BYTES);
        assert!(queue.reserve(1, WATCH_QUEUE_BYTES, 100));
        assert!(!queue.reserve(1, 1, 100));
    }
}
