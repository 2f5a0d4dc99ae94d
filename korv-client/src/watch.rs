//! [`Watch`]: the events of one `WATCH` (protocol 1.1), as a [`Stream`].

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::Stream;
use korv_proto::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::mux::{Mux, WATCH_QUEUE, WatchFrames};

/// One watch: a [`Stream`] of its events' bodies, in order, until the watch
/// ends. Made by [`KorvClient::watch`](crate::KorvClient::watch), which
/// returns once the server has confirmed the watch.
///
/// The stream ends (`None`) at the watch's final frame, whose code says why
/// ([`Watch::end`]: 200 the handler finished it, 410 it was cancelled, 503
/// the server shut down or this client did not read fast enough). If the
/// connection closes first, the stream yields that error, then ends.
///
/// A watch holds at most 4,096 events that the application has not read.
/// An event beyond them ends the watch here as the server ends a watcher
/// that does not read: the stream yields the events it holds, then ends
/// with a 503 made by the client (its body's `message` says so), and the
/// client sends `UNWATCH`. Memory stays bounded whatever the server sends.
///
/// Dropping a `Watch` that has not ended sends `UNWATCH`; [`Watch::cancel`]
/// does the same and waits for the final frame.
///
/// ```no_run
/// use futures_util::StreamExt;
/// use korv_client::{ClientConfig, KorvClient};
///
/// # async fn run() -> Result<(), korv_client::Error> {
/// let client = KorvClient::connect(ClientConfig::new("localhost")).await?;
/// let mut notes = client.watch("/notes/", None::<&()>).await?;
/// while let Some(event) = notes.next().await {
///     println!("{}", event?);
/// }
/// println!("ended: {:?}", notes.end().map(|r| r.code));
/// # Ok(()) }
/// ```
pub struct Watch {
    mux: Mux,
    id: u64,
    resource: String,
    frames: mpsc::Receiver<Response>,
    /// Set by the connection's reader when an event found the queue full.
    overflowed: Arc<AtomicBool>,
    end: Option<Response>,
    /// The final frame or the stream's end is seen: nothing more to read.
    done: bool,
}

impl Watch {
    /// Sends the `WATCH` and waits for its first frame: the confirmation,
    /// or the response that refuses the watch.
    pub(crate) async fn start(
        mux: Mux,
        request: korv_proto::Request,
        timeout: Option<std::time::Duration>,
    ) -> Result<Watch, Error> {
        let resource = request.resource.clone();
        let (id, WatchFrames { frames, overflowed }) = mux.watch(request)?;
        let mut watch = Watch {
            mux,
            id,
            resource,
            frames,
            overflowed,
            end: None,
            done: false,
        };
        let first = async { watch.frames.recv().await };
        let first = match timeout {
            Some(limit) => tokio::time::timeout(limit, first)
                .await
                .map_err(|_| Error::Timeout(limit))?,
            None => first.await,
        };
        match first {
            None => {
                watch.done = true;
                Err(watch.mux.closed_error())
            }
            // An ordinary response, without `seq`: the watch is refused.
            Some(response) if response.seq.is_none() => {
                watch.done = true;
                Err(Error::WatchRefused(Box::new(response)))
            }
            Some(response) if response.is_final() => {
                watch.done = true;
                watch.end = Some(response);
                Ok(watch)
            }
            Some(_confirmation) => Ok(watch),
        }
    }

    /// The id of the `WATCH` request on the stream.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The watch's final frame, once the stream has ended with it.
    pub fn end(&self) -> Option<&Response> {
        self.end.as_ref()
    }

    /// Whether the client has ended this watch because the application fell
    /// [`WATCH_QUEUE`] events behind: the events it holds are still to be
    /// read, then the stream ends with a 503.
    pub fn lagged(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Events received and not yet read.
    pub fn pending(&self) -> usize {
        self.frames.len()
    }

    /// The final frame's code, once the stream has ended with it.
    pub fn end_code(&self) -> Option<StatusCode> {
        self.end.as_ref().map(|end| end.code)
    }

    /// Sends `UNWATCH` and waits for the final frame (410, unless the watch
    /// ended by itself first), skipping the events still on their way.
    ///
    /// # Errors
    /// [`Error::Closed`] when the connection closes first.
    pub async fn cancel(mut self) -> Result<Response, Error> {
        if let Some(end) = self.end.take() {
            return Ok(end);
        }
        if self.done {
            return Err(self.mux.closed_error());
        }
        self.mux.unwatch(self.id, &self.resource, true);
        while let Some(frame) = self.frames.recv().await {
            if frame.is_final() {
                self.done = true;
                return Ok(frame);
            }
        }
        self.done = true;
        self.overflow_end().ok_or_else(|| self.mux.closed_error())
    }

    /// When the queue ended because it overflowed: the end the client
    /// makes for it (a 503, as a server's for a watcher that does not read).
    fn overflow_end(&self) -> Option<Response> {
        self.overflowed.load(Ordering::Acquire).then(|| {
            let mut end = Response::error(
                korv_proto::RequestId::from(self.id),
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the application did not read this watch's events fast enough: \
                     {WATCH_QUEUE} were waiting, and the client ended the watch"
                ),
            );
            end.more = Some(false);
            end
        })
    }
}

impl Stream for Watch {
    type Item = Result<Value, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.frames.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(frame)) if frame.is_final() => {
                self.done = true;
                self.end = Some(frame);
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame.body))),
            Poll::Ready(None) => {
                self.done = true;
                if let Some(end) = self.overflow_end() {
                    // The server still sends this watch's events; they are
                    // dropped as they come until it has the `UNWATCH`.
                    self.mux.unwatch(self.id, &self.resource, false);
                    self.end = Some(end);
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(self.mux.closed_error())))
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.done {
            self.mux.unwatch(self.id, &self.resource, false);
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("id", &self.id)
            .field("resource", &self.resource)
            .field("end", &self.end.as_ref().map(|end| end.code))
            .finish()
    }
}
