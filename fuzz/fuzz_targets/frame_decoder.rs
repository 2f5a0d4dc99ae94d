//! What a server reads: arbitrary bytes through `KorvCodec`'s decoder, cut into
//! arbitrary pieces, and each frame through `Request::from_payload`.
//!
//! Input layout: byte 0 picks the maximum frame (below 128: `1 + 8 * byte`,
//! so tiny maxima and oversized frames are common; otherwise the 8 MiB
//! default), byte 1 seeds where the rest is cut, the rest is the wire.
//!
//! Invariants checked:
//! - nothing panics, and decoding never returns an error (only I/O can fail);
//! - the frames do not depend on how the bytes were cut;
//! - a `Payload` frame holds 1 to `max` bytes, an `Oversized` one announced more;
//! - after EOF the partial frame is dropped and the buffer is empty;
//! - a valid request re-encodes to a frame that decodes to the same request;
//! - every answer the server would give (the rejection's 400, the empty
//!   frame's 400, the 413) encodes to a frame within the server's maximum that
//!   decodes back to the same response, or to the contract's 500 "response too
//!   large" when the response cannot fit.
#![no_main]

use bytes::BytesMut;
use korv_proto::{Frame, KorvCodec, Request, Response, StatusCode, Verb};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let [config, seed, wire @ ..] = data else {
        return;
    };
    let max = if *config < 128 {
        1 + usize::from(*config) * 8
    } else {
        korv_proto::DEFAULT_MAX_FRAME
    };
    let whole = decode_all(max, wire, &[wire.len()]);
    let pieces = decode_all(max, wire, &cut(*seed, wire.len()));
    assert_eq!(whole, pieces, "cutting the input changed the frames");
    for frame in &whole {
        check_frame(frame, max);
    }
});

/// Piece lengths summing to `len`, from a small xorshift generator.
fn cut(seed: u8, len: usize) -> Vec<usize> {
    let mut state = u32::from(seed) | 0x9e37_7900;
    let mut pieces = Vec::new();
    let mut left = len;
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let piece = (state as usize % 9).min(left);
        pieces.push(piece); // zero-length pieces too: a read of nothing new
        left -= piece;
    }
    pieces
}

/// Feeds `wire` in pieces, decoding after each, then signals EOF.
fn decode_all(max: usize, wire: &[u8], pieces: &[usize]) -> Vec<Frame> {
    let mut codec = KorvCodec::builder().max_frame(max).build();
    assert_eq!(codec.max_frame(), max);
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    for &piece in pieces {
        buffer.extend_from_slice(&wire[at..at + piece]);
        at += piece;
        while let Some(frame) = codec.decode(&mut buffer).expect("only I/O can fail") {
            frames.push(frame);
        }
    }
    assert_eq!(at, wire.len());
    assert!(
        codec
            .decode_eof(&mut buffer)
            .expect("only I/O can fail")
            .is_none(),
        "every complete frame was decoded before EOF"
    );
    assert!(buffer.is_empty(), "the partial frame is dropped at EOF");
    assert!(codec.is_at_frame_boundary());
    frames
}

fn check_frame(frame: &Frame, max: usize) {
    match frame {
        Frame::Payload(payload) => {
            assert!(
                !payload.is_empty() && payload.len() <= max,
                "{}",
                payload.len()
            );
            match Request::from_payload(payload) {
                Ok(request) => check_request(&request),
                Err(rejection) => {
                    assert!(!rejection.message.is_empty());
                    let response = rejection.into_response();
                    assert_eq!(response.code, StatusCode::BAD_REQUEST);
                    check_answer(&response, max);
                }
            }
        }
        Frame::Empty => {
            let rejection = Request::from_payload(b"").expect_err("an empty payload is a 400");
            assert_eq!(rejection.request_id, None);
            check_answer(&Response::empty_frame(), max);
        }
        Frame::Oversized { len } => {
            assert!(*len as usize > max, "{len} is not above {max}");
            let response = Response::payload_too_large(*len, max);
            assert_eq!(response.request_id, None);
            check_answer(&response, max);
        }
    }
}

fn check_request(request: &Request) {
    assert!(request.resource.starts_with('/'));
    assert!(request.resource.len() <= korv_proto::MAX_RESOURCE_BYTES);
    if matches!(request.verb, Verb::Store | Verb::Update) {
        assert!(request.body.is_some(), "STORE and UPDATE carry a body");
    }
    if let Some(body) = &request.body {
        assert_ne!(body.get(), "null");
    }
    // Re-encoded, it decodes to the same request.
    let mut codec = KorvCodec::builder().max_frame(usize::MAX).build();
    let mut wire = BytesMut::new();
    codec.encode(request, &mut wire).expect("a request encodes");
    let Some(Frame::Payload(payload)) = codec.decode(&mut wire).expect("decodes") else {
        panic!("an encoded request is one payload frame")
    };
    assert!(wire.is_empty());
    let again = Request::from_payload(&payload)
        .unwrap_or_else(|rejection| panic!("re-encoded request rejected: {rejection}"));
    assert_eq!(&again, request);
}

/// The server encodes `response` with its own maximum: the frame fits, and it
/// decodes to the response, or to the 500 that replaces a response too large.
fn check_answer(response: &Response, max: usize) {
    assert!(response.code.as_u16() >= 400);
    assert!(response.message().is_some_and(|m| !m.is_empty()));
    // With any maximum: the answer itself round-trips.
    assert_eq!(
        &round_trip(response, usize::MAX).expect("encodes"),
        response
    );
    // With the server's maximum.
    let smallest = serde_json::to_vec(&Response::too_large(None))
        .expect("serializes")
        .len();
    match round_trip(response, max) {
        Some(decoded) => {
            let replaced = [
                Response::too_large(response.request_id.clone()),
                Response::too_large(None),
            ];
            assert!(
                &decoded == response || replaced.contains(&decoded),
                "{response:?} became {decoded:?}"
            );
        }
        None => assert!(
            max < smallest,
            "a maximum of {max} bytes fits a {smallest}-byte 500, yet encoding failed"
        ),
    }
}

/// Encodes with `max`, checks the frame, decodes it back. `None` when the
/// encoder refused (and then it wrote nothing).
fn round_trip(response: &Response, max: usize) -> Option<Response> {
    let mut codec = KorvCodec::builder().max_frame(max).build();
    let mut wire = BytesMut::from(&b"before"[..]);
    if codec.encode(response, &mut wire).is_err() {
        assert_eq!(&wire[..], b"before", "a failed encode writes nothing");
        return None;
    }
    let frame = wire.split_off(6);
    assert_eq!(&wire[..], b"before");
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    assert_eq!(len, frame.len() - 4);
    assert!(len >= 1 && len <= codec.max_frame());
    let mut frame = frame;
    let Some(Frame::Payload(payload)) = codec.decode(&mut frame).expect("decodes") else {
        panic!("an encoded response is one payload frame")
    };
    Some(Response::from_payload(&payload).expect("an encoded response parses"))
}
