//! What a client reads: arbitrary bytes as a response payload, and as the
//! byte stream a client decodes.
//!
//! korv-client's reading loop (`korv-client/src/mux.rs`, `read_loop`) is
//! private, so this target drives the public korv-proto pieces it is made of,
//! in the same order: `KorvCodec` with the client's maximum frame,
//! `Response::from_payload` on each payload, then the id lookup
//! (`request_id.as_u64()`); an oversized or empty frame ends the stream.
//!
//! Invariants checked: nothing panics; a parsed response has a code in
//! 100..=599 and re-encodes to a frame that parses to the same response; the
//! id accessors agree with each other.
#![no_main]

use bytes::BytesMut;
use korv_proto::{Frame, KorvCodec, RequestId, Response};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

/// The client's maximum frame in the stream half: small, so that oversized
/// frames are reachable.
const CLIENT_MAX: usize = 1024;

fuzz_target!(|data: &[u8]| {
    // The whole input as one response payload.
    if let Ok(response) = Response::from_payload(data) {
        check_response(&response);
    }
    // The whole input as the stream a client reads, as mux.rs's read loop does.
    let mut codec = KorvCodec::builder().max_frame(CLIENT_MAX).build();
    let mut wire = BytesMut::from(data);
    loop {
        let frame = match codec.decode(&mut wire).expect("only I/O can fail") {
            Some(frame) => frame,
            None => match codec.decode_eof(&mut wire).expect("only I/O can fail") {
                Some(frame) => frame,
                None => break,
            },
        };
        match frame {
            Frame::Payload(payload) => {
                assert!(!payload.is_empty() && payload.len() <= CLIENT_MAX);
                let Ok(response) = Response::from_payload(&payload) else {
                    continue; // the client drops a malformed response
                };
                check_response(&response);
                // The client's lookup key; a response without one is dropped.
                let _key: Option<u64> = response.request_id.as_ref().and_then(RequestId::as_u64);
            }
            Frame::Oversized { len } => {
                assert!(len as usize > CLIENT_MAX);
                break; // the client fails every request and closes
            }
            Frame::Empty => break, // likewise
        }
    }
});

fn check_response(response: &Response) {
    let code = response.code.as_u16();
    assert!((100..=599).contains(&code), "code {code}");
    if let Some(id) = &response.request_id {
        check_id(id);
    }
    let _ = response.message();
    // Re-encoded, it parses to the same response.
    let mut codec = KorvCodec::builder().max_frame(usize::MAX).build();
    let mut wire = BytesMut::new();
    codec
        .encode(response, &mut wire)
        .expect("a parsed response encodes");
    let Some(Frame::Payload(payload)) = codec.decode(&mut wire).expect("decodes") else {
        panic!("an encoded response is one payload frame")
    };
    assert!(wire.is_empty());
    let again = Response::from_payload(&payload)
        .unwrap_or_else(|err| panic!("a re-encoded response does not parse: {err}"));
    assert_eq!(&again, response);
}

fn check_id(id: &RequestId) {
    match (id.as_i64(), id.as_u64(), id.as_str()) {
        (Some(signed), unsigned, None) => {
            assert_eq!(unsigned, u64::try_from(signed).ok());
        }
        (None, Some(unsigned), None) => assert!(unsigned > i64::MAX as u64),
        (None, None, Some(_)) => {}
        other => panic!("inconsistent id accessors: {other:?}"),
    }
    // Its JSON text parses back to the same id.
    let text = id.to_string();
    let value: serde_json::Value = serde_json::from_str(&text).expect("an id is JSON");
    assert_eq!(RequestId::from_json(&value).as_ref(), Some(id));
}
