//! The channel as a byte stream for korv 0.2.1's format, whose server reads
//! each SSH channel-data message as one whole message: every write of at
//! most the server's maximum packet size leaves as exactly one channel-data
//! message. When the server's flow-control window cannot take all of it, the
//! write waits for the window to grow instead of sending a part.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use russh::client::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::StreamReader;

/// The longest pause between two looks at a window too small for a message.
const MAX_WINDOW_PAUSE: Duration = Duration::from_millis(50);

/// A channel whose writes of up to `max_packet` bytes each leave as exactly
/// one channel-data message. A write completes whole or not at all; like
/// every `AsyncWrite`, after `Pending` it must be called again with the same
/// bytes.
pub(crate) struct WholeWrites {
    reader: StreamReader<BoxStream<'static, io::Result<Bytes>>, Bytes>,
    writer: Arc<ChannelWriteHalf<Msg>>,
    max_packet: usize,
    sending: Option<BoxFuture<'static, io::Result<()>>>,
    closing: Option<BoxFuture<'static, io::Result<()>>>,
}

impl WholeWrites {
    /// The stream of `channel`; `max_packet` is the server's maximum packet
    /// size.
    pub(crate) fn new(channel: Channel<Msg>, max_packet: usize) -> Self {
        let (read_half, write_half) = channel.split();
        WholeWrites {
            reader: StreamReader::new(stream::unfold(read_half, next_data).boxed()),
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
/// short pauses, which a server that keeps its window open never causes.)
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
