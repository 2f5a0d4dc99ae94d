//! Requests answered inside the SSH session's own task.
//!
//! A channel's data reaches the connection's handler in russh's session
//! task, which hands it to the channel's stream task (its [`Feed`]); the
//! stream answers through a message back to the session. For a request
//! whose handler finishes on its first poll that is two task hops, two
//! queues and a copy for a few microseconds of work: a tenth of
//! `korv serve`'s CPU per `GET /hello` at one request at a time.
//!
//! So while a stream has nothing to do (nothing buffered, nothing in
//! flight, every byte it was fed read), the connection answers the whole
//! frames of a channel-data message itself and writes the answers straight
//! into the session. Whatever it cannot finish there goes to the stream as
//! before, from the first frame it did not answer on:
//!
//! - a partial frame, an oversized one, or one above the inline size
//!   (those need the stream's decoder and its tasks);
//! - `WATCH` and `UNWATCH` (the stream's watches);
//! - a handler that does not finish on its first poll: its future, already
//!   running in its own task, is handed to the stream (*adopted*), which
//!   answers it as one of its own requests in flight.
//!
//! A handler's first poll thus runs in the connection's task: one that
//! blocks its thread there (which handlers must not do) holds up the
//! connection's other channels until it returns or first waits, where
//! before it held up its own stream.
//!
//! The two sides agree on "nothing to do" by counting: the connection
//! counts the messages it fed and the futures it handed over; the stream,
//! each time it goes idle, publishes how many of those it has taken and
//! finished with. Equal counts mean that the stream holds nothing, and
//! stays so until the connection feeds it again. A stream that is not idle
//! (or speaks korv 0.2.1's format, or shuts down) publishes [`CLOSED`].
//!
//! [`Feed`]: crate::direct::Feed

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::direct::{Feed, FeedSender};

/// A handler's answer, still being worked on.
pub(crate) type Later = Pin<Box<dyn Future<Output = BytesMut> + Send>>;

/// What [`Inline::settled`] holds while the connection must not answer.
const CLOSED: u64 = u64::MAX;

/// The counts both sides of one channel read.
pub(crate) struct Inline {
    /// Messages the stream's feed has taken from its queue.
    taken: AtomicU64,
    /// The value of `taken` when the feed last ran out of bytes: equal to
    /// it when the feed holds no part of a message.
    drained: AtomicU64,
    /// Published by the stream: messages and futures taken and finished
    /// with, at its last idle moment; [`CLOSED`] when it is not idle.
    settled: AtomicU64,
    /// The stream's abort: handlers started inline stop with the stream's.
    abort: CancellationToken,
    /// A future handed to the stream. One at most: after handing one over
    /// the connection feeds the stream until it is idle again, which it
    /// is only once it has taken the future and finished it.
    adopted: Mutex<Option<Later>>,
    /// Wakes the stream for `adopted`.
    adoption: Notify,
}

impl Inline {
    /// A channel's way in, for the connection; its data, and the
    /// handlers handed over, for the stream.
    pub(crate) fn channel() -> (Gate, Feed, Adopted) {
        let inline = Arc::new(Inline {
            taken: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            settled: AtomicU64::new(CLOSED),
            abort: CancellationToken::new(),
            adopted: Mutex::new(None),
            adoption: Notify::new(),
        });
        let (sender, feed) = Feed::new(Arc::clone(&inline));
        let gate = Gate {
            inline: Arc::clone(&inline),
            sender,
            sent: 0,
        };
        let adopted = Adopted {
            inline,
            received: 0,
        };
        (gate, feed, adopted)
    }

    /// The feed took a message from its queue.
    pub(crate) fn took(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
    }

    /// The feed has handed over every byte of the messages it took.
    pub(crate) fn drained(&self) {
        self.drained
            .store(self.taken.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// The connection's way into a channel's stream: its data, and whether
/// the connection may answer it itself.
pub(crate) struct Gate {
    inline: Arc<Inline>,
    sender: FeedSender,
    /// Messages fed to the stream, plus futures handed to it.
    sent: u64,
}

impl Gate {
    /// Whether the stream is idle with everything it was given.
    pub(crate) fn is_open(&self) -> bool {
        self.inline.settled.load(Ordering::Acquire) == self.sent
    }

    /// Feeds `data` to the stream, waiting while its queue is full; an
    /// error once the stream has ended.
    pub(crate) async fn feed(&mut self, data: Bytes) -> Result<(), ()> {
        self.sent += 1;
        self.sender.send(data).await.map_err(|_| ())
    }

    /// Hands a handler that did not finish at once to the stream.
    pub(crate) fn adopt(&mut self, later: Later) {
        self.sent += 1;
        // (A stream that ends meanwhile never takes it: its channel is
        // closing, and the handler's task stops with the stream's abort.)
        *self
            .inline
            .adopted
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(later);
        self.inline.adoption.notify_one();
    }

    /// The token that aborts the stream's handlers.
    pub(crate) fn abort(&self) -> &CancellationToken {
        &self.inline.abort
    }
}

/// The stream's side: the futures handed over, and its idle moments.
pub(crate) struct Adopted {
    inline: Arc<Inline>,
    /// Futures taken.
    received: u64,
}

impl Adopted {
    /// The next future handed over; pending while none is.
    pub(crate) async fn next(&mut self) -> Later {
        loop {
            let later = self
                .inline
                .adopted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(later) = later {
                self.received += 1;
                return later;
            }
            // `notify_one` keeps its permit for a waiter to come.
            self.inline.adoption.notified().await;
        }
    }

    /// The token that aborts the stream's handlers.
    pub(crate) fn abort(&self) -> CancellationToken {
        self.inline.abort.clone()
    }

    /// Publishes whether the stream is idle. `idle` is the stream's own
    /// view (nothing buffered or in flight, reading, version 1, not
    /// shutting down); the feed must also hold no part of a message.
    pub(crate) fn publish(&self, idle: bool) {
        let taken = self.inline.taken.load(Ordering::Relaxed);
        let settled = if idle && self.inline.drained.load(Ordering::Relaxed) == taken {
            taken + self.received
        } else {
            CLOSED
        };
        self.inline.settled.store(settled, Ordering::Release);
    }
}

impl Drop for Adopted {
    /// A stream that ends takes nothing more.
    fn drop(&mut self) {
        self.inline.settled.store(CLOSED, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_gate_opens_only_when_the_stream_has_read_and_finished_everything_sent() {
        let (mut gate, mut feed, mut adopted) = Inline::channel();
        assert!(!gate.is_open(), "closed until the stream first goes idle");
        adopted.publish(true);
        assert!(gate.is_open(), "idle with nothing sent");

        // A message fed: closed until the stream has read all of it.
        gate.feed(Bytes::from_static(b"0123456789")).await.unwrap();
        assert!(!gate.is_open(), "fed");
        adopted.publish(true);
        assert!(!gate.is_open(), "still in the queue");
        let mut part = [0; 4];
        feed.read_exact(&mut part).await.unwrap();
        adopted.publish(true);
        assert!(!gate.is_open(), "taken, part of it unread");
        let mut rest = [0; 6];
        feed.read_exact(&mut rest).await.unwrap();
        adopted.publish(false);
        assert!(!gate.is_open(), "read, but the stream is busy with it");
        adopted.publish(true);
        assert!(gate.is_open(), "read and done with");

        // A future handed over: closed until the stream has received it.
        gate.adopt(Box::pin(async { BytesMut::new() }));
        adopted.publish(true);
        assert!(!gate.is_open(), "handed over, not yet received");
        let later = futures_util::FutureExt::now_or_never(adopted.next());
        assert!(later.is_some(), "the future is received at once");
        adopted.publish(true);
        assert!(gate.is_open(), "received and done with");

        drop(adopted);
        assert!(!gate.is_open(), "a stream that ended");
    }
}
