//! Property tests: round trips, and splitting a byte stream anywhere.

use bytes::BytesMut;
use korv_proto::{Frame, KorvCodec, Request, RequestId, Response, StatusCode, Verb};
use proptest::prelude::*;
use serde_json::Value;
use tokio_util::codec::{Decoder, Encoder};

fn request_id() -> impl Strategy<Value = RequestId> {
    prop_oneof![
        any::<i64>().prop_map(RequestId::from),
        any::<u64>().prop_map(RequestId::from),
        ".{0,20}".prop_map(RequestId::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        // Every ASCII byte, controls, quotes and backslashes included, in
        // strings long enough to cross eight-byte words.
        "[\\x00-\\x7f]{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn verb() -> impl Strategy<Value = Verb> {
    prop::sample::select(Verb::ALL.to_vec())
}

fn request() -> impl Strategy<Value = Request> {
    (
        request_id(),
        verb(),
        "/[^\u{0}]{0,30}",
        json_value(),
        prop::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
    )
        .prop_map(|(id, verb, resource, body, headers)| {
            let body = if verb.requires_body() && body.is_null() {
                Value::Bool(true)
            } else {
                body
            };
            let mut request = Request::new(id, verb, resource).with_body(&body).unwrap();
            request.headers = headers;
            request
        })
}

fn response() -> impl Strategy<Value = Response> {
    (
        prop::option::of(request_id()),
        100u16..=599,
        json_value(),
        prop::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
    )
        .prop_map(|(id, code, body, headers)| {
            let mut response = Response::new(id, StatusCode::from_u16(code).unwrap(), body);
            response.headers = headers;
            response
        })
}

fn one_payload(wire: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::from(wire);
    match KorvCodec::new().decode(&mut buf).unwrap() {
        Some(Frame::Payload(payload)) => payload.to_vec(),
        other => panic!("expected one payload, got {other:?}"),
    }
}

proptest! {
    #[test]
    fn any_request_round_trips(request in request()) {
        let mut wire = BytesMut::new();
        KorvCodec::new().encode(&request, &mut wire).unwrap();
        let decoded = Request::from_payload(&one_payload(&wire)).unwrap();
        prop_assert_eq!(decoded, request);
    }

    #[test]
    fn any_response_round_trips(response in response()) {
        let mut wire = BytesMut::new();
        KorvCodec::new().encode(&response, &mut wire).unwrap();
        let decoded = Response::from_payload(&one_payload(&wire)).unwrap();
        prop_assert_eq!(decoded, response);
    }

    #[test]
    fn any_response_encodes_as_serde_json_writes_it(
        response in response(),
        watch in prop::option::of((any::<u64>(), any::<bool>())),
    ) {
        // The codec writes responses by hand (a faster string escape); the
        // bytes must be `Response`'s own `Serialize`, field for field.
        let response = match watch {
            Some((seq, more)) => response.in_watch(seq, more),
            None => response,
        };
        let mut wire = BytesMut::new();
        KorvCodec::new().encode(&response, &mut wire).unwrap();
        let ours = String::from_utf8(one_payload(&wire)).unwrap();
        prop_assert_eq!(ours, serde_json::to_string(&response).unwrap());
    }

    #[test]
    fn any_request_encodes_as_serde_json_writes_it(request in request()) {
        // The codec writes requests by hand too; the bytes must be
        // `Request`'s own `Serialize`, field for field.
        let mut wire = BytesMut::new();
        KorvCodec::new().encode(&request, &mut wire).unwrap();
        let ours = String::from_utf8(one_payload(&wire)).unwrap();
        prop_assert_eq!(ours, serde_json::to_string(&request).unwrap());
    }

    #[test]
    fn any_split_decodes_the_same_frames(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        // Frames of up to 39 bytes, with a maximum of 24: some are oversized,
        // some empty; the codec must yield the same items however the bytes arrive.
        let mut wire = Vec::new();
        for payload in &payloads {
            wire.extend((payload.len() as u32).to_be_bytes());
            wire.extend(payload);
        }
        let make = || KorvCodec::builder().max_frame(24).build();
        let mut whole = Vec::new();
        let mut codec = make();
        let mut buf = BytesMut::from(&wire[..]);
        while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
            whole.push(frame);
        }
        prop_assert_eq!(whole.len(), payloads.len());

        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut split = Vec::new();
        let mut codec = make();
        let mut buf = BytesMut::new();
        let mut start = 0;
        for point in points {
            buf.extend_from_slice(&wire[start..point]);
            start = point;
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                split.push(frame);
            }
        }
        while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
            split.push(frame);
        }
        prop_assert_eq!(split, whole);
    }
}
