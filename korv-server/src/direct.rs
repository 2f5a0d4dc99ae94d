//! A Korv stream over an SSH channel: where its bytes come from, where its
//! answers go, and which format a `direct-tcpip` channel speaks.
//!
//! The connection's russh handler receives every channel-data message and
//! pushes its bytes into the channel's [`Feed`], a bounded queue the stream
//! reads as an `AsyncRead`: no channel object and no reader beside the
//! stream. Answers go straight into russh's session:
//!
//! - [`SessionOutbound`]: version 1. Each batch of answers the stream writes
//!   is one message to the session (which cuts it into packets within the
//!   client's window and maximum packet size), without a copy.
//! - [`WholeOutbound`]: korv 0.2.1's format, whose client reads each SSH
//!   channel-data message as one whole message. Every write of at most the
//!   client's maximum packet size leaves as exactly one channel-data
//!   message: when the client's flow-control window cannot take all of it,
//!   the write waits for the window to grow instead of sending a part.
//!
//! A `direct-tcpip` channel speaks version 1, or korv 0.2.1's format when its
//! first byte is `0x1f` (a gzip member's first byte; a version-1 length
//! starts with `0x00` for any frame up to 16 MiB): [`Feed::first`] waits for
//! the channel's first data.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use russh::ChannelId;
use russh::ChannelWriteHalf;
use russh::server::{Handle, Msg};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::inline::Inline;
use crate::stream::Outbound;

/// The first byte of every korv 0.2.1 stream.
pub(crate) const LEGACY_FIRST_BYTE: u8 = korv_proto::legacy::GZIP_MAGIC[0];

/// Channel-data messages queued for a stream before the connection waits for
/// it to read (the connection's other channels wait too, as they do in
/// russh's own channel queues): with 64 KiB packets, at most 8 MiB (one
/// window) held per channel.
pub(crate) const FEED_MESSAGES: usize = 128;

/// The longest pause between two looks at a window too small for a message.
const MAX_WINDOW_PAUSE: Duration = Duration::from_millis(50);

/// The sending side of a channel's [`Feed`], kept by the connection's
/// handler; dropping it is the channel's EOF.
pub(crate) type FeedSender = mpsc::Sender<Bytes>;

/// A channel's data as a byte stream, in the order the client sent it, up
/// to the channel's EOF or close.
pub(crate) struct Feed {
    queue: mpsc::Receiver<Bytes>,
    /// What is left of the message being read.
    current: Bytes,
    /// Counts the messages taken and read, for answers given inline.
    inline: Arc<Inline>,
}

impl Feed {
    /// A new feed and the sender the handler pushes channel data into;
    /// `inline` counts what the feed takes.
    pub(crate) fn new(inline: Arc<Inline>) -> (FeedSender, Feed) {
        let (sender, queue) = mpsc::channel(FEED_MESSAGES);
        (
            sender,
            Feed {
                queue,
                current: Bytes::new(),
                inline,
            },
        )
    }

    /// The next message, counted as taken.
    fn take(&mut self, data: Bytes) {
        self.inline.took();
        self.current = data;
    }

    /// The channel's first byte, once it has arrived; `None` when the
    /// channel ends (EOF or close) before sending any. The byte is read
    /// again by the stream.
    pub(crate) async fn first(&mut self) -> Option<u8> {
        while self.current.is_empty() {
            let data = self.queue.recv().await?;
            self.take(data);
        }
        self.current.first().copied()
    }
}

impl AsyncRead for Feed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.current.is_empty() {
            match self.queue.poll_recv(cx) {
                Poll::Ready(Some(data)) => self.take(data),
                // EOF: the handler dropped the sender.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(self.current.get(..n).unwrap_or_default());
        self.current.advance(n);
        if self.current.is_empty() {
            self.inline.drained();
        }
        Poll::Ready(Ok(()))
    }
}

/// Answers written straight into russh's session: each write is one
/// message to the session, which sends it as channel data within the
/// client's window and maximum packet size. Finishing sends EOF.
pub(crate) struct SessionOutbound {
    handle: Handle,
    channel: ChannelId,
    /// For a `korv` subsystem channel: set once exit status 0 is sent,
    /// which [`Outbound::finish`] does just before the EOF.
    exit_status: Option<Arc<AtomicBool>>,
}

impl SessionOutbound {
    pub(crate) fn new(handle: Handle, channel: ChannelId) -> Self {
        SessionOutbound {
            handle,
            channel,
            exit_status: None,
        }
    }

    /// Reports exit status 0 before the EOF, and sets `reported` once it is
    /// sent. `ssh -s` exits with the status the server reports and closes
    /// the channel once both sides have sent EOF: a status sent after the
    /// server's EOF can arrive when the channel is gone, is dropped, and
    /// `ssh` exits 255. OpenSSH's sshd reports the status first, too.
    pub(crate) fn exit_status_first(mut self, reported: Arc<AtomicBool>) -> Self {
        self.exit_status = Some(reported);
        self
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the SSH connection has ended")
}

impl Outbound for SessionOutbound {
    async fn write(&mut self, bytes: Bytes) -> io::Result<()> {
        self.handle
            .data(self.channel, bytes)
            .await
            .map_err(|_| gone())
    }

    async fn flush(&mut self) -> io::Result<()> {
        // The session writes to the socket as soon as it has handled a
        // message: there is nothing to push.
        Ok(())
    }

    /// An empty message to the session: nothing is sent on the wire, but
    /// the session counts it as activity for its inactivity timeout.
    async fn keep_alive(&mut self) -> io::Result<()> {
        self.handle
            .data(self.channel, Bytes::new())
            .await
            .map_err(|_| gone())
    }

    async fn finish(&mut self) -> io::Result<()> {
        if let Some(reported) = &self.exit_status
            && !reported.load(Ordering::Acquire)
        {
            let _ = self.handle.exit_status_request(self.channel, 0).await;
            reported.store(true, Ordering::Release);
        }
        self.handle.eof(self.channel).await.map_err(|()| gone())
    }
}

/// A channel whose writes of up to `max_packet` bytes each leave as exactly
/// one channel-data message.
pub(crate) struct WholeOutbound {
    writer: ChannelWriteHalf<Msg>,
    max_packet: usize,
}

impl WholeOutbound {
    /// Writes to `writer`; `max_packet` is the client's maximum packet size.
    pub(crate) fn new(writer: ChannelWriteHalf<Msg>, max_packet: usize) -> Self {
        WholeOutbound { writer, max_packet }
    }
}

impl Outbound for WholeOutbound {
    /// Sends `data` as one channel-data message when it fits in one packet:
    /// first waits until the window takes all of it. Nothing else writes to
    /// the channel meanwhile and the window only grows, so the message then
    /// leaves whole. (russh exposes the window's size but not its changes,
    /// hence the short pauses; a korv 0.2.1 client keeps its window far
    /// above one packet, so they are rare.)
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        if data.len() <= self.max_packet {
            let mut pause = Duration::from_millis(1);
            while self.writer.writable_packet_size().await < data.len() {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_WINDOW_PAUSE);
            }
        }
        self.writer
            .data_bytes(data)
            .await
            .map_err(|err| io::Error::new(io::ErrorKind::BrokenPipe, err))
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.writer
            .eof()
            .await
            .map_err(|err| io::Error::new(io::ErrorKind::BrokenPipe, err))
    }
}
