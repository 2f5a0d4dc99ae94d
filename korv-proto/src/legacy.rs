//! korv 0.2.1's wire format: each message one gzip member, no framing.
//!
//! korv 0.2.1 (the original Python Korv) sends every message as one gzip
//! member (RFC 1952) whose content is one compact JSON object, with nothing
//! before, between or after members:
//!
//! ```text
//! request:  gzip({"id": 1764505207.123456, "verb": "GET", "resource": "/hello", "body": null})
//! response: gzip({"id": 1764505207.125, "request_id": 1764505207.123456, "code": 200, "body": …})
//! ```
//!
//! [`LegacyCodec`] reads such members from a byte stream wherever its chunks
//! are cut, and writes one member per message:
//!
//! - Decoding yields a [`LegacyFrame`]: a member's content (to validate with
//!   [`Request::from_legacy_payload`]), a member whose content exceeds the
//!   maximum frame (inflating stops there: a gzip bomb costs at most one
//!   maximum frame of memory), or bytes that are not a whole, intact member.
//!   After the last two the stream cannot go on, as nothing says where the
//!   next member starts; the decoder then discards the rest of the input.
//! - Encoding a [`Response`] writes `{"id": <clock>, "request_id": …, "code",
//!   "body"}` with the request's id as it came (a float stays the same text),
//!   `0` for a request whose id could not be read, and a `500`'s traceback as
//!   one string. A member larger than the peer's maximum packet is replaced by
//!   a `500` "response too large for a korv 0.2.1 client".
//! - Encoding a [`Request`] writes `{"id", "verb", "resource", "body"}` with
//!   `body` always present (`null` when there is none).
//!
//! ```
//! use bytes::BytesMut;
//! use korv_proto::{LegacyCodec, LegacyFrame, Request, RequestId, Response, StatusCode, Verb};
//! use serde_json::json;
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = LegacyCodec::new();
//! let mut wire = BytesMut::new();
//! codec.encode(&Request::new(7, Verb::Get, "/hello"), &mut wire)?;
//! assert_eq!(&wire[..2], &[0x1f, 0x8b]);
//!
//! let Some(LegacyFrame::Payload(content)) = codec.decode(&mut wire)? else { panic!("one member") };
//! assert_eq!(&content[..], br#"{"id":7,"verb":"GET","resource":"/hello","body":null}"#);
//!
//! let id = RequestId::from_number_text("1764505207.1234567").unwrap();
//! codec.encode(&Response::new(id, StatusCode::OK, json!({"msg": "hi"})), &mut wire)?;
//! let Some(LegacyFrame::Payload(content)) = codec.decode(&mut wire)? else { panic!("one member") };
//! let answer: serde_json::Value = serde_json::from_slice(&content).unwrap();
//! assert!(answer["id"].is_f64());
//! assert_eq!(answer["request_id"], json!(1764505207.1234567));
//! # Ok::<(), korv_proto::ProtoError>(())
//! ```

use std::cell::RefCell;
use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress, Status};
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::DEFAULT_MAX_FRAME;
use crate::{Headers, ProtoError, Request, RequestId, Response, StatusCode, Verb};

/// The first two bytes of every gzip member, and so of every korv 0.2.1
/// stream. A version-1 stream starts with a length whose first byte is 0x00
/// for any frame up to 16 MiB, so the first byte tells the two apart.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The maximum packet size korv 0.2.1's client announces for its channel,
/// and so the default size limit of an encoded message.
pub const LEGACY_MAX_PACKET: usize = 32 * 1024;

/// The `message` of the `500` that replaces an answer whose member would not
/// fit in one packet of the peer.
pub const TOO_LARGE_FOR_LEGACY: &str = "response too large for a korv 0.2.1 client";

/// The smallest maximum message: room for a `500` with its message and an
/// id of a few dozen characters.
pub const MIN_MAX_MESSAGE: usize = 512;

/// The fixed part of a gzip header: magic, method, flags, mtime, xfl, os.
const HEADER_LEN: usize = 10;
/// The trailer: CRC-32 and the content's size modulo 2^32, little-endian.
const TRAILER_LEN: usize = 8;
/// The longest gzip header accepted, optional fields (name, comment, extra)
/// included; korv 0.2.1 writes none of them.
const MAX_HEADER_LEN: usize = 64 * 1024;
/// Bytes inflated per step, at most.
const INFLATE_CHUNK: usize = 16 * 1024;
/// Content up to this size is written in stored (uncompressed) deflate
/// blocks: for small messages a compressor's setup costs more than it saves.
const STORE_BELOW: usize = 1024;

/// Compression level for larger messages: compressing lets more content fit
/// in the peer's packet, and the fastest level keeps its cost low.
const LEVEL: u32 = 1;

/// Header flags (RFC 1952, 2.3.1).
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;

/// One decoded message, or why the stream cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyFrame {
    /// The content of one whole, intact member: at most the maximum frame,
    /// not yet validated.
    Payload(Bytes),
    /// A member whose content exceeds the maximum frame. Nothing more was
    /// inflated; the server answers `413` with `request_id` 0 and closes.
    Oversized {
        /// The maximum frame that was exceeded.
        max_frame: usize,
    },
    /// Bytes that are not an intact gzip member (a wrong magic number, a bad
    /// deflate stream, a wrong checksum), or a stream that ended inside a
    /// member. The server answers `400` with `request_id` 0 and closes.
    Corrupt {
        /// What was wrong.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a member's header.
    Header,
    /// Inflating a member's content.
    Content,
    /// Waiting for a member's trailer.
    Trailer,
    /// A member was oversized or corrupt: everything after it is discarded.
    Done,
}

/// korv 0.2.1's message codec. See the [module docs](self).
///
/// Cloning is cheap: a clone has the same limits and a decoder between
/// members, whose inflate state is only allocated when it first decodes.
pub struct LegacyCodec {
    max_frame: usize,
    max_message: usize,
    state: State,
    inflater: Option<Box<Inflater>>,
}

/// A member being inflated: the deflate state, its checksum, its content.
struct Inflater {
    inflate: Decompress,
    crc: Crc,
    content: BytesMut,
    scratch: Box<[u8]>,
}

impl Inflater {
    fn new() -> Box<Self> {
        Box::new(Inflater {
            inflate: Decompress::new(false),
            crc: Crc::new(),
            content: BytesMut::new(),
            scratch: vec![0; INFLATE_CHUNK].into_boxed_slice(),
        })
    }

    /// Inflates what `src` holds of the current member's content, up to one
    /// byte past `max_frame`. `Ok(true)` when the deflate stream ended,
    /// `Ok(false)` when more input is needed.
    fn inflate(&mut self, src: &mut BytesMut, max_frame: usize) -> Result<bool, InflateError> {
        loop {
            // Never more than one byte past the maximum: enough to know it
            // is exceeded, and all a gzip bomb gets out of us.
            let room = max_frame
                .saturating_add(1)
                .saturating_sub(self.content.len());
            let chunk = room.min(INFLATE_CHUNK);
            let out = self
                .scratch
                .get_mut(..chunk)
                .ok_or(InflateError::TooLarge)?;
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let result = self.inflate.decompress(src, out, FlushDecompress::None);
            let consumed = usize::try_from(self.inflate.total_in() - in_before).unwrap_or(0);
            let produced = usize::try_from(self.inflate.total_out() - out_before).unwrap_or(0);
            let status = match result {
                Ok(status) => status,
                // Content past the maximum came before the corruption: the
                // member is refused as too large, as it is when its bytes
                // arrive in smaller pieces and the maximum is seen first.
                Err(_) if self.content.len() + produced > max_frame => {
                    return Err(InflateError::TooLarge);
                }
                Err(err) => return Err(InflateError::Corrupt(err.to_string())),
            };
            src.advance(consumed);
            let made = out.get(..produced).unwrap_or_default();
            self.crc.update(made);
            self.content.extend_from_slice(made);
            if self.content.len() > max_frame {
                return Err(InflateError::TooLarge);
            }
            match status {
                Status::StreamEnd => return Ok(true),
                _ if consumed == 0 && produced == 0 => return Ok(false),
                _ => {}
            }
        }
    }
}

impl std::fmt::Debug for LegacyCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyCodec")
            .field("max_frame", &self.max_frame)
            .field("max_message", &self.max_message)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Clone for LegacyCodec {
    /// A codec with the same settings, between members.
    fn clone(&self) -> Self {
        Self::builder()
            .max_frame(self.max_frame)
            .max_message(self.max_message)
            .build()
    }
}

/// Builds a [`LegacyCodec`].
#[derive(Debug, Clone, Copy)]
pub struct LegacyCodecBuilder {
    max_frame: usize,
    max_message: usize,
}

impl LegacyCodecBuilder {
    /// The largest content of a member, in bytes, that is decoded or encoded
    /// (default [`DEFAULT_MAX_FRAME`]); at least 1.
    pub fn max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame.max(1);
        self
    }

    /// The largest encoded member, in bytes: the peer's maximum SSH packet
    /// size, since korv 0.2.1 reads each channel-data message as one whole
    /// message (default [`LEGACY_MAX_PACKET`]); at least [`MIN_MAX_MESSAGE`],
    /// room for the `500` that replaces an answer too large.
    pub fn max_message(mut self, max_message: usize) -> Self {
        self.max_message = max_message.max(MIN_MAX_MESSAGE);
        self
    }

    /// Makes the codec.
    pub fn build(self) -> LegacyCodec {
        LegacyCodec {
            max_frame: self.max_frame,
            max_message: self.max_message,
            state: State::Header,
            inflater: None,
        }
    }
}

impl Default for LegacyCodecBuilder {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            max_message: LEGACY_MAX_PACKET,
        }
    }
}

impl Default for LegacyCodec {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl LegacyCodec {
    /// A codec with the default limits: 8 MiB of content, 32 KiB members.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder for a codec with other limits.
    pub fn builder() -> LegacyCodecBuilder {
        LegacyCodecBuilder::default()
    }

    /// The largest content this codec decodes or encodes, in bytes.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The largest member this codec encodes, in bytes.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Sets the largest member this codec encodes (at least
    /// [`MIN_MAX_MESSAGE`]): the peer's maximum packet size, once the
    /// transport knows it.
    pub fn set_max_message(&mut self, max_message: usize) {
        self.max_message = max_message.max(MIN_MAX_MESSAGE);
    }

    /// Whether the decoder is between members.
    pub fn is_at_message_boundary(&self) -> bool {
        self.state == State::Header
    }

    /// Ends decoding: everything after this point is discarded.
    fn finish(&mut self, src: &mut BytesMut) {
        self.state = State::Done;
        self.inflater = None;
        src.clear();
    }

    fn fail(&mut self, src: &mut BytesMut, reason: String) -> Option<LegacyFrame> {
        self.finish(src);
        Some(LegacyFrame::Corrupt { reason })
    }
}

enum InflateError {
    TooLarge,
    Corrupt(String),
}

/// The length of the gzip header at the start of `src`: `Ok(None)` when more
/// bytes are needed, `Err` when it is not a gzip header.
fn header_len(src: &[u8]) -> Result<Option<usize>, String> {
    let byte = |at: usize| src.get(at).copied();
    if let Some(b) = byte(0).filter(|&b| b != GZIP_MAGIC[0]) {
        return Err(format!(
            "expected a gzip member (bytes 1f 8b), found a byte {b:#04x}"
        ));
    }
    if let Some(b) = byte(1).filter(|&b| b != GZIP_MAGIC[1]) {
        return Err(format!(
            "expected a gzip member (bytes 1f 8b), found 1f {b:02x}"
        ));
    }
    if let Some(method) = byte(2).filter(|&m| m != 8) {
        return Err(format!(
            "gzip compression method {method} is not deflate (8)"
        ));
    }
    let Some(flags) = byte(3) else {
        return Ok(None);
    };
    if flags & FRESERVED != 0 {
        return Err(format!("gzip header has reserved flags set ({flags:#04x})"));
    }
    let mut at = HEADER_LEN;
    if flags & FEXTRA != 0 {
        let (Some(lo), Some(hi)) = (byte(at), byte(at + 1)) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([lo, hi]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            match src
                .get(at..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
            {
                Some(end) => at += end + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        let (Some(lo), Some(hi)) = (byte(at), byte(at + 1)) else {
            return Ok(None);
        };
        let mut crc = Crc::new();
        crc.update(src.get(..at).unwrap_or_default());
        if crc.sum() as u16 != u16::from_le_bytes([lo, hi]) {
            return Err("gzip header checksum does not match".into());
        }
        at += 2;
    }
    Ok((src.len() >= at).then_some(at))
}

impl Decoder for LegacyCodec {
    type Item = LegacyFrame;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<LegacyFrame>, ProtoError> {
        loop {
            match self.state {
                State::Done => {
                    src.clear();
                    return Ok(None);
                }
                State::Header => match header_len(src) {
                    Err(reason) => return Ok(self.fail(src, reason)),
                    Ok(None) if src.len() > MAX_HEADER_LEN => {
                        let reason = format!("gzip header longer than {MAX_HEADER_LEN} bytes");
                        return Ok(self.fail(src, reason));
                    }
                    Ok(None) => return Ok(None),
                    Ok(Some(len)) => {
                        src.advance(len);
                        let inflater = self.inflater.get_or_insert_with(Inflater::new);
                        inflater.inflate.reset(false);
                        inflater.crc.reset();
                        inflater.content.clear();
                        self.state = State::Content;
                    }
                },
                State::Content => match self
                    .inflater
                    .get_or_insert_with(Inflater::new)
                    .inflate(src, self.max_frame)
                {
                    Ok(true) => self.state = State::Trailer,
                    Ok(false) => return Ok(None),
                    Err(InflateError::TooLarge) => {
                        self.finish(src);
                        return Ok(Some(LegacyFrame::Oversized {
                            max_frame: self.max_frame,
                        }));
                    }
                    Err(InflateError::Corrupt(err)) => {
                        return Ok(self.fail(src, format!("gzip member is corrupt: {err}")));
                    }
                },
                State::Trailer => {
                    if src.len() < TRAILER_LEN {
                        return Ok(None);
                    }
                    let crc = src.get_u32_le();
                    let size = src.get_u32_le();
                    let inflater = self.inflater.get_or_insert_with(Inflater::new);
                    if crc != inflater.crc.sum() || size != inflater.crc.amount() {
                        return Ok(self.fail(
                            src,
                            "gzip member's checksum or size does not match its content".into(),
                        ));
                    }
                    self.state = State::Header;
                    return Ok(Some(LegacyFrame::Payload(
                        inflater.content.split().freeze(),
                    )));
                }
            }
        }
    }

    /// At the end of the stream, a member that has begun and not ended is
    /// reported as [`LegacyFrame::Corrupt`] (truncated).
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<LegacyFrame>, ProtoError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        let partial = match self.state {
            State::Header => !src.is_empty(),
            State::Content | State::Trailer => true,
            State::Done => false,
        };
        if partial {
            return Ok(self.fail(src, "the stream ended inside a gzip member".into()));
        }
        Ok(None)
    }
}

thread_local! {
    /// Serialized JSON and a compressor, reused by every encode on a thread:
    /// a compressor's state is large and costly to set up for each message.
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

struct Scratch {
    json: Vec<u8>,
    zipped: Vec<u8>,
    compress: Compress,
}

/// The server's clock, as korv 0.2.1 sends it in `id`: seconds since the
/// Unix epoch, as a float.
fn clock() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}

/// A response as korv 0.2.1 writes it.
struct LegacyResponse<'a> {
    clock: f64,
    request_id: Option<&'a RequestId>,
    code: StatusCode,
    body: &'a Value,
    headers: &'a Headers,
}

impl Serialize for LegacyResponse<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &self.clock)?;
        match self.request_id {
            Some(id) => map.serialize_entry("request_id", id)?,
            None => map.serialize_entry("request_id", &0)?,
        }
        map.serialize_entry("code", &self.code)?;
        map.serialize_entry("body", self.body)?;
        if !self.headers.is_empty() {
            map.serialize_entry("headers", self.headers)?;
        }
        map.end()
    }
}

/// A request as korv 0.2.1 writes it: `body` always present.
struct LegacyRequest<'a> {
    id: &'a RequestId,
    verb: Verb,
    resource: &'a str,
    body: Option<&'a RawValue>,
    headers: &'a Headers,
}

impl Serialize for LegacyRequest<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", self.id)?;
        map.serialize_entry("verb", &self.verb)?;
        map.serialize_entry("resource", self.resource)?;
        map.serialize_entry("body", &self.body)?;
        if !self.headers.is_empty() {
            map.serialize_entry("headers", self.headers)?;
        }
        map.end()
    }
}

/// A `500`'s body with its traceback lines joined into one string, as
/// korv 0.2.1 sends tracebacks; `None` when the body has no such array.
fn joined_traceback(code: StatusCode, body: &Value) -> Option<Value> {
    if code != StatusCode::INTERNAL_SERVER_ERROR {
        return None;
    }
    let lines = body.get("traceback")?.as_array()?;
    let joined = lines
        .iter()
        .map(|line| {
            line.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| line.to_string())
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut body = body.clone();
    if let Some(object) = body.as_object_mut() {
        object.insert("traceback".into(), Value::String(joined));
    }
    Some(body)
}

/// Writes into a `Vec`, failing past `remaining` bytes, so that content
/// above the maximum frame is never serialized in full.
struct Limited<'a> {
    out: &'a mut Vec<u8>,
    remaining: usize,
}

impl Write for Limited<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() > self.remaining {
            return Err(io::Error::other("content exceeds the maximum frame"));
        }
        self.remaining -= buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a message was not encoded.
enum EncodeError {
    /// The content exceeds the maximum frame, or the member the maximum message.
    TooLarge {
        len: usize,
    },
    Serialize(serde_json::Error),
}

impl LegacyCodec {
    /// Serializes `item` and appends it to `dst` as one gzip member. On error
    /// `dst` is left as it was.
    fn encode_member<T: Serialize>(&self, item: &T, dst: &mut BytesMut) -> Result<(), EncodeError> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch {
                json,
                zipped,
                compress,
            } = scratch.get_or_insert_with(|| Scratch {
                json: Vec::new(),
                zipped: Vec::new(),
                compress: Compress::new(Compression::new(LEVEL), false),
            });
            json.clear();
            let mut writer = Limited {
                out: json,
                remaining: self.max_frame,
            };
            if let Err(err) = serde_json::to_writer(&mut writer, item) {
                return Err(if err.is_io() {
                    EncodeError::TooLarge {
                        len: self.max_frame.saturating_add(1),
                    }
                } else {
                    EncodeError::Serialize(err)
                });
            }
            if write_member(json, compress, zipped, self.max_message, dst) {
                Ok(())
            } else {
                Err(EncodeError::TooLarge {
                    len: self.max_message.saturating_add(1),
                })
            }
        })
    }
}

/// Appends `content` to `dst` as one gzip member of at most `max_member`
/// bytes: small content in stored blocks, larger content compressed. `false`
/// (and `dst` as it was) when the member would be larger.
fn write_member(
    content: &[u8],
    compress: &mut Compress,
    zipped: &mut Vec<u8>,
    max_member: usize,
    dst: &mut BytesMut,
) -> bool {
    let overhead = HEADER_LEN + TRAILER_LEN;
    let Some(max_deflate) = max_member.checked_sub(overhead) else {
        return false;
    };
    zipped.clear();
    if content.len() < STORE_BELOW || !deflate(content, compress, zipped, max_deflate) {
        zipped.clear();
        store(content, zipped);
    }
    if zipped.len() > max_deflate {
        return false;
    }
    // Magic, method deflate, no flags, no mtime, no extra flags, OS unknown.
    dst.reserve(zipped.len() + overhead);
    dst.put_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    dst.put_slice(zipped);
    let mut crc = Crc::new();
    crc.update(content);
    dst.put_u32_le(crc.sum());
    dst.put_u32_le(crc.amount());
    true
}

/// Compresses `content` into `out` as one raw deflate stream; `false` when it
/// would exceed `max` bytes (it stops there) or the compressor fails.
fn deflate(content: &[u8], compress: &mut Compress, out: &mut Vec<u8>, max: usize) -> bool {
    compress.reset();
    out.reserve((content.len() / 2 + 64).min(max + 1));
    let mut input = content;
    loop {
        let before = compress.total_in();
        match compress.compress_vec(input, out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => return out.len() <= max,
            Ok(_) if out.len() <= max => {
                let consumed = usize::try_from(compress.total_in() - before).unwrap_or(0);
                input = input.get(consumed..).unwrap_or_default();
                out.reserve(out.capacity().clamp(64, max + 1));
            }
            Ok(_) | Err(_) => return false,
        }
    }
}

/// Writes `content` into `out` as deflate stored blocks (no compression).
fn store(content: &[u8], out: &mut Vec<u8>) {
    let mut blocks = content.chunks(usize::from(u16::MAX)).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let len = block.len() as u16;
        out.push(u8::from(blocks.peek().is_none()));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
}

/// Encodes a response as one gzip member. A response whose content exceeds
/// the maximum frame, or whose member exceeds the maximum message, is
/// replaced by a `500` "response too large for a korv 0.2.1 client" with the
/// same `request_id` (or `0`, when even that cannot fit).
impl Encoder<&Response> for LegacyCodec {
    type Error = ProtoError;

    fn encode(&mut self, response: &Response, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let clock = clock();
        let joined = joined_traceback(response.code, &response.body);
        let legacy = LegacyResponse {
            clock,
            request_id: response.request_id.as_ref(),
            code: response.code,
            body: joined.as_ref().unwrap_or(&response.body),
            headers: &response.headers,
        };
        match self.encode_member(&legacy, dst) {
            Ok(()) => return Ok(()),
            Err(EncodeError::Serialize(err)) => return Err(ProtoError::Serialize(err)),
            Err(EncodeError::TooLarge { .. }) => {}
        }
        let body = serde_json::json!({ "message": TOO_LARGE_FOR_LEGACY });
        let no_headers = Headers::new();
        let mut replacement = LegacyResponse {
            clock,
            request_id: response.request_id.as_ref(),
            code: StatusCode::INTERNAL_SERVER_ERROR,
            body: &body,
            headers: &no_headers,
        };
        if self.encode_member(&replacement, dst).is_ok() {
            return Ok(());
        }
        // Only an id nearly as large as the limits gets here.
        replacement.request_id = None;
        match self.encode_member(&replacement, dst) {
            Ok(()) => Ok(()),
            Err(EncodeError::Serialize(err)) => Err(ProtoError::Serialize(err)),
            Err(EncodeError::TooLarge { len }) => Err(ProtoError::FrameTooLarge {
                len,
                max: self.max_message,
            }),
        }
    }
}

impl Encoder<Response> for LegacyCodec {
    type Error = ProtoError;

    fn encode(&mut self, response: Response, dst: &mut BytesMut) -> Result<(), ProtoError> {
        self.encode(&response, dst)
    }
}

/// Encodes a request as one gzip member. A request whose content exceeds the
/// maximum frame or whose member exceeds the maximum message is an error
/// ([`ProtoError::FrameTooLarge`]) and nothing is written.
impl Encoder<&Request> for LegacyCodec {
    type Error = ProtoError;

    fn encode(&mut self, request: &Request, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let legacy = LegacyRequest {
            id: &request.id,
            verb: request.verb,
            resource: &request.resource,
            body: request.body.as_deref(),
            headers: &request.headers,
        };
        self.encode_member(&legacy, dst).map_err(|err| match err {
            EncodeError::Serialize(err) => ProtoError::Serialize(err),
            EncodeError::TooLarge { len } => ProtoError::FrameTooLarge {
                len,
                max: self.max_message,
            },
        })
    }
}

impl Encoder<Request> for LegacyCodec {
    type Error = ProtoError;

    fn encode(&mut self, request: Request, dst: &mut BytesMut) -> Result<(), ProtoError> {
        self.encode(&request, dst)
    }
}
