//! `direct-tcpip` channels: which format a stream speaks, and the byte
//! stream each format runs over.
//!
//! A `direct-tcpip` channel speaks version 1, or korv 0.2.1's format when its
//! first byte is `0x1f` (a gzip member's first byte; a version-1 length
//! starts with `0x00` for any frame up to 16 MiB). [`first_data`] waits for
//! the channel's first data, and the stream then runs over:
//!
//! - [`Prefixed`]: russh's `ChannelStream` with those first bytes read again
//!   first. Nothing else changes for version 1.
//! - [`WholeWrites`]: for korv 0.2.1's format, whose client reads each SSH
//!   channel-data message as one whole message. Every write of at most the
//!   client's maximum packet size leaves as exactly one channel-data
//!   message: when the client's flow-control window cannot take all of it,
//!   the write waits for the window to grow instead of sending a part.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::StreamReader;

/// The first byte of every korv 0.2.1 stream.
pub(crate) const LEGACY_FIRST_BYTE: u8 = korv_proto::legacy::GZIP_MAGIC[0];

/// The longest pause between two looks at a window too small for a message.
const MAX_WINDOW_PAUSE: Duration = Duration::from_millis(50);

/// The channel's first data that is not empty; `None` when the channel
/// ends (EOF or close) before sending any.
pub(crate) async fn first_data(channel: &mut Channel<Msg>) -> Option<Bytes> {
    loop {
        match channel.wait().await? {
            ChannelMsg::Data { data } if !data.is_empty() => return Some(data),
            ChannelMsg::Eof | ChannelMsg::Close => return None,
            _ => {}
        }
    }
}

/// A byte stream that reads `prefix` before the rest of `io`.
pub(crate) struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    pub(crate) fn new(prefix: Bytes, io: IO) -> Self {
        Prefixed { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(self.prefix.get(..n).unwrap_or_default());
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A channel as a byte stream whose writes of up to `max_packet` bytes each
/// leave as exactly one channel-data message. A write completes whole or
/// not at all; like every `AsyncWrite`, after `Pending` it must be called
/// again with the same bytes.
pub(crate) struct WholeWrites {
    reader: StreamReader<BoxStream<'static, io::Result<Bytes>>, Bytes>,
    writer: Arc<ChannelWriteHalf<Msg>>,
    max_packet: usize,
    sending: Option<BoxFuture<'static, io::Result<()>>>,
    closing: Option<BoxFuture<'static, io::Result<()>>>,
}

impl WholeWrites {
    /// The stream of `channel`, whose data so far was `first`; `max_packet`
    /// is the client's maximum packet size.
    pub(crate) fn new(channel: Channel<Msg>, first: Bytes, max_packet: usize) -> Self {
        let (read_half, write_half) = channel.split();
        let rest = stream::unfold(read_half, next_data);
        let data = stream::once(async move { Ok(first) }).chain(rest).boxed();
        WholeWrites {
            reader: StreamReader::new(data),
            writer: Arc::new(write_half),
            max_packet,
            sending: None,
            closing: None,
        }
    }
}

/// The channel's next data, until its EOF or close.
async fn next_data(mut read_half: ChannelReadHalf) -> Option<(io::Result<Bytes>, ChannelReadHalf)> {
    loop {
        match read_half.wait().await? {
            ChannelMsg::Data { data } => return Some((Ok(data), read_half)),
            ChannelMsg::Eof | ChannelMsg::Close => return None,
            _ => {}
        }
    }
}

/// Sends `data` as one channel-data message when it fits in one packet:
/// first waits until the window takes all of it. Nothing else writes to the
/// channel meanwhile and the window only grows, so the message then leaves
/// whole. (russh exposes the window's size but not its changes, hence the
/// short pauses; a korv 0.2.1 client keeps its window far above one packet,
/// so they are rare.)
async fn send_whole(
    writer: Arc<ChannelWriteHalf<Msg>>,
    data: Bytes,
    max_packet: usize,
) -> io::Result<()> {
    if data.len() <= max_packet {
        let mut pause = Duration::from_millis(1);
        while writer.writable_packet_size().await < data.len() {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_WINDOW_PAUSE);
        }
    }
    writer
        .data_bytes(data)
        .await
        .map_err(|err| io::Error::new(io::ErrorKind::BrokenPipe, err))
}

impl AsyncRead for WholeWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for WholeWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let sending = this.sending.get_or_insert_with(|| {
            let data = Bytes::copy_from_slice(buf);
            send_whole(Arc::clone(&this.writer), data, this.max_packet).boxed()
        });
        let result = ready!(sending.poll_unpin(cx));
        this.sending = None;
        Poll::Ready(result.map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let closing = this.closing.get_or_insert_with(|| {
            let writer = Arc::clone(&this.writer);
            async move {
                writer
                    .eof()
                    .await
                    .map_err(|err| io::Error::new(io::ErrorKind::BrokenPipe, err))
            }
            .boxed()
        });
        ready!(closing.poll_unpin(cx))?;
        Poll::Ready(Ok(()))
    }
}
