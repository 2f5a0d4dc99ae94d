//! The Korv wire protocol, version 1: frames, requests, responses, verbs and
//! status codes.
//!
//! This crate knows nothing of SSH, sockets or an async runtime. It turns bytes
//! into frames ([`KorvCodec`]), frames into validated [`Request`]s or the `400`
//! [`Response`] the protocol demands ([`Request::from_payload`]), and
//! responses back into bytes. The server, the client and third-party peers all
//! stand on it.
//!
//! ```text
//! frame   = length payload
//! length  = 4 bytes, unsigned, big-endian: N, the number of payload bytes (N >= 1)
//! payload = N bytes of UTF-8 JSON text encoding one JSON object
//! ```
//!
//! # Example
//!
//! Decoding the protocol's test vector (docs/PROTOCOL.md) and answering it:
//!
//! ```
//! use bytes::BytesMut;
//! use korv_proto::{Frame, KorvCodec, Request, Response, StatusCode, Verb};
//! use serde_json::json;
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = KorvCodec::new();
//! let mut wire = BytesMut::from(&b"\x00\x00\x00\x29{\"id\":1,\"verb\":\"GET\",\"resource\":\"/hello\"}"[..]);
//!
//! let Some(Frame::Payload(payload)) = codec.decode(&mut wire)? else { panic!("one frame") };
//! let request = Request::from_payload(&payload).expect("a valid request");
//! assert_eq!(request.verb, Verb::Get);
//! assert_eq!(request.resource, "/hello");
//!
//! let response = Response::new(request.id, StatusCode::OK, json!({"msg": "Hello World!"}));
//! let mut out = BytesMut::new();
//! codec.encode(&response, &mut out)?;
//! assert_eq!(&out[..4], &[0, 0, 0, 0x39]);
//! assert_eq!(&out[4..], br#"{"request_id":1,"code":200,"body":{"msg":"Hello World!"}}"#);
//! # Ok::<(), korv_proto::ProtoError>(())
//! ```
//!
//! # Layout
//!
//! - [`codec`]: the length-prefixed frame codec, with a maximum frame size and
//!   oversized frames skipped without buffering them.
//! - [`Request`], [`RequestId`], [`Verb`] and the one validation step,
//!   [`Request::from_payload`].
//! - [`Response`] and [`StatusCode`].
//! - [`legacy`]: korv 0.2.1's format (one gzip member per message, no
//!   framing), for serving its clients and calling its servers.
//! - [`utc_date`]: a Unix time as a UTC date, as the server and the client
//!   print certificate validity.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod codec;
mod date;
mod heap;
mod json;
pub mod legacy;
mod request;
mod response;
mod status;

pub use codec::{DEFAULT_MAX_FRAME, Frame, KorvCodec, KorvCodecBuilder};
pub use date::utc_date;
pub use legacy::{LegacyCodec, LegacyCodecBuilder, LegacyFrame};
pub use request::{Headers, MAX_RESOURCE_BYTES, Rejection, Request, RequestId, Verb};
pub use response::{Response, ResponseError};
pub use status::StatusCode;

/// Errors of the codec: the stream itself is broken, or a frame cannot be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// Reading or writing the underlying byte stream failed.
    #[error("i/o error on the Korv stream")]
    Io(#[from] std::io::Error),
    /// An outgoing frame would exceed the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The payload size that was refused.
        len: usize,
        /// The configured maximum payload size.
        max: usize,
    },
    /// Serializing an outgoing message failed (a `Serialize` impl reported an error).
    #[error("could not serialize the message: {0}")]
    Serialize(#[from] serde_json::Error),
}
