//! An in-memory stream served by a [`StreamService`], no SSH: the test
//! writes bytes or requests into one end and reads the answers through the
//! frame codec.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use korv_proto::{Frame, KorvCodec, Response};
use korv_server::{ClientInfo, StreamService};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;

use crate::frame::{frame, frame_bytes};

/// How long any one answer may take before the test fails (generous: debug
/// builds on two shared cores).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Bytes the in-memory stream buffers in each direction.
pub const CAPACITY: usize = 1 << 20;

/// The test's end of a stream that a spawned task serves.
#[derive(Debug)]
pub struct Pipe {
    writer: WriteHalf<DuplexStream>,
    reader: FramedRead<ReadHalf<DuplexStream>, KorvCodec>,
    served: JoinHandle<io::Result<()>>,
}

/// Every write the server made to its end of a stream, in order.
pub type Writes = Arc<Mutex<Vec<Vec<u8>>>>;

/// The server's end of an in-memory stream, recording every write made to
/// it.
#[derive(Debug)]
pub struct Recorded {
    inner: DuplexStream,
    writes: Writes,
}

impl Recorded {
    /// `inner`, recorded, and the record.
    pub fn new(inner: DuplexStream) -> (Recorded, Writes) {
        let writes = Writes::default();
        let recorded = Recorded {
            inner,
            writes: Arc::clone(&writes),
        };
        (recorded, writes)
    }
}

impl AsyncRead for Recorded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        let record = buf.get(..written).unwrap_or_default().to_vec();
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(record);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Pipe {
    /// Opens a stream that `service` serves on a task of its own, with
    /// [`Pipe::client`] as the caller its handlers see.
    pub fn open<S: Clone + Send + Sync + 'static>(service: &StreamService<S>) -> Pipe {
        let (ours, theirs) = tokio::io::duplex(CAPACITY);
        Pipe::serve(service, ours, theirs)
    }

    /// As [`Pipe::open`], with a record of every write the server makes.
    pub fn open_recorded<S: Clone + Send + Sync + 'static>(
        service: &StreamService<S>,
    ) -> (Pipe, Writes) {
        let (ours, theirs) = tokio::io::duplex(CAPACITY);
        let (theirs, writes) = Recorded::new(theirs);
        (Pipe::serve(service, ours, theirs), writes)
    }

    fn serve<S, IO>(service: &StreamService<S>, ours: DuplexStream, theirs: IO) -> Pipe
    where
        S: Clone + Send + Sync + 'static,
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let service = service.clone();
        let served = tokio::spawn(async move { service.serve_as(theirs, Pipe::client()).await });
        let (reader, writer) = tokio::io::split(ours);
        Pipe {
            writer,
            reader: FramedRead::new(reader, KorvCodec::new()),
            served,
        }
    }

    /// The caller that handlers see: user `alice`, fingerprint `SHA256:abc`,
    /// an `ssh-ed25519` key with the comment `alice@laptop`.
    pub fn client() -> ClientInfo {
        ClientInfo::new("alice", "SHA256:abc", "ssh-ed25519", "alice@laptop", None)
    }

    /// Writes `bytes` as they are.
    ///
    /// # Panics
    /// The server's end is gone.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Writes `payload` as one frame with its true length.
    ///
    /// # Panics
    /// The server's end is gone.
    pub async fn send_payload(&mut self, payload: &[u8]) {
        self.send_raw(&frame_bytes(payload)).await;
    }

    /// Writes `request` as one frame of compact JSON.
    ///
    /// # Panics
    /// The server's end is gone.
    pub async fn send(&mut self, request: Value) {
        self.send_raw(&frame(&request)).await;
    }

    /// Flushes what was written.
    ///
    /// # Panics
    /// The server's end is gone.
    pub async fn flush(&mut self) {
        self.writer.flush().await.unwrap();
    }

    /// Reads the next answer.
    ///
    /// # Panics
    /// No answer within [`ANSWER_WITHIN`], the stream is closed, or what
    /// arrives is not a response frame.
    pub async fn recv(&mut self) -> Response {
        let frame = tokio::time::timeout(ANSWER_WITHIN, self.reader.next())
            .await
            .expect("an answer in time")
            .expect("the stream is open")
            .unwrap();
        let Frame::Payload(payload) = frame else {
            panic!("the server sent {frame:?}")
        };
        Response::from_payload(&payload).unwrap()
    }

    /// The next answer, or `None` once the server has closed its end.
    ///
    /// # Panics
    /// Neither comes within `within`, or what arrives is not a response
    /// frame.
    pub async fn recv_or_end(&mut self, within: Duration) -> Option<Response> {
        let frame = tokio::time::timeout(within, self.reader.next())
            .await
            .expect("an answer or the end of the stream in time")?
            .unwrap();
        let Frame::Payload(payload) = frame else {
            panic!("the server sent {frame:?}")
        };
        Some(Response::from_payload(&payload).unwrap())
    }

    /// Sends `request` and reads the next answer.
    ///
    /// # Panics
    /// As [`Pipe::send`] and [`Pipe::recv`].
    pub async fn call(&mut self, request: Value) -> Response {
        self.send(request).await;
        self.recv().await
    }

    /// Sends EOF, collects the answers still to come, and expects the server
    /// to close its end and finish without an error.
    ///
    /// # Panics
    /// The server does not close within [`ANSWER_WITHIN`], sends something
    /// that is not a response frame, or its task ends with an error.
    pub async fn finish(mut self) -> Vec<Response> {
        self.writer.shutdown().await.unwrap();
        let mut rest = Vec::new();
        while let Some(frame) = tokio::time::timeout(ANSWER_WITHIN, self.reader.next())
            .await
            .expect("the server closes after EOF")
        {
            let Frame::Payload(payload) = frame.unwrap() else {
                panic!("the server sent a frame that is not a payload")
            };
            rest.push(Response::from_payload(&payload).unwrap());
        }
        self.served.await.unwrap().unwrap();
        rest
    }
}
