//! One multiplexed Korv stream: ids from a counter, a map of requests in
//! flight, one reader task and one writer task.
//!
//! A watch (`WATCH`, protocol 1.1) is in the map like a request, but with a
//! queue instead of a one-shot waiter: every frame with its id goes there,
//! and it leaves the map at its final frame (`more: false`, or an ordinary
//! response that refuses it).
//!
//! The stream speaks version 1's frames or korv 0.2.1's gzip members
//! ([`Wire`]). In korv 0.2.1's format each request is written by itself, in
//! one write (its server reads each SSH channel-data message as one whole
//! message); answers whose id matches no request in flight are ignored, and
//! a `500`'s traceback string is split into its lines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use korv_proto::{
    Frame, KorvCodec, LegacyCodec, LegacyFrame, Request, RequestId, Response, StatusCode,
};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder, FramedRead};

use crate::error::{CloseReason, Error};

/// Who waits for the frames of one id.
enum Waiter {
    /// A request: its one answer.
    Once(oneshot::Sender<Response>),
    /// A watch: every frame up to its final one.
    Watch(WatchQueue),
}

/// Events a [`Watch`](crate::Watch) holds that its application has not read
/// yet, at most (one more place is kept for its final frame). Beyond them
/// the client ends the watch as a server ends a watcher that does not read:
/// the events already queued are delivered, then the end (a 503), and
/// `UNWATCH` goes out.
pub const WATCH_QUEUE: usize = 4096;

/// A watch's queue of frames, and whether it overflowed.
struct WatchQueue {
    frames: mpsc::Sender<Response>,
    overflowed: Arc<AtomicBool>,
}

/// The receiving end of a watch's queue, for [`crate::Watch`].
pub(crate) struct WatchFrames {
    pub(crate) frames: mpsc::Receiver<Response>,
    /// Set when an event found the queue full: the watch's waiter is gone,
    /// and the queue ends after the events it holds.
    pub(crate) overflowed: Arc<AtomicBool>,
}

type Waiters = HashMap<u64, Waiter, std::hash::BuildHasherDefault<IdHasher>>;

/// Hashes the stream's request ids with one multiplication instead of
/// SipHash: a request looks its waiter up four times (registered, found,
/// removed, and again when its future is dropped). The ids are this side's
/// own counter, so there is no flooding to defend against; a server's
/// `request_id` is only ever looked up.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        // 2^64 / the golden ratio: the high bits, which the table also
        // uses, change with every bit of `n`.
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write(&mut self, bytes: &[u8]) {
        // `u64` keys hash through `write_u64`; anything else still hashes.
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }
}

/// Shared between callers and the reader task.
struct State {
    waiters: Mutex<Option<Waiters>>,
    /// Why the stream closed, once it has.
    closed: Mutex<Option<CloseReason>>,
}

impl State {
    fn close(&self, why: CloseReason) {
        if let Ok(mut closed) = self.closed.lock() {
            closed.get_or_insert(why);
        }
        // Dropping every sender fails every request in flight at once.
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.take();
        }
    }

    /// The error for a request that finds the stream closed. Without a
    /// recorded reason, the reader or writer task is gone without closing:
    /// its runtime shut down or it panicked.
    fn closed_error(&self) -> Error {
        let reason = self.closed.lock().ok().and_then(|c| c.clone());
        Error::Closed(reason.unwrap_or(CloseReason::Stopped))
    }
}

/// The format of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// Length-prefixed JSON frames: version 1.
    Version1,
    /// korv 0.2.1's gzip members, each request at most `max_message` bytes
    /// (the server's maximum packet size).
    Legacy {
        /// The largest request, in bytes, sent.
        max_message: usize,
    },
}

/// A multiplexed stream. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Mux {
    state: Arc<State>,
    next_id: Arc<AtomicU64>,
    writer: mpsc::UnboundedSender<BytesMut>,
    max_frame: usize,
    wire: Wire,
}

/// Removes a request from the map when its caller stops waiting (timeout or
/// cancellation), so a late answer is dropped.
struct Pending<'a> {
    state: &'a State,
    id: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.state.waiters.lock()
            && let Some(waiters) = waiters.as_mut()
        {
            waiters.remove(&self.id);
        }
    }
}

impl Mux {
    /// Starts the reader and writer tasks over `io`.
    pub(crate) fn start<IO>(io: IO, max_frame: usize, wire: Wire) -> Mux
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(io);
        let state = Arc::new(State {
            waiters: Mutex::new(Some(Waiters::default())),
            closed: Mutex::new(None),
        });
        let (to_writer, from_callers) = mpsc::unbounded_channel();
        let whole = matches!(wire, Wire::Legacy { .. });
        tokio::spawn(write_loop(writer, from_callers, Arc::clone(&state), whole));
        tokio::spawn(read_loop(reader, max_frame, wire, Arc::clone(&state)));
        Mux {
            state,
            // Never 0: korv 0.2.1 answers 0 to requests it cannot read.
            next_id: Arc::new(AtomicU64::new(1)),
            writer: to_writer,
            max_frame,
            wire,
        }
    }

    /// Whether the stream has closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.closed.lock().map_or(true, |c| c.is_some())
    }

    /// Sends `request` (its id is replaced) and waits for its answer.
    pub(crate) async fn call(
        &self,
        mut request: Request,
        timeout: Option<Duration>,
    ) -> Result<Response, Error> {
        let (tx, rx) = oneshot::channel();
        let (id, frame) = self.register(&mut request, Waiter::Once(tx))?;
        let _pending = Pending {
            state: &self.state,
            id,
        };
        if self.writer.send(frame).is_err() {
            return Err(self.state.closed_error());
        }
        let answer = async { rx.await.map_err(|_| self.state.closed_error()) };
        match timeout {
            Some(limit) => tokio::time::timeout(limit, answer)
                .await
                .map_err(|_| Error::Timeout(limit))?,
            None => answer.await,
        }
    }
}

impl Mux {
    /// Sends `request`, a `WATCH` (its id is replaced): the id, and the
    /// queue that receives every frame of the watch up to its final one.
    /// The queue's sender is dropped, without a final frame, when the
    /// stream closes.
    pub(crate) fn watch(&self, mut request: Request) -> Result<(u64, WatchFrames), Error> {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE + 1);
        let overflowed = Arc::new(AtomicBool::new(false));
        let queue = WatchQueue {
            frames: tx,
            overflowed: Arc::clone(&overflowed),
        };
        let (id, frame) = self.register(&mut request, Waiter::Watch(queue))?;
        if self.writer.send(frame).is_err() {
            self.forget(id);
            return Err(self.state.closed_error());
        }
        Ok((
            id,
            WatchFrames {
                frames: rx,
                overflowed,
            },
        ))
    }

    /// Sends `UNWATCH` for the watch `target` on `resource` without waiting:
    /// its answer, and the watch's frames from now on, are dropped unless
    /// `keep_frames` (the watch's queue then receives its final frame).
    pub(crate) fn unwatch(&self, target: u64, resource: &str, keep_frames: bool) {
        if !keep_frames {
            self.forget(target);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let encoded = Request::new(id, korv_proto::Verb::Unwatch, resource)
            .with_body(&serde_json::json!({ "request_id": target }))
            .map_err(Error::Body)
            .and_then(|request| self.encode(&request));
        match encoded {
            Ok(frame) => {
                let _ = self.writer.send(frame);
            }
            Err(err) => tracing::warn!(%err, "could not send UNWATCH"),
        }
    }

    /// One request, encoded in the stream's format.
    /// Gives `request` the next id, encodes it, and registers `waiter` for
    /// its answers: the id and the frame to send.
    fn register(&self, request: &mut Request, waiter: Waiter) -> Result<(u64, BytesMut), Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.id = id.into();
        let frame = self.encode(request)?;
        let mut waiters = self
            .state
            .waiters
            .lock()
            .map_err(|_| Error::Closed(CloseReason::Stopped))?;
        match waiters.as_mut() {
            Some(waiters) => waiters.insert(id, waiter),
            None => return Err(self.state.closed_error()),
        };
        Ok((id, frame))
    }

    fn encode(&self, request: &Request) -> Result<BytesMut, Error> {
        // Room for a small request: encoding then grows it in one step, not
        // in many, for most requests.
        let mut frame = BytesMut::with_capacity(256);
        match self.wire {
            Wire::Version1 => KorvCodec::builder()
                .max_frame(self.max_frame)
                .build()
                .encode(request, &mut frame),
            Wire::Legacy { max_message } => LegacyCodec::builder()
                .max_frame(self.max_frame)
                .max_message(max_message)
                .build()
                .encode(request, &mut frame),
        }
        .map_err(Error::Protocol)?;
        Ok(frame)
    }

    /// The error for a watch that finds the stream closed.
    pub(crate) fn closed_error(&self) -> Error {
        self.state.closed_error()
    }

    /// Stops delivering frames of `id`.
    fn forget(&self, id: u64) {
        if let Ok(mut waiters) = self.state.waiters.lock()
            && let Some(waiters) = waiters.as_mut()
        {
            waiters.remove(&id);
        }
    }
}

/// Writes requests as they come, whatever is queued in one write; with
/// `whole`, each request in a write of its own.
async fn write_loop<W: AsyncWrite>(
    writer: W,
    mut queue: mpsc::UnboundedReceiver<BytesMut>,
    state: Arc<State>,
    whole: bool,
) {
    tokio::pin!(writer);
    while let Some(mut batch) = queue.recv().await {
        if !whole {
            while let Ok(more) = queue.try_recv() {
                batch.unsplit(more);
            }
        }
        let written = async {
            writer.write_all(&batch).await?;
            writer.flush().await
        };
        if let Err(err) = written.await {
            state.close(CloseReason::Write(Arc::new(err)));
            return;
        }
    }
    let _ = writer.shutdown().await;
}

async fn read_loop<R: AsyncRead>(reader: R, max_frame: usize, wire: Wire, state: Arc<State>) {
    let why = match wire {
        Wire::Version1 => read_frames(reader, max_frame, &state).await,
        Wire::Legacy { .. } => read_members(reader, max_frame, &state).await,
    };
    state.close(why);
}

/// Hands `response` to the caller waiting for `id`, if one is: a request's
/// caller, or a watch's queue (which keeps its place until the final frame).
fn deliver(state: &State, id: u64, response: Response) -> bool {
    let Ok(mut waiters) = state.waiters.lock() else {
        return false;
    };
    let Some(waiters) = waiters.as_mut() else {
        return false;
    };
    match waiters.get(&id) {
        None => false,
        Some(Waiter::Watch(queue)) => {
            let last = response.is_final();
            // The last place is the final frame's: an event that would take
            // it finds the queue full.
            if !last && queue.frames.capacity() <= 1 {
                queue.overflowed.store(true, Ordering::Release);
                waiters.remove(&id);
                return false;
            }
            let sent = queue.frames.try_send(response).is_ok();
            if last || !sent {
                waiters.remove(&id);
            }
            sent
        }
        Some(Waiter::Once(_)) => match waiters.remove(&id) {
            Some(Waiter::Once(waiter)) => waiter.send(response).is_ok(),
            _ => false,
        },
    }
}

/// Reads version 1's frames until the stream ends; returns why it did.
async fn read_frames<R: AsyncRead>(reader: R, max_frame: usize, state: &State) -> CloseReason {
    let codec = KorvCodec::builder().max_frame(max_frame).build();
    let frames = FramedRead::new(reader, codec);
    tokio::pin!(frames);
    loop {
        match frames.next().await {
            None => break CloseReason::ServerClosed,
            Some(Err(err)) => break CloseReason::Read(Arc::new(err)),
            Some(Ok(Frame::Payload(payload))) => {
                let response = match Response::from_payload(&payload) {
                    Ok(response) => response,
                    Err(err) => {
                        tracing::warn!(%err, "dropping a malformed response");
                        continue;
                    }
                };
                let Some(id) = response.request_id.as_ref().and_then(|id| id.as_u64()) else {
                    tracing::warn!(code = response.code.as_u16(), message = ?response.message(), "response without a request id");
                    continue;
                };
                deliver(state, id, response);
            }
            Some(Ok(Frame::Oversized { len })) => {
                break CloseReason::FrameTooLarge {
                    len,
                    max: max_frame,
                };
            }
            Some(Ok(Frame::Empty)) => break CloseReason::EmptyFrame,
        }
    }
}

/// Reads korv 0.2.1's gzip members until the stream ends; returns why it did.
async fn read_members<R: AsyncRead>(reader: R, max_frame: usize, state: &State) -> CloseReason {
    let codec = LegacyCodec::builder().max_frame(max_frame).build();
    let members = FramedRead::new(reader, codec);
    tokio::pin!(members);
    loop {
        match members.next().await {
            None => break CloseReason::ServerClosed,
            Some(Err(err)) => break CloseReason::Read(Arc::new(err)),
            Some(Ok(LegacyFrame::Payload(content))) => {
                let delivered = legacy_answer(&content)
                    .is_some_and(|(id, response)| deliver(state, id, response));
                if !delivered {
                    tracing::debug!("ignoring an answer that matches no request in flight");
                }
            }
            Some(Ok(LegacyFrame::Oversized { max_frame })) => {
                break CloseReason::MemberTooLarge { max: max_frame };
            }
            Some(Ok(LegacyFrame::Corrupt { reason })) => break CloseReason::CorruptMember(reason),
        }
    }
}

/// A korv 0.2.1 answer, `{"id": <clock>, "request_id", "code", "body"}`, as
/// the id of the request it answers and a [`Response`]; `None` when its
/// `request_id` cannot be one of ours (korv 0.2.1 answers 0 to what it
/// cannot read) or it is not an answer at all.
fn legacy_answer(content: &[u8]) -> Option<(u64, Response)> {
    let Value::Object(mut answer) = serde_json::from_slice(content).ok()? else {
        return None;
    };
    let id = answer.get("request_id")?.as_u64().filter(|&id| id != 0)?;
    let code = answer
        .get("code")?
        .as_u64()
        .and_then(|code| u16::try_from(code).ok())
        .and_then(StatusCode::from_u16)?;
    let mut body = answer.remove("body").unwrap_or(Value::Null);
    // A 500's traceback is one string in this format, an array of lines in
    // version 1's.
    if code == StatusCode::INTERNAL_SERVER_ERROR
        && let Some(traceback) = body.get_mut("traceback")
        && let Some(text) = traceback.as_str()
    {
        let lines = text.trim_end_matches('\n').split('\n').map(Value::from);
        *traceback = Value::Array(lines.collect());
    }
    let mut response = Response::new(RequestId::from(id), code, body);
    if let Some(Value::Object(headers)) = answer.remove("headers") {
        for (name, value) in headers {
            if let Value::String(value) = value {
                response.headers.insert(name, value);
            }
        }
    }
    Some((id, response))
}
