//! A socket reader that reads ahead without a buffer of its own while idle.
//!
//! russh reads an SSH packet in two exact reads (its first block, then the
//! rest), so a connection pipelining many small packets costs two `recv`
//! calls per packet. A read buffer per connection would cut that to one call
//! per burst, but would hold its memory on every idle connection too. This
//! reader reads into a scratch buffer shared by the connections of a thread,
//! hands over what was asked for, and keeps only what is left over (the next
//! packets of the burst), freeing it as soon as it is consumed: an idle
//! connection holds nothing, a busy one at most one scratch buffer's worth.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much one read asks of the socket, at most: a burst of pipelined
/// packets, or a good part of a large one.
const SCRATCH: usize = 32 * 1024;

thread_local! {
    /// The scratch buffer of this thread's reads. A read borrows it only for
    /// the duration of one `poll_read`, which never yields inside.
    static SCRATCH_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Reads `inner` ahead of its caller, keeping only the unread rest.
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Bytes read from `inner` and not yet handed over; empty (and without
    /// an allocation) when there are none.
    leftover: Vec<u8>,
    /// How many bytes of `leftover` were handed over already.
    taken: usize,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            leftover: Vec::new(),
            taken: 0,
        }
    }

    /// Hands over what is left over, as much as `buf` takes; frees the
    /// leftover once it is all taken.
    fn take_leftover(&mut self, buf: &mut ReadBuf<'_>) {
        let rest = &self.leftover[self.taken..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.taken += n;
        if self.taken == self.leftover.len() {
            self.leftover = Vec::new();
            self.taken = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.taken < this.leftover.len() {
            this.take_leftover(buf);
            return Poll::Ready(Ok(()));
        }
        // A caller asking for as much as a burst gets it straight from the
        // socket, without a copy.
        if buf.remaining() >= SCRATCH {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH_BUFFER.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut ahead = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut ahead))?;
            let read = ahead.filled();
            let n = read.len().min(buf.remaining());
            buf.put_slice(&read[..n]);
            if n < read.len() {
                this.leftover = read[n..].to_vec();
                this.taken = 0;
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_from_one_read_ahead_and_nothing_is_kept_after() {
        let (mut writer, reader) = tokio::io::duplex(256 * 1024);
        let burst: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&burst).await.unwrap();
        let mut reader = ReadAhead::new(reader);
        let mut got = Vec::new();
        let mut piece = [0u8; 7];
        // The first small read takes the whole burst from the pipe.
        reader.read_exact(&mut piece).await.unwrap();
        got.extend_from_slice(&piece);
        assert_eq!(reader.leftover.len(), burst.len() - piece.len());
        assert_eq!(reader.taken, 0);
        while got.len() < burst.len() {
            let want = (burst.len() - got.len()).min(piece.len());
            reader.read_exact(&mut piece[..want]).await.unwrap();
            got.extend_from_slice(&piece[..want]);
        }
        assert_eq!(got, burst);
        // All handed over: the leftover's memory is freed.
        assert_eq!(reader.leftover.capacity(), 0);
        drop(writer);
        assert_eq!(reader.read(&mut piece).await.unwrap(), 0, "EOF");
    }

    #[tokio::test]
    async fn a_large_read_goes_straight_to_the_callers_buffer() {
        let (mut writer, reader) = tokio::io::duplex(256 * 1024);
        let data = vec![5u8; 100_000];
        writer.write_all(&data).await.unwrap();
        drop(writer);
        let mut reader = ReadAhead::new(reader);
        let mut big = vec![0u8; SCRATCH];
        let n = reader.read(&mut big).await.unwrap();
        assert!(n > 0);
        assert_eq!(reader.leftover.capacity(), 0, "nothing kept");
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(n + rest.len(), data.len());
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut a = ReadAhead::new(a);
        a.write_all(b"hello").await.unwrap();
        a.flush().await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
