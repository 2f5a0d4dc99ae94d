//! What a server reads on a korv 0.2.1 stream: arbitrary bytes through
//! `LegacyCodec`'s decoder, cut into arbitrary pieces, and each member's
//! content through `Request::from_legacy_payload`.
//!
//! Input layout: byte 0 picks the maximum frame (below 128: `1 + 8 * byte`,
//! so tiny maxima and oversized members are common; otherwise the 8 MiB
//! default), byte 1 seeds where the rest is cut, byte 2 picks the maximum
//! message of the answers, the rest is the wire (gzip members, hand-made or
//! mutated).
//!
//! Invariants checked:
//! - nothing panics, and decoding never returns an error (only I/O can fail);
//! - the messages do not depend on how the bytes were cut;
//! - a `Payload` holds at most `max` bytes; `Oversized` and `Corrupt` come at
//!   most once, last, and the buffer is empty after EOF;
//! - a valid request re-encodes to one member that decodes to the same request;
//! - every answer the server would give (the rejection's 400 with its id or 0,
//!   the 413, the 400 of a corrupt member) encodes to one member within the
//!   maximum message that decodes to JSON with the same code.
#![no_main]

use bytes::BytesMut;
use korv_proto::{LegacyCodec, LegacyFrame, Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let [config, seed, packet, wire @ ..] = data else {
        return;
    };
    let max = if *config < 128 {
        1 + usize::from(*config) * 8
    } else {
        korv_proto::DEFAULT_MAX_FRAME
    };
    let max_message = 512 + usize::from(*packet) * 128;
    let whole = decode_all(max, wire, &[wire.len()]);
    let pieces = decode_all(max, wire, &cut(*seed, wire.len()));
    assert_eq!(whole, pieces, "cutting the input changed the messages");
    for (at, frame) in whole.iter().enumerate() {
        match frame {
            LegacyFrame::Payload(content) => {
                assert!(content.len() <= max, "{}", content.len());
                match Request::from_legacy_payload(content) {
                    Ok(request) => check_request(&request),
                    Err(rejection) => {
                        let response = rejection.into_response();
                        check_answer(&response, max_message);
                    }
                }
            }
            LegacyFrame::Oversized { max_frame } => {
                assert_eq!(*max_frame, max);
                assert_eq!(at + 1, whole.len(), "nothing follows an oversized member");
                check_answer(
                    &Response::error(None, StatusCode::PAYLOAD_TOO_LARGE, "too large"),
                    max_message,
                );
            }
            LegacyFrame::Corrupt { reason } => {
                assert!(!reason.is_empty());
                assert_eq!(at + 1, whole.len(), "nothing follows a corrupt member");
                check_answer(
                    &Response::error(None, StatusCode::BAD_REQUEST, reason.clone()),
                    max_message,
                );
            }
        }
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
        pieces.push(piece);
        left -= piece;
    }
    pieces
}

/// Feeds `wire` in pieces, decoding after each, then signals EOF.
fn decode_all(max: usize, wire: &[u8], pieces: &[usize]) -> Vec<LegacyFrame> {
    let mut codec = LegacyCodec::builder().max_frame(max).build();
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
    while let Some(frame) = codec.decode_eof(&mut buffer).expect("only I/O can fail") {
        frames.push(frame);
    }
    assert!(buffer.is_empty(), "everything is consumed at EOF");
    frames
}

fn check_request(request: &Request) {
    assert!(request.resource.starts_with('/'));
    let mut codec = LegacyCodec::builder()
        .max_frame(usize::MAX)
        .max_message(usize::MAX)
        .build();
    let mut wire = BytesMut::new();
    codec.encode(request, &mut wire).expect("a request encodes");
    let Some(LegacyFrame::Payload(content)) = codec.decode(&mut wire).expect("decodes") else {
        panic!("an encoded request is one member")
    };
    assert!(wire.is_empty());
    let again = Request::from_legacy_payload(&content)
        .unwrap_or_else(|rejection| panic!("re-encoded request rejected: {rejection}"));
    assert_eq!(&again, request);
}

fn check_answer(response: &Response, max_message: usize) {
    let mut codec = LegacyCodec::builder().max_message(max_message).build();
    let mut wire = BytesMut::new();
    codec
        .encode(response, &mut wire)
        .expect("an answer encodes");
    assert!(wire.len() <= max_message, "{} > {max_message}", wire.len());
    let Some(LegacyFrame::Payload(content)) =
        LegacyCodec::new().decode(&mut wire).expect("decodes")
    else {
        panic!("an encoded answer is one member")
    };
    assert!(wire.is_empty());
    let answer: Value = serde_json::from_slice(&content).expect("an answer is JSON");
    let code = answer["code"].as_u64().expect("a code");
    assert!(code == u64::from(response.code.as_u16()) || code == 500);
    assert!(answer["id"].is_f64());
    match &response.request_id {
        None => assert_eq!(answer["request_id"], Value::from(0)),
        Some(_) => assert!(answer["request_id"].is_number() || answer["request_id"].is_string()),
    }
}
