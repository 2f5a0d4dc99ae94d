//! The frame codec: a 4-byte big-endian length, then that many bytes of JSON.
//!
//! ```text
//! +----------+--------------------------------------+
//! |  length  |               payload                |
//! |  u32 BE  |  `length` bytes of UTF-8 JSON object |
//! +----------+--------------------------------------+
//! ```
//!
//! [`KorvCodec`] is a tokio-util [`Decoder`] and [`Encoder`]. Decoding keeps
//! three outcomes apart, so that a server can answer each and keep the stream:
//!
//! - `Ok(None)`: more bytes are needed.
//! - `Ok(Some(frame))`: a [`Frame`]: a payload to validate, an empty frame
//!   (answer `400`), or an oversized frame (answer `413`; its payload is skipped
//!   as it arrives and never buffered).
//! - `Err(_)`: the stream itself is broken (only I/O errors, from the transport).
//!
//! ```
//! use bytes::BytesMut;
//! use korv_proto::{Frame, KorvCodec};
//! use tokio_util::codec::Decoder;
//!
//! let mut codec = KorvCodec::builder().max_frame(16).build();
//! // An announced 1 GiB frame is reported at once and then skipped, not buffered.
//! let mut wire = BytesMut::from(&[0x40, 0, 0, 0, b'x', b'x'][..]);
//! assert_eq!(codec.decode(&mut wire)?, Some(Frame::Oversized { len: 1 << 30 }));
//! assert_eq!(codec.decode(&mut wire)?, None);
//! assert!(wire.is_empty());
//! # Ok::<(), korv_proto::ProtoError>(())
//! ```

use std::io::{self, Write};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

use crate::{ProtoError, Request, Response, heap, json};

/// The default maximum payload size: 8 MiB (8,388,608 bytes), the protocol's default.
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;

/// Bytes in the length prefix.
const HEADER_LEN: usize = 4;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete payload of 1 to `max_frame` bytes, not yet validated.
    Payload(Bytes),
    /// A frame whose length is zero: the server answers `400`.
    Empty,
    /// A frame whose announced length exceeds the maximum: the server answers
    /// `413`. The decoder discards its payload bytes as they arrive.
    Oversized {
        /// The announced payload length.
        len: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// Waiting for a 4-byte length.
    Head,
    /// Waiting for a payload of this many bytes.
    Data(usize),
    /// Discarding this many more bytes of an oversized frame.
    Skip(usize),
}

/// The Korv frame codec. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct KorvCodec {
    max_frame: usize,
    state: DecodeState,
}

/// Builds a [`KorvCodec`]; the only setting is the maximum frame size.
#[derive(Debug, Clone, Copy)]
pub struct KorvCodecBuilder {
    max_frame: usize,
}

impl KorvCodecBuilder {
    /// The largest payload, in bytes, that is decoded or encoded
    /// (default [`DEFAULT_MAX_FRAME`]). Clamped to 1..=4 GiB − 1, the range a
    /// 4-byte length can carry.
    pub fn max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame.clamp(1, u32::MAX as usize);
        self
    }

    /// Makes the codec.
    pub fn build(self) -> KorvCodec {
        KorvCodec {
            max_frame: self.max_frame,
            state: DecodeState::Head,
        }
    }
}

impl Default for KorvCodecBuilder {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

impl Default for KorvCodec {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl KorvCodec {
    /// A codec with the default maximum frame size (8 MiB).
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder for a codec with other settings.
    pub fn builder() -> KorvCodecBuilder {
        KorvCodecBuilder::default()
    }

    /// The largest payload this codec decodes or encodes, in bytes.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Whether the decoder is between frames: true when no partial frame is
    /// buffered or being skipped.
    pub fn is_at_frame_boundary(&self) -> bool {
        self.state == DecodeState::Head
    }

    /// Serializes `item` as one frame onto `dst`. On error `dst` is left as it was.
    fn encode_json<T: Serialize + ?Sized>(
        &self,
        item: &T,
        dst: &mut BytesMut,
    ) -> Result<(), ProtoError> {
        self.encode_with(dst, 0, |writer| serde_json::to_writer(writer, item))
    }

    /// Writes `request` as one frame onto `dst`: what `serde_json` writes
    /// for it (the tests compare), with the resource written by
    /// `json::write_str` and the body copied as it is, into a buffer sized
    /// for it at once.
    fn encode_request(&self, request: &Request, dst: &mut BytesMut) -> Result<(), ProtoError> {
        // Field order and omissions as `Request`'s `Serialize`.
        let hint = 64
            + display_len(&request.id)
            + request.resource.len()
            + request.body.as_ref().map_or(0, |body| body.get().len())
            + request
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len() + 6)
                .sum::<usize>();
        self.encode_with(dst, hint, |writer| {
            field(writer, b"{\"id\":", &request.id)?;
            let io = |result: io::Result<()>| result.map_err(serde_json::Error::io);
            io(writer.write_all(b",\"verb\":\""))?;
            io(writer.write_all(request.verb.as_str().as_bytes()))?;
            io(writer.write_all(b"\",\"resource\":"))?;
            io(json::write_str(writer, &request.resource))?;
            if let Some(body) = &request.body {
                io(writer.write_all(b",\"body\":"))?;
                io(writer.write_all(body.get().as_bytes()))?;
            }
            if !request.headers.is_empty() {
                field(writer, b",\"headers\":", &request.headers)?;
            }
            io(writer.write_all(b"}"))
        })
    }

    /// Writes `response` as one frame onto `dst`: what `serde_json` writes
    /// for it, with the body written by `json::write_value` (which scans
    /// strings eight bytes at a time) into a buffer sized for it at once.
    fn encode_response(&self, response: &Response, dst: &mut BytesMut) -> Result<(), ProtoError> {
        // Field order and omissions as `Response`'s `Serialize`, which the
        // tests compare this with.
        // The envelope's fixed part, with room for a number id, `seq` and
        // `more`; then what varies.
        let envelope = 96
            + response.request_id.as_ref().map_or(0, display_len)
            + response
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len() + 6)
                .sum::<usize>();
        let hint = envelope + json::size_hint(&response.body);
        self.encode_with(dst, hint, |writer| {
            field(writer, b"{\"request_id\":", &response.request_id)?;
            field(writer, b",\"code\":", &response.code)?;
            writer
                .write_all(b",\"body\":")
                .and_then(|()| json::write_value(writer, &response.body))
                .map_err(serde_json::Error::io)?;
            if !response.headers.is_empty() {
                field(writer, b",\"headers\":", &response.headers)?;
            }
            if let Some(seq) = response.seq {
                field(writer, b",\"seq\":", &seq)?;
            }
            if let Some(more) = response.more {
                field(writer, b",\"more\":", &more)?;
            }
            writer.write_all(b"}").map_err(serde_json::Error::io)
        })
    }

    /// Writes one frame onto `dst` with `write`, having reserved room for
    /// `hint` bytes of it (at most the maximum frame). On error `dst` is
    /// left as it was.
    fn encode_with(
        &self,
        dst: &mut BytesMut,
        hint: usize,
        write: impl FnOnce(&mut LimitedWriter<'_>) -> Result<(), serde_json::Error>,
    ) -> Result<(), ProtoError> {
        let start = dst.len();
        dst.reserve(HEADER_LEN + hint.min(self.max_frame));
        dst.put_u32(0);
        let mut writer = LimitedWriter {
            dst,
            remaining: self.max_frame,
            exceeded: false,
        };
        let result = write(&mut writer);
        let exceeded = writer.exceeded;
        let len = dst.len() - start - HEADER_LEN;
        if let Err(err) = result {
            dst.truncate(start);
            return Err(if exceeded {
                ProtoError::FrameTooLarge {
                    len: len.saturating_add(1),
                    max: self.max_frame,
                }
            } else {
                ProtoError::Serialize(err)
            });
        }
        heap::frame(len);
        // `len` fits: it is at most `max_frame`, which is at most u32::MAX.
        let prefix = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
        if let Some(head) = dst.get_mut(start..start + HEADER_LEN) {
            head.copy_from_slice(&prefix);
        }
        Ok(())
    }
}

/// Writes `key` (the text before a member's value, its comma and name
/// included), then `value` as serde_json writes it.
fn field<T: Serialize + ?Sized>(
    writer: &mut LimitedWriter<'_>,
    key: &[u8],
    value: &T,
) -> Result<(), serde_json::Error> {
    writer.write_all(key).map_err(serde_json::Error::io)?;
    serde_json::to_writer(writer, value)
}

/// The length of `item`'s `Display`, without allocating it.
fn display_len(item: &impl std::fmt::Display) -> usize {
    struct Count(usize);
    impl std::fmt::Write for Count {
        fn write_str(&mut self, text: &str) -> std::fmt::Result {
            self.0 += text.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = std::fmt::Write::write_fmt(&mut count, format_args!("{item}"));
    count.0
}

/// Writes into a `BytesMut`, failing once more than `remaining` bytes are written,
/// so that an oversized message is never serialized in full.
struct LimitedWriter<'a> {
    dst: &'a mut BytesMut,
    remaining: usize,
    exceeded: bool,
}

impl io::Write for LimitedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() > self.remaining {
            self.exceeded = true;
            return Err(io::Error::other("frame exceeds the maximum size"));
        }
        self.remaining -= buf.len();
        self.dst.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Decoder for KorvCodec {
    type Item = Frame;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        loop {
            match self.state {
                DecodeState::Skip(remaining) => {
                    let n = remaining.min(src.len());
                    src.advance(n);
                    if n < remaining {
                        self.state = DecodeState::Skip(remaining - n);
                        return Ok(None);
                    }
                    self.state = DecodeState::Head;
                }
                DecodeState::Head => {
                    if src.len() < HEADER_LEN {
                        src.reserve(HEADER_LEN - src.len());
                        return Ok(None);
                    }
                    let len = src.get_u32();
                    let size = len as usize;
                    if size == 0 {
                        return Ok(Some(Frame::Empty));
                    }
                    if size > self.max_frame {
                        self.state = DecodeState::Skip(size);
                        return Ok(Some(Frame::Oversized { len }));
                    }
                    heap::frame(size);
                    self.state = DecodeState::Data(size);
                }
                DecodeState::Data(size) => {
                    if src.len() < size {
                        src.reserve(size - src.len());
                        return Ok(None);
                    }
                    self.state = DecodeState::Head;
                    return Ok(Some(Frame::Payload(src.split_to(size).freeze())));
                }
            }
        }
    }

    /// At the end of the stream a partial frame is dropped: it can never be answered.
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                src.clear();
                self.state = DecodeState::Head;
                Ok(None)
            }
        }
    }
}

/// Encodes a response. A response larger than the maximum frame is replaced by
/// a `500` "response too large" with the same `request_id`, so
/// encoding a response fails only if the transport does.
impl Encoder<&Response> for KorvCodec {
    type Error = ProtoError;

    fn encode(&mut self, response: &Response, dst: &mut BytesMut) -> Result<(), ProtoError> {
        match self.encode_response(response, dst) {
            Err(ProtoError::FrameTooLarge { .. }) => {
                // A watch's event keeps its place in the watch: same
                // `seq`, same `more`.
                let mut replacement = Response::too_large(response.request_id.clone());
                replacement.seq = response.seq;
                replacement.more = response.more;
                match self.encode_response(&replacement, dst) {
                    // Only an id nearly as large as the maximum frame gets here:
                    // the answer cannot carry it, so it goes without one.
                    Err(ProtoError::FrameTooLarge { .. }) => {
                        self.encode_json(&Response::too_large(None), dst)
                    }
                    other => other,
                }
            }
            other => other,
        }
    }
}

impl Encoder<Response> for KorvCodec {
    type Error = ProtoError;

    fn encode(&mut self, response: Response, dst: &mut BytesMut) -> Result<(), ProtoError> {
        self.encode(&response, dst)
    }
}

/// Encodes a request. A request larger than the maximum frame is an error
/// ([`ProtoError::FrameTooLarge`]) and nothing is written.
impl Encoder<&Request> for KorvCodec {
    type Error = ProtoError;

    fn encode(&mut self, request: &Request, dst: &mut BytesMut) -> Result<(), ProtoError> {
        self.encode_request(request, dst)
    }
}

impl Encoder<Request> for KorvCodec {
    type Error = ProtoError;

    fn encode(&mut self, request: Request, dst: &mut BytesMut) -> Result<(), ProtoError> {
        self.encode_request(&request, dst)
    }
}
