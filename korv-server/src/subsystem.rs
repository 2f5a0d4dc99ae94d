//! A `korv` subsystem channel as a stream that reports its exit status just
//! before its EOF.
//!
//! `ssh -s` exits with the status the server reports, and closes the channel
//! once both sides have sent EOF. A status sent after the server's EOF can
//! arrive after the client's close, when the channel is gone and the status
//! is dropped: `ssh` then exits 255. OpenSSH's sshd reports the status first,
//! and so does this stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use russh::ChannelId;
use russh::server::Handle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, a subsystem channel's stream, whose shutdown sends exit status
/// 0 and then EOF.
pub(crate) struct ExitStatusFirst<S> {
    inner: S,
    handle: Handle,
    id: ChannelId,
    /// Set once the status is sent; shared with whoever reports it when the
    /// stream ends without a shutdown (an error).
    reported: Arc<AtomicBool>,
    sending: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<S> ExitStatusFirst<S> {
    pub(crate) fn new(inner: S, handle: Handle, id: ChannelId, reported: Arc<AtomicBool>) -> Self {
        ExitStatusFirst {
            inner,
            handle,
            id,
            reported,
            sending: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ExitStatusFirst<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ExitStatusFirst<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.reported.load(Ordering::Acquire) {
            let this = &mut *self;
            let sending = this.sending.get_or_insert_with(|| {
                let (handle, id) = (this.handle.clone(), this.id);
                Box::pin(async move {
                    let _ = handle.exit_status_request(id, 0).await;
                })
            });
            ready!(sending.as_mut().poll(cx));
            this.sending = None;
            this.reported.store(true, Ordering::Release);
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
