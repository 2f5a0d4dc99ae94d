//! The frame codec: the test vectors of `docs/PROTOCOL.md` byte for byte, oversized and
//! empty frames, chunked input, end of stream, and encoding limits.

use bytes::{BufMut, BytesMut};
use korv_proto::{Frame, KorvCodec, ProtoError, Request, RequestId, Response, StatusCode, Verb};
use korv_testkit::frame::frame_bytes;
use serde_json::{Value, json};
use tokio_util::codec::{Decoder, Encoder};

const REQUEST_VECTOR_HEX: &str =
    "000000297b226964223a312c2276657262223a22474554222c227265736f75726365223a222f68656c6c6f227d";
const RESPONSE_VECTOR_HEX: &str = "000000397b22726571756573745f6964223a312c22636f6465223a3230302c22626f6479223a7b226d7367223a2248656c6c6f20576f726c6421227d7d";

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_all(codec: &mut KorvCodec, wire: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(wire);
    let mut frames = Vec::new();
    while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
        frames.push(frame);
    }
    frames
}

#[test]
fn the_request_test_vector_encodes_byte_for_byte() {
    let request = Request::new(1, Verb::Get, "/hello");
    let mut out = BytesMut::new();
    KorvCodec::new().encode(&request, &mut out).unwrap();
    assert_eq!(&out[..], &unhex(REQUEST_VECTOR_HEX)[..]);
}

#[test]
fn the_request_test_vector_decodes_and_validates() {
    let frames = decode_all(&mut KorvCodec::new(), &unhex(REQUEST_VECTOR_HEX));
    assert_eq!(frames.len(), 1);
    let Frame::Payload(payload) = &frames[0] else {
        panic!("{frames:?}")
    };
    assert_eq!(payload.len(), 41);
    let request = Request::from_payload(payload).unwrap();
    assert_eq!(request, Request::new(1, Verb::Get, "/hello"));
}

#[test]
fn the_response_test_vector_encodes_byte_for_byte() {
    let response = Response::new(
        RequestId::from(1),
        StatusCode::OK,
        json!({"msg": "Hello World!"}),
    );
    let mut out = BytesMut::new();
    KorvCodec::new().encode(&response, &mut out).unwrap();
    assert_eq!(&out[..], &unhex(RESPONSE_VECTOR_HEX)[..]);
}

#[test]
fn the_response_test_vector_decodes_as_a_response() {
    let frames = decode_all(&mut KorvCodec::new(), &unhex(RESPONSE_VECTOR_HEX));
    let [Frame::Payload(payload)] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_eq!(payload.len(), 57);
    let response = Response::from_payload(payload).unwrap();
    assert_eq!(response.request_id, Some(RequestId::from(1)));
    assert_eq!(response.code, StatusCode::OK);
    assert_eq!(response.body, json!({"msg": "Hello World!"}));
}

#[test]
fn a_zero_length_frame_is_a_distinct_item_and_the_stream_goes_on() {
    let mut wire = vec![0, 0, 0, 0];
    wire.extend(frame_bytes(br#"{"id":2}"#));
    let frames = decode_all(&mut KorvCodec::new(), &wire);
    assert_eq!(
        frames,
        vec![Frame::Empty, Frame::Payload(br#"{"id":2}"#[..].into())]
    );
    let response = Response::empty_frame();
    assert_eq!(response.code, StatusCode::BAD_REQUEST);
    assert_eq!(response.request_id, None);
    assert!(response.message().unwrap().contains("empty"));
}

#[test]
fn an_oversized_frame_is_reported_as_soon_as_its_length_is_read() {
    let mut codec = KorvCodec::builder().max_frame(10).build();
    let mut buf = BytesMut::from(&[0, 0, 0, 11][..]);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Frame::Oversized { len: 11 })
    );
    assert!(!codec.is_at_frame_boundary());
}

#[test]
fn an_oversized_frame_is_skipped_and_the_next_frame_decodes() {
    let mut codec = KorvCodec::builder().max_frame(10).build();
    let mut wire = frame_bytes(&[b'x'; 11]);
    wire.extend(frame_bytes(b"{}"));
    let frames = decode_all(&mut codec, &wire);
    assert_eq!(
        frames,
        vec![
            Frame::Oversized { len: 11 },
            Frame::Payload(b"{}"[..].into())
        ]
    );
}

#[test]
fn an_oversized_payload_is_never_buffered() {
    // A 4 GiB - 1 frame announced, then fed 1 MiB at a time: the buffer never grows.
    let mut codec = KorvCodec::new();
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Frame::Oversized { len: u32::MAX })
    );
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..64 {
        buf.extend_from_slice(&chunk);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "skipped bytes must be discarded at once");
    }
    assert!(
        buf.capacity() < 4 << 20,
        "capacity grew to {}",
        buf.capacity()
    );
}

#[test]
fn the_413_response_names_the_maximum() {
    let response = Response::payload_too_large(9_000_000, 8_388_608);
    assert_eq!(response.code, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.request_id, None);
    assert_eq!(response.body["max_frame_bytes"], json!(8_388_608));
    assert!(response.message().unwrap().contains("9000000"));
}

#[test]
fn a_frame_exactly_at_the_maximum_is_accepted() {
    let mut codec = KorvCodec::builder().max_frame(4).build();
    let frames = decode_all(&mut codec, &frame_bytes(b"{}  "));
    assert_eq!(frames, vec![Frame::Payload(b"{}  "[..].into())]);
}

#[test]
fn the_default_maximum_is_8_mib() {
    assert_eq!(KorvCodec::new().max_frame(), 8 * 1024 * 1024);
    assert_eq!(korv_proto::DEFAULT_MAX_FRAME, 8_388_608);
}

#[test]
fn a_stream_that_ends_inside_a_frame_drops_the_partial_frame() {
    let mut wire = frame_bytes(b"{\"a\":1}");
    wire.extend_from_slice(&[0, 0, 0, 9, b'{']);
    let frames = decode_all(&mut KorvCodec::new(), &wire);
    assert_eq!(frames, vec![Frame::Payload(b"{\"a\":1}"[..].into())]);
}

#[test]
fn a_stream_that_ends_inside_a_length_drops_it() {
    let frames = decode_all(&mut KorvCodec::new(), &[0, 0]);
    assert!(frames.is_empty());
}

#[test]
fn frames_split_one_byte_at_a_time_decode_the_same() {
    let mut wire = frame_bytes(br#"{"id":1}"#);
    wire.extend([0, 0, 0, 0]);
    wire.extend(frame_bytes(br#"{"id":"two"}"#));
    let whole = decode_all(&mut KorvCodec::new(), &wire);
    let mut codec = KorvCodec::new();
    let mut buf = BytesMut::new();
    let mut split = Vec::new();
    for byte in wire {
        buf.put_u8(byte);
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            split.push(frame);
        }
    }
    assert_eq!(split, whole);
    assert_eq!(split.len(), 3);
}

#[test]
fn a_response_above_the_maximum_becomes_a_500_with_the_same_id() {
    let mut codec = KorvCodec::builder().max_frame(200).build();
    let big = Response::new(
        RequestId::from("big"),
        StatusCode::OK,
        json!("x".repeat(500)),
    );
    let mut out = BytesMut::new();
    codec.encode(&big, &mut out).unwrap();
    let frames = decode_all(&mut KorvCodec::new(), &out);
    let [Frame::Payload(payload)] = &frames[..] else {
        panic!("{frames:?}")
    };
    let response = Response::from_payload(payload).unwrap();
    assert_eq!(response.code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.request_id, Some(RequestId::from("big")));
    assert_eq!(response.message(), Some("response too large"));
}

#[test]
fn a_request_above_the_maximum_is_an_error_and_writes_nothing() {
    let mut codec = KorvCodec::builder().max_frame(64).build();
    let request = Request::new(1, Verb::Store, "/a")
        .with_body(&"y".repeat(100))
        .unwrap();
    let mut out = BytesMut::from(&b"kept"[..]);
    let err = codec.encode(&request, &mut out).unwrap_err();
    assert!(
        matches!(err, ProtoError::FrameTooLarge { max: 64, .. }),
        "{err}"
    );
    assert_eq!(&out[..], b"kept");
}

#[test]
fn encoding_any_json_body_succeeds() {
    let bodies = [
        Value::Null,
        json!(f64::MAX),
        json!(u64::MAX),
        json!(i64::MIN),
        json!({"\u{0}": "\u{10ffff}", "nested": [[[{}]]]}),
        json!("\"\\\u{1f}"),
    ];
    for body in bodies {
        let response = Response::new(RequestId::from(1), StatusCode::OK, body.clone());
        let mut out = BytesMut::new();
        KorvCodec::new().encode(&response, &mut out).unwrap();
        let parsed = Response::from_payload(&out[4..]).unwrap();
        assert_eq!(parsed.body, body);
    }
}

#[test]
fn response_headers_are_sent_only_when_present() {
    let mut out = BytesMut::new();
    let response = Response::new(RequestId::from(1), StatusCode::CREATED, Value::Null)
        .with_header("etag", "x");
    KorvCodec::new().encode(&response, &mut out).unwrap();
    assert_eq!(
        &out[4..],
        br#"{"request_id":1,"code":201,"body":null,"headers":{"etag":"x"}}"#
    );
}

#[test]
fn a_response_with_a_code_outside_100_to_599_is_malformed() {
    assert!(Response::from_payload(br#"{"request_id":1,"code":600,"body":null}"#).is_err());
    assert!(Response::from_payload(br#"{"request_id":1.5,"code":200,"body":null}"#).is_err());
    assert!(Response::from_payload(b"[]").is_err());
}

#[test]
fn a_large_body_is_encoded_into_a_buffer_sized_for_it_at_once() {
    let mut response = Response::new(
        RequestId::from("a string id"),
        StatusCode::OK,
        json!({"text": "x".repeat(1 << 20), "n": 1}),
    );
    response.headers.insert("etag".into(), "\"abc\"".into());
    let mut out = BytesMut::new();
    KorvCodec::new().encode(&response, &mut out).unwrap();
    assert!(out.len() > 1 << 20);
    // Grown as it was written, the buffer would have doubled past 2 MiB.
    assert!(
        out.capacity() < out.len() + 4096,
        "{} bytes of capacity for a {}-byte frame",
        out.capacity(),
        out.len()
    );
}
