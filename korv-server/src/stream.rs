//! The per-stream loop: read frames, run handlers concurrently, write answers.
//!
//! One loop serves every transport: it reads any `AsyncRead` and writes
//! through an [`Outbound`]. Byte streams (stdin/stdout, in-memory pipes in
//! tests) go through [`run_stream`], which splits them; an SSH channel is
//! read from what russh hands the connection's handler and written straight
//! into russh's session, one channel-data message per batch of answers.
//! While an SSH stream is idle, the connection answers the requests that
//! finish at once itself, with [`answer_at_once`] (see the `inline` module),
//! and hands this loop the handlers it started that have to wait.
//!
//! - Every frame gets exactly one response: malformed ones at once (400, 413),
//!   unroutable ones at once (404, 405), the rest from their handler task.
//! - Up to `max_in_flight_per_stream` handlers run at once; beyond it the loop
//!   stops reading, which pushes back on the client through SSH flow control.
//! - Answers waiting to be written are bounded (8 maximum frames): a client
//!   that keeps sending without reading its answers has its stream closed.
//! - Responses that are ready together are written together, with one flush;
//!   so are the answers of handler tasks that finish together (the stream
//!   lets the ready tasks run once before it hands a batch over).
//! - At the client's EOF the loop finishes what is in flight, writes it, then
//!   shuts its writing side down (EOF).
//! - On shutdown it answers new requests `503`, gives in-flight ones the grace
//!   period, answers the rest `503`, then closes once nothing has arrived for
//!   [`SHUTDOWN_LINGER`]: requests already on their way when shutdown began
//!   get a `503`, not a closed stream.
//!
//! Watches (`WATCH`, protocol 1.1) run beside the requests, each on its own
//! task (see the `watch` module): their frames join the writer's queue in
//! order with the answers, an `UNWATCH`'s `200` before the watch's final
//! frame. At the client's EOF every watch ends (410) before the stream
//! closes; on shutdown every watch ends (503).
//!
//! A stream speaks one [`Format`], chosen before it starts: version 1's
//! frames, or korv 0.2.1's gzip members. The format is the codec's choice
//! alone; validation, routing, handlers, limits and shutdown are the same.
//! In korv 0.2.1's format every answer is written by itself, in one write
//! (its reader takes each SSH channel-data message as one whole message),
//! and a member too large or corrupt ends the stream after its answer, as
//! nothing says where the next member starts.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::task::AtomicWaker;
use futures_util::{FutureExt, StreamExt};
use korv_proto::{
    Frame, KorvCodec, LegacyCodec, LegacyFrame, ProtoError, Request as WireRequest, RequestId,
    Response, StatusCode,
};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

use crate::authorize;
use crate::handler::BoxedHandler;
use crate::inline::{Adopted, Gate, Later};
use crate::metrics::Metrics;
use crate::panic::CatchPanic;
use crate::request::{ClientInfo, Params, Request};
use crate::response::{TRACEBACKS, internal_error};
use crate::router::Routed;
use crate::state::Shared;
use crate::watch::{Ending, Outlet, WatchFrames, WatchQueue, WatchStart, Watches};

/// On shutdown, how long a stream with nothing in flight waits for more
/// requests (answered `503`) before it closes; never past the grace period.
pub(crate) const SHUTDOWN_LINGER: std::time::Duration = std::time::Duration::from_millis(200);

/// Bytes read from the transport at a time, at least.
const READ_CAPACITY: usize = 64 * 1024;

/// The wire format of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Length-prefixed JSON frames: version 1.
    Version1,
    /// korv 0.2.1's gzip members. Each answer is one write of at most
    /// `max_message` bytes (the client's maximum packet size).
    Legacy {
        /// The largest answer, in bytes, encoded.
        max_message: usize,
    },
}

/// Where a stream's answers go: one write per batch of answers (per answer
/// in korv 0.2.1's format), then the end of the stream.
pub(crate) trait Outbound: Send {
    /// Writes `bytes` whole, in order after everything written before.
    fn write(&mut self, bytes: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Pushes what was written towards the client.
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Ends the stream's writing side (EOF), after everything written.
    fn finish(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Tells the transport the stream is in use though it has nothing to
    /// write (a watch waiting for events), so that an idle timeout below it
    /// does not close it. Nothing reaches the client.
    fn keep_alive(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// The writing half of a byte stream as an [`Outbound`].
pub(crate) struct IoOutbound<W>(pub(crate) W);

impl<W: AsyncWrite + Send + Unpin> Outbound for IoOutbound<W> {
    async fn write(&mut self, bytes: Bytes) -> io::Result<()> {
        self.0.write_all(&bytes).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.0.flush().await
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}

/// Serves one stream over a byte stream until the client's EOF (or
/// shutdown), then closes it.
pub(crate) async fn run_stream<S, IO>(
    shared: Arc<Shared<S>>,
    io: IO,
    client: Arc<ClientInfo>,
    shutdown: CancellationToken,
    format: Format,
) -> io::Result<()>
where
    S: Clone + Send + Sync + 'static,
    IO: AsyncRead + AsyncWrite + Send,
{
    let (reader, writer) = tokio::io::split(io);
    serve(
        shared,
        reader,
        IoOutbound(writer),
        client,
        shutdown,
        format,
        None,
    )
    .await
}

/// Serves one stream, read from `reader` and answered through `outbound`,
/// until the client's EOF (or shutdown), then closes it. With `adopted`,
/// the connection answers what it can itself while the stream is idle
/// (see the `inline` module), and hands it the handlers it started.
pub(crate) async fn serve<S, R, O>(
    shared: Arc<Shared<S>>,
    reader: R,
    outbound: O,
    client: Arc<ClientInfo>,
    shutdown: CancellationToken,
    format: Format,
    adopted: Option<Adopted>,
) -> io::Result<()>
where
    S: Clone + Send + Sync + 'static,
    R: AsyncRead + Send,
    O: Outbound,
{
    let _open = shared.metrics.as_ref().map(|m| m.stream_opened());
    // Writing runs beside reading, never in its way: over SSH a stream that
    // stops reading while a write waits can stall the whole connection
    // (russh delivers channel data through a bounded queue).
    let (to_writer, from_reader) = tokio::sync::mpsc::unbounded_channel::<Batch>();
    let unwritten = AtomicUsize::new(0);
    // The first error ends both: a reader that gives up on a client that
    // does not read must not leave the writer blocked on that client.
    let whole = matches!(format, Format::Legacy { .. });
    let reading = std::pin::pin!(read_loop(
        &shared, reader, &client, &shutdown, to_writer, &unwritten, format, adopted,
    ));
    let writing = std::pin::pin!(write_loop(outbound, from_reader, &unwritten, whole));
    try_join_in_place(reading, writing).await
}

/// Runs `first` and `second` on the calling task until both are done or
/// either fails, as `tokio::try_join!` does, but a wake-up that one of them
/// gives the other while the task is being polled (the reader handing a
/// batch of answers to the writer, once per batch) polls them again right
/// here instead of waking the task.
///
/// Tokio takes a task woken during its own poll for one that yields: it
/// goes to the back of the run queue and another worker thread is woken to
/// take it. With one request in flight that moved every answer to another
/// thread: a futex wake-up and a context switch per request, and the
/// session's next read back on the first thread.
///
/// The two are pinned by the caller: taken by value, they would be stored
/// twice in the caller's future (as arguments, then pinned), and a stream's
/// reader is large enough for that to show in the memory of every idle
/// connection.
fn try_join_in_place<A, B>(
    mut first: Pin<&mut A>,
    mut second: Pin<&mut B>,
) -> impl Future<Output = io::Result<()>>
where
    A: Future<Output = io::Result<()>>,
    B: Future<Output = io::Result<()>>,
{
    let (mut first_done, mut second_done) = (false, false);
    let wakes = Arc::new(InPlace::default());
    let waker = std::task::Waker::from(Arc::clone(&wakes));
    std::future::poll_fn(move |cx| {
        wakes.task.register(cx.waker());
        let mut inner = std::task::Context::from_waker(&waker);
        for _ in 0..IN_PLACE_ROUNDS {
            wakes.state.store(POLLING, Ordering::Release);
            for (future, done) in [
                (
                    first.as_mut() as Pin<&mut dyn Future<Output = io::Result<()>>>,
                    &mut first_done,
                ),
                (second.as_mut(), &mut second_done),
            ] {
                if *done {
                    continue;
                }
                match future.poll(&mut inner) {
                    Poll::Ready(Ok(())) => *done = true,
                    Poll::Ready(Err(err)) => {
                        wakes.state.store(IDLE, Ordering::Release);
                        return Poll::Ready(Err(err));
                    }
                    Poll::Pending => {}
                }
            }
            if first_done && second_done {
                wakes.state.store(IDLE, Ordering::Release);
                return Poll::Ready(Ok(()));
            }
            // Woken meanwhile (by either, or from elsewhere): poll again.
            if wakes
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
        // Still woken after every round (tokio's cooperative budget is spent,
        // say): let the scheduler run others first.
        wakes.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    })
}

/// Rounds of polling before [`try_join_in_place`] yields to the scheduler.
const IN_PLACE_ROUNDS: usize = 4;
/// [`InPlace`]'s states: not being polled; being polled; being polled and
/// woken meanwhile.
const IDLE: u8 = 0;
const POLLING: u8 = 1;
const NOTIFIED: u8 = 2;

/// The waker [`try_join_in_place`] gives the futures it polls: during its
/// poll a wake-up only asks for another round; otherwise it wakes the task.
#[derive(Default)]
struct InPlace {
    state: AtomicU8,
    task: AtomicWaker,
}

impl std::task::Wake for InPlace {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, NOTIFIED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(NOTIFIED) => {}
            Err(_) => self.task.wake(),
        }
    }
}

/// Encoded answers handed to the writer, and their size.
struct Batch {
    parts: Vec<BytesMut>,
    /// The bytes of `parts` that count against the stream's bound of
    /// unwritten answers (a watch's frames have their own bound).
    bytes: usize,
    /// The watch queues to release once `parts` are written: frames and
    /// bytes of each.
    watches: Vec<(Arc<WatchQueue>, usize, usize)>,
}

/// Watches hand their frames straight to the writer.
struct WriterOutlet(tokio::sync::mpsc::UnboundedSender<Batch>);

impl Outlet for WriterOutlet {
    fn send(&self, frames: WatchFrames) -> bool {
        let bytes = frames.bytes.len();
        let batch = Batch {
            parts: vec![frames.bytes],
            bytes: 0,
            watches: vec![(frames.queue, frames.frames, bytes)],
        };
        self.0.send(batch).is_ok()
    }
}

/// Releases what the writer has written of the watches' queues.
fn release(watches: Vec<(Arc<WatchQueue>, usize, usize)>) {
    for (queue, frames, bytes) in watches {
        queue.written(frames, bytes);
    }
}

/// Answers at least this large are written as they are; smaller ones are
/// gathered, so that many small answers leave in one SSH packet.
const GATHER_BELOW: usize = 16 * 1024;
/// Bytes of answers a stream may have waiting to be written, in units of
/// the maximum frame. Reading stops at `max_in_flight_per_stream` running
/// handlers, but not for unwritten answers: over russh a stream that stops
/// reading can block the connection's session, and with it the writes that
/// would let it read again. A client that keeps sending without reading
/// its answers has its stream closed at this bound instead.
const MAX_UNWRITTEN_FRAMES: usize = 8;

/// Writes encoded responses as they come, coalescing whatever is queued into
/// one write and one flush; at the end, finishes the writing side (EOF).
/// With `whole`, each part (one answer) is a write of its own instead.
async fn write_loop<O: Outbound>(
    mut outbound: O,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Batch>,
    unwritten: &AtomicUsize,
    whole: bool,
) -> io::Result<()> {
    let mut gathered = BytesMut::new();
    while let Some(mut batch) = queue.recv().await {
        while let Ok(more) = queue.try_recv() {
            batch.parts.extend(more.parts);
            batch.bytes += more.bytes;
            batch.watches.extend(more.watches);
        }
        // Only the keep-alive of watches sends a batch with nothing in it.
        if batch.parts.is_empty() {
            outbound.keep_alive().await?;
            continue;
        }
        if whole {
            for part in batch.parts {
                outbound.write(part.freeze()).await?;
            }
            outbound.flush().await?;
            unwritten.fetch_sub(batch.bytes, Ordering::AcqRel);
            release(batch.watches);
            continue;
        }
        for part in batch.parts {
            if part.len() < GATHER_BELOW {
                // The first part is taken as it is; later ones are copied
                // after it (or joined, when they follow it in memory).
                gathered.unsplit(part);
                continue;
            }
            if !gathered.is_empty() {
                outbound.write(gathered.split().freeze()).await?;
            }
            outbound.write(part.freeze()).await?;
        }
        if !gathered.is_empty() {
            outbound.write(gathered.split().freeze()).await?;
        }
        outbound.flush().await?;
        unwritten.fetch_sub(batch.bytes, Ordering::AcqRel);
        release(batch.watches);
    }
    outbound.finish().await
}

#[allow(clippy::too_many_arguments)]
async fn read_loop<S, R>(
    shared: &Arc<Shared<S>>,
    reader: R,
    client: &Arc<ClientInfo>,
    shutdown: &CancellationToken,
    to_writer: tokio::sync::mpsc::UnboundedSender<Batch>,
    unwritten: &AtomicUsize,
    format: Format,
    mut adopted: Option<Adopted>,
) -> io::Result<()>
where
    S: Clone + Send + Sync + 'static,
    R: AsyncRead,
{
    let mut codec = Codec::new(format, shared.limits.max_frame);
    // Each answer a part of its own, so that the writer writes it alone.
    let whole = matches!(format, Format::Legacy { .. });
    let frames = FramedRead::with_capacity(reader, codec.clone(), READ_CAPACITY);
    tokio::pin!(frames);
    // Cancelled when the grace period ends or this stream goes away: the
    // handlers still running then stop and answer 503 (those the
    // connection started inline too).
    let abort = adopted
        .as_ref()
        .map_or_else(CancellationToken::new, Adopted::abort);
    let _abort_on_drop = abort.clone().drop_guard();
    let mut in_flight: FuturesUnordered<Later> = FuturesUnordered::new();
    let mut out = BytesMut::new();
    // Handlers' answers (each its own encoded frame) not yet handed over.
    let mut parts: Vec<BytesMut> = Vec::new();
    let mut reading = true;
    let mut shutting_down = false;
    let grace = tokio::time::sleep(shared.limits.shutdown_grace);
    tokio::pin!(grace);
    let linger = tokio::time::sleep(SHUTDOWN_LINGER);
    tokio::pin!(linger);
    let mut grace_ends = tokio::time::Instant::now();
    let max_in_flight = shared.limits.max_in_flight_per_stream.max(1);
    let mut watches = Watches::new(
        shared.limits.max_watches_per_stream,
        shared.limits.watch_queue,
        shared.limits.max_frame,
        shared.tracebacks,
    );
    let outlet: Arc<dyn Outlet> = Arc::new(WriterOutlet(to_writer.clone()));
    // A watch counts as activity for the connection's idle timeout, however
    // rare its events: while any is active, the stream tells the transport
    // it is in use twice per idle timeout.
    let keep_alive_every = shared
        .limits
        .idle_timeout
        .map(|idle| (idle / 2).max(std::time::Duration::from_millis(10)));
    let keep_alive = tokio::time::sleep(keep_alive_every.unwrap_or(std::time::Duration::MAX));
    tokio::pin!(keep_alive);
    let max_unwritten = shared
        .limits
        .max_frame
        .saturating_mul(MAX_UNWRITTEN_FRAMES)
        .max(64 * 1024);

    // Whether `parts` holds an answer of a handler's task, and whether this
    // stream yielded to let the tasks still in flight finish first.
    let mut from_tasks = false;
    let mut yielded = false;

    loop {
        // Gather every answer that is ready, then hand them over in one go.
        while let Some(Some(answer)) = in_flight.next().now_or_never() {
            parts.push(answer);
            from_tasks = true;
        }
        // Handlers' tasks finish one at a time, and Tokio runs the task a
        // finishing one wakes (this stream) right after it: the answers of
        // tasks that finish together would leave one SSH packet each. Once
        // per batch, let the tasks that are ready run first.
        if from_tasks && !yielded && !in_flight.is_empty() {
            yielded = true;
            tokio::task::yield_now().await;
            continue;
        }
        if !out.is_empty() {
            parts.push(out.split());
        }
        if !parts.is_empty() {
            (from_tasks, yielded) = (false, false);
            let bytes = parts.iter().map(BytesMut::len).sum();
            let waiting = unwritten.fetch_add(bytes, Ordering::AcqRel) + bytes;
            if waiting > max_unwritten {
                tracing::warn!(
                    waiting,
                    "closing a stream whose client sends requests but does not read its answers"
                );
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{waiting} bytes of answers wait for a client that does not read them"),
                ));
            }
            let batch = Batch {
                bytes,
                parts: std::mem::take(&mut parts),
                watches: Vec::new(),
            };
            if to_writer.send(batch).is_err() {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the stream's writer stopped",
                ));
            }
        }
        // Watches ended since: their final frames follow the answers above.
        watches.end_pending();
        if in_flight.is_empty() && !reading && watches.is_empty() {
            return Ok(());
        }
        if let Some(adopted) = &adopted {
            let idle = reading
                && !shutting_down
                && in_flight.is_empty()
                && frames.read_buffer().is_empty()
                && matches!(frames.decoder(), Codec::Version1(codec) if codec.is_at_frame_boundary());
            adopted.publish(idle);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                let now = tokio::time::Instant::now();
                grace_ends = now + shared.limits.shutdown_grace;
                grace.as_mut().reset(grace_ends);
                linger.as_mut().reset((now + SHUTDOWN_LINGER).min(grace_ends));
                watches.end_all(Ending::ShuttingDown);
            }
            () = &mut linger, if shutting_down && in_flight.is_empty() && watches.is_empty() => return Ok(()),
            () = &mut grace, if shutting_down && !abort.is_cancelled() => abort.cancel(),
            () = to_writer.closed() => {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the stream's writer stopped"));
            }
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                parts.push(answer);
                from_tasks = true;
            }
            later = next_adopted(&mut adopted) => in_flight.push(later),
            ended = watches.next_ended(), if !watches.is_empty() => {
                debug!(id = %ended.id, code = ended.code.map(|c| c.as_u16()), "watch ended");
            }
            () = &mut keep_alive, if !watches.is_empty() => {
                if let Some(every) = keep_alive_every {
                    keep_alive.as_mut().reset(tokio::time::Instant::now() + every);
                    let nothing = Batch { parts: Vec::new(), bytes: 0, watches: Vec::new() };
                    let _ = to_writer.send(nothing);
                }
            }
            frame = frames.next(), if reading && in_flight.len() < max_in_flight => match frame {
                None => {
                    reading = false;
                    // At the client's EOF every watch ends: 410.
                    watches.end_all(Ending::Cancelled);
                }
                Some(Err(err)) => return Err(into_io(err)),
                Some(Ok(frame)) => {
                    let started = clock_if_read(shared);
                    if shutting_down {
                        let quiet_until = tokio::time::Instant::now() + SHUTDOWN_LINGER;
                        linger.as_mut().reset(quiet_until.min(grace_ends));
                    }
                    if frame.ends_stream() {
                        reading = false;
                    }
                    match dispatch(shared, client, frame, shutting_down) {
                        Dispatch::Now(response, verb) => {
                            answer_now(shared, &mut codec, &response, verb, started, &mut out);
                            if whole {
                                parts.push(out.split());
                            }
                        }
                        Dispatch::Run(run) => {
                            match run_handler(shared, client, run, &abort, &codec, &mut out) {
                                None if whole => parts.push(out.split()),
                                None => {}
                                Some(later) => in_flight.push(later),
                            }
                        }
                        Dispatch::Watch(run) => {
                            let response = match watches.admit(&run.id) {
                                Ok(()) => {
                                    let (handler, params) = run.handler;
                                    let request = Request::new(run.request, params, Arc::clone(client));
                                    let setup = handler(request, shared.state.clone());
                                    watches.start(WatchStart { id: run.id, setup }, Arc::clone(&outlet));
                                    None
                                }
                                Err(refusal) => Some(refusal),
                            };
                            if let Some(response) = response {
                                if let Some(started) = started {
                                    log_answer(&response, started);
                                }
                                encode(&mut codec, &response, &mut out);
                            }
                        }
                        Dispatch::Unwatch { id, target } => {
                            let response = match watches.cancel(&target) {
                                true => Response::new(id, StatusCode::OK, serde_json::Value::Null),
                                false => Response::error(
                                    id,
                                    StatusCode::NOT_FOUND,
                                    format!("no watch with id {target} is active on this stream"),
                                ),
                            };
                            if let Some(started) = started {
                                log_answer(&response, started);
                                if let Some(metrics) = &shared.metrics {
                                    metrics.answered(Some(korv_proto::Verb::Unwatch), response.code.as_u16(), started.elapsed());
                                }
                            }
                            encode(&mut codec, &response, &mut out);
                        }
                    }
                }
            },
        }
    }
}

/// Logs, counts and encodes an answer the framework gave without a
/// handler.
fn answer_now<S>(
    shared: &Shared<S>,
    codec: &mut Codec,
    response: &Response,
    verb: Option<korv_proto::Verb>,
    started: Option<Instant>,
    out: &mut BytesMut,
) {
    if let Some(started) = started {
        log_answer(response, started);
        if let Some(metrics) = &shared.metrics {
            metrics.answered(verb, response.code.as_u16(), started.elapsed());
        }
    }
    out.reserve(ANSWER_CAPACITY);
    encode(codec, response, out);
}

/// The next handler the connection started and handed over; pending
/// forever without a connection that answers inline.
async fn next_adopted(adopted: &mut Option<Adopted>) -> Later {
    match adopted {
        Some(adopted) => adopted.next().await,
        None => std::future::pending().await,
    }
}

/// Answers the whole frames at the start of `data`, a channel's data, into
/// `out`, for a connection whose stream is idle (`gate` open): requests
/// that the framework answers, and those whose handler finishes on its
/// first poll. Returns how many bytes of `data` it took; the rest, from the
/// first frame it could not finish here, is the stream's (see the `inline`
/// module). A handler that does not finish at once is handed to the stream
/// through `gate`, and nothing after it is taken.
pub(crate) fn answer_at_once<S>(
    shared: &Arc<Shared<S>>,
    client: &Arc<ClientInfo>,
    gate: &mut Gate,
    data: &[u8],
    out: &mut BytesMut,
) -> usize
where
    S: Clone + Send + Sync + 'static,
{
    // Frames above what a stream runs on its own task read as oversized
    // here, and are left to the stream, as are cut ones.
    let most = INLINE_MAX_PAYLOAD.min(shared.limits.max_frame);
    let mut frames = KorvCodec::builder().max_frame(most).build();
    let mut codec = Codec::new(Format::Version1, shared.limits.max_frame);
    let mut src = BytesMut::from(data);
    while !src.is_empty() {
        let taken = data.len() - src.len();
        let frame = match frames.decode(&mut src) {
            Ok(Some(frame @ (Frame::Empty | Frame::Payload(_)))) => frame,
            _ => return taken,
        };
        let started = clock_if_read(shared);
        match dispatch(shared, client, Incoming::Frame(frame), false) {
            Dispatch::Now(response, verb) => {
                answer_now(shared, &mut codec, &response, verb, started, out);
            }
            Dispatch::Run(run) => {
                if let Some(later) = run_handler(shared, client, run, gate.abort(), &codec, out) {
                    gate.adopt(later);
                    return data.len() - src.len();
                }
            }
            // The stream's own: it reads this frame again.
            Dispatch::Watch(_) | Dispatch::Unwatch { .. } => return taken,
        }
    }
    data.len()
}

/// The time now, for whom reads the time a request took: the metrics and
/// debug logs.
fn clock_if_read<S>(shared: &Shared<S>) -> Option<Instant> {
    (shared.metrics.is_some() || tracing::enabled!(tracing::Level::DEBUG)).then(Instant::now)
}

fn into_io(err: ProtoError) -> io::Error {
    match err {
        ProtoError::Io(err) => err,
        other => io::Error::other(other),
    }
}

/// The stream's codec: one format for the whole stream.
#[derive(Clone)]
enum Codec {
    Version1(KorvCodec),
    Legacy(LegacyCodec),
}

impl Codec {
    fn new(format: Format, max_frame: usize) -> Codec {
        match format {
            Format::Version1 => Codec::Version1(KorvCodec::builder().max_frame(max_frame).build()),
            Format::Legacy { max_message } => Codec::Legacy(
                LegacyCodec::builder()
                    .max_frame(max_frame)
                    .max_message(max_message)
                    .build(),
            ),
        }
    }
}

/// What the codec read: a version-1 frame or a korv 0.2.1 member.
enum Incoming {
    Frame(Frame),
    Legacy(LegacyFrame),
}

impl Incoming {
    /// Whether nothing can be read after this: a korv 0.2.1 member that is
    /// too large or corrupt has no length to skip it by.
    fn ends_stream(&self) -> bool {
        matches!(
            self,
            Incoming::Legacy(LegacyFrame::Oversized { .. } | LegacyFrame::Corrupt { .. })
        )
    }
}

impl Decoder for Codec {
    type Item = Incoming;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, ProtoError> {
        match self {
            Codec::Version1(codec) => Ok(codec.decode(src)?.map(Incoming::Frame)),
            Codec::Legacy(codec) => Ok(codec.decode(src)?.map(Incoming::Legacy)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, ProtoError> {
        match self {
            Codec::Version1(codec) => Ok(codec.decode_eof(src)?.map(Incoming::Frame)),
            Codec::Legacy(codec) => Ok(codec.decode_eof(src)?.map(Incoming::Legacy)),
        }
    }
}

impl Encoder<&Response> for Codec {
    type Error = ProtoError;

    fn encode(&mut self, response: &Response, dst: &mut BytesMut) -> Result<(), ProtoError> {
        match self {
            Codec::Version1(codec) => codec.encode(response, dst),
            Codec::Legacy(codec) => codec.encode(response, dst),
        }
    }
}

fn encode(codec: &mut Codec, response: &Response, out: &mut BytesMut) {
    if let Err(err) = codec.encode(response, out) {
        // Only a maximum frame too small for a bare 500 gets here.
        tracing::error!(%err, "could not encode a response");
    }
}

enum Dispatch<S> {
    /// An answer without a handler, and the request's verb (`None` for a
    /// frame that is not a request).
    Now(Response, Option<korv_proto::Verb>),
    Run(Run<S>),
    /// A `WATCH` routed to its watch handler, to start unless the stream
    /// is at its limit of watches.
    Watch(WatchRun<S>),
    /// An `UNWATCH` of the watch `target`.
    Unwatch {
        id: RequestId,
        target: RequestId,
    },
}

/// A `WATCH` to hand to its watch handler.
struct WatchRun<S> {
    id: RequestId,
    request: WireRequest,
    handler: (crate::watch::BoxedWatchHandler<S>, Params),
}

/// A request to hand to its handler.
struct Run<S> {
    id: RequestId,
    request: WireRequest,
    handler: (BoxedHandler<S>, Params),
    /// Small enough to try on this task first.
    inline: bool,
}

/// Requests with a payload up to this size may run on the stream's task.
const INLINE_MAX_PAYLOAD: usize = 16 * 1024;

/// Validates and routes one frame: an answer now, or a handler to run.
fn dispatch<S>(
    shared: &Shared<S>,
    client: &ClientInfo,
    incoming: Incoming,
    shutting_down: bool,
) -> Dispatch<S> {
    let (payload, legacy) = match incoming {
        Incoming::Frame(Frame::Empty) => return Dispatch::Now(Response::empty_frame(), None),
        Incoming::Frame(Frame::Oversized { len }) => {
            return Dispatch::Now(
                Response::payload_too_large(len, shared.limits.max_frame),
                None,
            );
        }
        Incoming::Frame(Frame::Payload(payload)) => (payload, false),
        Incoming::Legacy(LegacyFrame::Payload(payload)) => (payload, true),
        Incoming::Legacy(LegacyFrame::Oversized { max_frame }) => {
            return Dispatch::Now(
                Response::new(
                    None,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    json!({
                        "message": format!("gzip member holds more than the maximum of {max_frame} bytes"),
                        "max_frame_bytes": max_frame,
                    }),
                ),
                None,
            );
        }
        Incoming::Legacy(LegacyFrame::Corrupt { reason }) => {
            return Dispatch::Now(Response::error(None, StatusCode::BAD_REQUEST, reason), None);
        }
    };
    let parsed = match legacy {
        false => WireRequest::from_payload(&payload),
        true => WireRequest::from_legacy_payload(&payload),
    };
    let request = match parsed {
        Ok(request) => request,
        Err(rejection) => return Dispatch::Now(rejection.into_response(), None),
    };
    let id = request.id.clone();
    let verb = Some(request.verb);
    // UNWATCH is the framework's: never routed.
    let unwatch = match request.verb {
        korv_proto::Verb::Unwatch => match unwatch_target(&request) {
            Ok(target) => Some(target),
            Err(message) => {
                return Dispatch::Now(Response::error(id, StatusCode::BAD_REQUEST, message), verb);
            }
        },
        _ => None,
    };
    if shutting_down {
        return Dispatch::Now(
            Response::error(
                id,
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down and takes no new requests",
            ),
            verb,
        );
    }
    if let Some(target) = unwatch {
        return Dispatch::Unwatch { id, target };
    }
    match shared.router.route(request.verb, &request.resource) {
        Routed::Watch(handler, params, rules) => {
            match authorize::check_all(&rules, client, request.verb, &request.resource) {
                Ok(()) => Dispatch::Watch(WatchRun {
                    id,
                    request,
                    handler: (handler, params),
                }),
                Err(message) => {
                    tracing::info!(user = %client.user, verb = %request.verb, resource = %request.resource, %message, "refused: 403");
                    Dispatch::Now(Response::error(id, StatusCode::FORBIDDEN, message), verb)
                }
            }
        }
        Routed::Found(handler, params, rules) => {
            match authorize::check_all(&rules, client, request.verb, &request.resource) {
                Ok(()) => Dispatch::Run(Run {
                    id,
                    request,
                    handler: (handler, params),
                    inline: payload.len() <= INLINE_MAX_PAYLOAD,
                }),
                Err(message) => {
                    tracing::info!(user = %client.user, verb = %request.verb, resource = %request.resource, %message, "refused: 403");
                    Dispatch::Now(Response::error(id, StatusCode::FORBIDDEN, message), verb)
                }
            }
        }
        Routed::NotAllowed(allow) => Dispatch::Now(
            Response::new(
                id,
                StatusCode::METHOD_NOT_ALLOWED,
                json!({
                    "message": format!("{} is not allowed on {}", request.verb, request.resource),
                    "allow": allow,
                }),
            ),
            verb,
        ),
        Routed::NotFound => Dispatch::Now(
            Response::error(
                id,
                StatusCode::NOT_FOUND,
                format!("no route for {} {}", request.verb, request.resource),
            ),
            verb,
        ),
    }
}

/// The watch an `UNWATCH` names: its body is `{"request_id": <id>}`.
fn unwatch_target(request: &WireRequest) -> Result<RequestId, String> {
    let body: Option<serde_json::Value> = request
        .body
        .as_deref()
        .and_then(|raw| serde_json::from_str(raw.get()).ok());
    body.as_ref()
        .and_then(|body| body.get("request_id"))
        .and_then(RequestId::from_json)
        .ok_or_else(|| {
            "UNWATCH needs the body {\"request_id\": <the watch's id>}, with an integer or string id"
                .to_owned()
        })
}

/// Runs a handler with its timeout, panic capture and abort. Its answer,
/// with the request's id, is encoded into `out` when the handler finishes
/// at once (`None`); otherwise the future returned resolves to it.
///
/// Small requests are polled once right here: most handlers finish on their
/// first poll (no I/O to wait for), and those answer without a task, a
/// timer, a wake-up and a trip through the scheduler. A handler that has to
/// wait, and every large request, runs in its own task under its timeout,
/// so that its JSON work (parsing a large body, encoding a large answer)
/// runs beside this stream's reading. The task polls the handler again and
/// so re-registers its wakers: the no-op waker of the first poll is never
/// relied on.
fn run_handler<S>(
    shared: &Arc<Shared<S>>,
    client: &Arc<ClientInfo>,
    run: Run<S>,
    abort: &CancellationToken,
    codec: &Codec,
    out: &mut BytesMut,
) -> Option<Later>
where
    S: Clone + Send + Sync + 'static,
{
    let Run {
        id,
        request,
        handler: (handler, params),
        inline,
    } = run;
    let verb = request.verb;
    // Only a debug log needs the resource after the request moves on.
    let resource = tracing::enabled!(tracing::Level::DEBUG).then(|| request.resource.clone());
    let metrics = shared.metrics.clone();
    let answer = Answer {
        running: metrics.as_ref().map(|m| m.request_started()),
        // Read the clock only for whom reads the time taken.
        started: (metrics.is_some() || resource.is_some()).then(Instant::now),
        id,
        verb,
        resource,
        metrics,
        codec: codec.clone(),
    };
    let request = Request::new(request, params, Arc::clone(client));
    let mut future = CatchPanic::new(handler(request, shared.state.clone()));
    let tracebacks = shared.tracebacks;
    if inline {
        let first = TRACEBACKS.sync_scope(tracebacks, || {
            (&mut future).now_or_never().map(outcome_response)
        });
        if let Some(response) = first {
            answer.encode(response, out);
            return None;
        }
    }
    let timeout = shared.limits.request_timeout;
    let abort = abort.clone();
    let task = TRACEBACKS.scope(tracebacks, async move {
        let response = tokio::select! {
            biased;
            () = abort.cancelled() => Response::error(
                None,
                StatusCode::SERVICE_UNAVAILABLE,
                "the server shut down before the request finished",
            ),
            outcome = tokio::time::timeout(timeout, future) => match outcome {
                Ok(outcome) => outcome_response(outcome),
                Err(_) => Response::error(
                    None,
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("the handler did not finish within {} ms", timeout.as_millis()),
                ),
            },
        };
        let mut out = BytesMut::with_capacity(ANSWER_CAPACITY);
        answer.encode(response, &mut out);
        out
    });
    let task = tokio::spawn(task.in_current_span());
    let mut codec = codec.clone();
    Some(Box::pin(async move {
        task.await.unwrap_or_else(|err| {
            let response = Response::error(
                None,
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the request's task ended: {err}"),
            );
            let mut out = BytesMut::with_capacity(ANSWER_CAPACITY);
            encode(&mut codec, &response, &mut out);
            out
        })
    }))
}

/// Room made for an encoded answer before encoding it: most answers fit, so
/// that encoding does not grow its buffer step by step.
const ANSWER_CAPACITY: usize = 512;

/// A handler's response, or its panic as a `500`.
fn outcome_response(outcome: Result<Response, crate::panic::Panic>) -> Response {
    match outcome {
        Ok(response) => response,
        Err(panic) => {
            tracing::error!(message = %panic.message, location = %panic.location, "handler panicked");
            internal_error(
                format!("handler panicked: {}", panic.message),
                vec![
                    format!("panic: {}", panic.message),
                    format!("at {}", panic.location),
                ],
            )
        }
    }
}

/// What answering a request needs once its handler has responded.
struct Answer {
    /// Counts the request in flight until it is answered.
    running: Option<crate::metrics::Open>,
    started: Option<Instant>,
    id: RequestId,
    verb: korv_proto::Verb,
    resource: Option<String>,
    metrics: Option<Arc<Metrics>>,
    codec: Codec,
}

impl Answer {
    /// `response` with the request's id, logged, counted and encoded
    /// after what `out` holds.
    fn encode(mut self, mut response: Response, out: &mut BytesMut) {
        response.request_id = Some(self.id);
        if let Some(started) = self.started {
            let elapsed = started.elapsed();
            if let Some(resource) = &self.resource {
                debug!(verb = %self.verb, resource = resource.as_str(), code = response.code.as_u16(), micros = elapsed.as_micros() as u64, "request");
            }
            if let Some(metrics) = &self.metrics {
                metrics.answered(Some(self.verb), response.code.as_u16(), elapsed);
            }
        }
        drop(self.running.take());
        out.reserve(ANSWER_CAPACITY);
        encode(&mut self.codec, &response, out);
    }
}

/// Logs an answer the framework gave without a handler.
fn log_answer(response: &Response, started: Instant) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let micros = started.elapsed().as_micros() as u64;
        debug!(
            code = response.code.as_u16(),
            micros, "request answered by the framework"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Wake, Waker};

    /// Counts the wake-ups a task gets.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_context() -> (Arc<Wakes>, Waker) {
        let wakes = Arc::new(Wakes::default());
        (Arc::clone(&wakes), Waker::from(wakes))
    }

    #[test]
    fn a_hand_over_between_the_two_does_not_wake_the_task() {
        let (go, mut gone) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (to_first, mut from_second) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let received = std::sync::Mutex::new(None);
        // The first waits for what the second sends once told to go: the
        // second wakes the first during the task's poll.
        let first = async {
            *received.lock().unwrap() = from_second.recv().await;
            Ok(())
        };
        let second = async move {
            gone.recv().await;
            to_first.send(7).unwrap();
            Ok(())
        };
        let (wakes, waker) = counting_context();
        let mut cx = Context::from_waker(&waker);
        let (first, second) = (std::pin::pin!(first), std::pin::pin!(second));
        let mut joined = std::pin::pin!(try_join_in_place(first, second));
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        // A wake-up from outside the poll wakes the task.
        go.send(()).unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // In this poll the second hands 7 to the first, which is polled
        // again at once: both finish without another wake-up of the task.
        assert!(matches!(joined.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(*received.lock().unwrap(), Some(7));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_first_error_ends_both() {
        let first = std::future::pending::<io::Result<()>>();
        let second = async { Err(io::Error::other("broken")) };
        let (_, waker) = counting_context();
        let mut cx = Context::from_waker(&waker);
        let (first, second) = (std::pin::pin!(first), std::pin::pin!(second));
        let mut joined = std::pin::pin!(try_join_in_place(first, second));
        match joined.as_mut().poll(&mut cx) {
            Poll::Ready(Err(err)) => assert_eq!(err.to_string(), "broken"),
            other => panic!("expected the error, got {other:?}"),
        }
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_to_the_scheduler() {
        // Always pending, always woken again: as a future whose cooperative
        // budget is spent.
        let restless = std::future::poll_fn(|cx| {
            cx.waker().wake_by_ref();
            Poll::<io::Result<()>>::Pending
        });
        let (wakes, waker) = counting_context();
        let mut cx = Context::from_waker(&waker);
        let (restless, idle) = (
            std::pin::pin!(restless),
            std::pin::pin!(std::future::pending()),
        );
        let mut joined = std::pin::pin!(try_join_in_place(restless, idle));
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    /// Answers in `out`, as `(request_id, code)` in order.
    fn answers_in(out: &mut BytesMut) -> Vec<(serde_json::Value, u16)> {
        let mut codec = KorvCodec::new();
        let mut answers = Vec::new();
        while let Some(Frame::Payload(payload)) = codec.decode(out).unwrap() {
            let answer: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            let code = answer["code"].as_u64().unwrap() as u16;
            answers.push((answer["request_id"].clone(), code));
        }
        answers
    }

    fn frame(request: serde_json::Value) -> Vec<u8> {
        let payload = request.to_string();
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload.as_bytes());
        frame
    }

    #[tokio::test]
    async fn whole_frames_are_answered_at_once_and_the_rest_is_left_to_the_stream() {
        use crate::routing::{get, watch};
        let service = crate::KorvServer::new()
            .route("/hello", get(|_r: Request| async { json!("hi") }))
            .route(
                "/later",
                get(|_r: Request| async {
                    tokio::task::yield_now().await;
                    json!("later")
                }),
            )
            .route(
                "/events",
                watch(|_r: Request| async {
                    Ok::<_, crate::Error>(futures_util::stream::iter([json!(1)]))
                }),
            )
            .into_stream_service();
        let shared = service.shared();
        let client = Arc::new(ClientInfo::local("alice"));
        let hello = |id: i64| frame(json!({"id": id, "verb": "GET", "resource": "/hello"}));
        let (mut gate, _feed, mut adopted) = crate::inline::Inline::channel();
        let mut answer = |data: &[u8]| {
            let mut out = BytesMut::new();
            let taken = answer_at_once(shared, &client, &mut gate, data, &mut out);
            (taken, answers_in(&mut out))
        };

        // Whole frames, the framework's answers among them.
        let data = [
            hello(1),
            vec![0, 0, 0, 0],
            hello(3),
            frame(json!({"id": 4, "verb": "GET", "resource": "/nowhere"})),
        ]
        .concat();
        assert_eq!(
            answer(&data),
            (
                data.len(),
                vec![
                    (json!(1), 200),
                    (json!(null), 400),
                    (json!(3), 200),
                    (json!(4), 404)
                ]
            )
        );

        // A frame cut short, a length prefix cut short, a frame above what
        // is answered here, one above the maximum: the stream's, from there.
        let one = hello(1);
        let above = [&[0, 0, 0x40, 1][..], &[b' '; INLINE_MAX_PAYLOAD + 1][..]].concat();
        for tail in [
            &hello(2)[..9],
            &[0, 0][..],
            &above[..],
            &[0x7f, 0, 0, 0][..],
        ] {
            let data = [&one[..], tail].concat();
            let start = &tail[..tail.len().min(8)];
            assert_eq!(
                answer(&data),
                (one.len(), vec![(json!(1), 200)]),
                "after a tail of {} bytes, {start:?}…",
                tail.len()
            );
        }

        // WATCH and UNWATCH are the stream's.
        let watch_frame = frame(json!({"id": 2, "verb": "WATCH", "resource": "/events"}));
        let unwatch = frame(
            json!({"id": 3, "verb": "UNWATCH", "resource": "/events", "body": {"request_id": 2}}),
        );
        for theirs in [&watch_frame, &unwatch] {
            let data = [&one[..], &theirs[..], &hello(4)[..]].concat();
            assert_eq!(answer(&data), (one.len(), vec![(json!(1), 200)]));
        }

        // A handler that does not finish on its first poll is handed to the
        // stream, with nothing after it.
        let later = frame(json!({"id": 5, "verb": "GET", "resource": "/later"}));
        let data = [&one[..], &later[..], &hello(6)[..]].concat();
        assert_eq!(
            answer(&data),
            (one.len() + later.len(), vec![(json!(1), 200)])
        );
        let mut handed = adopted.next().now_or_never().expect("handed over");
        assert_eq!(answers_in(&mut handed.as_mut().await), [(json!(5), 200)]);
    }
}
