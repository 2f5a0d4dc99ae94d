//! One multiplexed Korv stream: ids from a counter, a map of requests in
//! flight, one reader task and one writer task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use korv_proto::{Frame, KorvCodec, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Encoder, FramedRead};

use crate::error::{CloseReason, Error};

type Waiters = HashMap<u64, oneshot::Sender<Response>>;

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

/// A multiplexed stream. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Mux {
    state: Arc<State>,
    next_id: Arc<AtomicU64>,
    writer: mpsc::UnboundedSender<BytesMut>,
    max_frame: usize,
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
    pub(crate) fn start<IO>(io: IO, max_frame: usize) -> Mux
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(io);
        let state = Arc::new(State {
            waiters: Mutex::new(Some(HashMap::new())),
            closed: Mutex::new(None),
        });
        let (to_writer, from_callers) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(writer, from_callers, Arc::clone(&state)));
        tokio::spawn(read_loop(reader, max_frame, Arc::clone(&state)));
        Mux {
            state,
            next_id: Arc::new(AtomicU64::new(1)),
            writer: to_writer,
            max_frame,
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.id = id.into();
        let mut frame = BytesMut::new();
        KorvCodec::builder()
            .max_frame(self.max_frame)
            .build()
            .encode(&request, &mut frame)
            .map_err(Error::Protocol)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = self
                .state
                .waiters
                .lock()
                .map_err(|_| Error::Closed(CloseReason::Stopped))?;
            match waiters.as_mut() {
                Some(waiters) => waiters.insert(id, tx),
                None => return Err(self.state.closed_error()),
            };
        }
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

async fn write_loop<W: AsyncWrite>(
    writer: W,
    mut queue: mpsc::UnboundedReceiver<BytesMut>,
    state: Arc<State>,
) {
    tokio::pin!(writer);
    while let Some(mut batch) = queue.recv().await {
        while let Ok(more) = queue.try_recv() {
            batch.unsplit(more);
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

async fn read_loop<R: AsyncRead>(reader: R, max_frame: usize, state: Arc<State>) {
    let codec = KorvCodec::builder().max_frame(max_frame).build();
    let frames = FramedRead::new(reader, codec);
    tokio::pin!(frames);
    let why = loop {
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
                let waiter = state
                    .waiters
                    .lock()
                    .ok()
                    .and_then(|mut w| w.as_mut().and_then(|w| w.remove(&id)));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(response);
                }
            }
            Some(Ok(Frame::Oversized { len })) => {
                break CloseReason::FrameTooLarge {
                    len,
                    max: max_frame,
                };
            }
            Some(Ok(Frame::Empty)) => break CloseReason::EmptyFrame,
        }
    };
    state.close(why);
}
