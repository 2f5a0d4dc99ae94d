//! korv 0.2.1's format: gzip members read from a byte stream cut anywhere,
//! bombs, corrupt and truncated members, and the answers it gets.

use std::io::Write;

use bytes::BytesMut;
use flate2::Compression;
use flate2::write::GzEncoder;
use korv_proto::legacy::{GZIP_MAGIC, LEGACY_MAX_PACKET, TOO_LARGE_FOR_LEGACY};
use korv_proto::{LegacyCodec, LegacyFrame, Request, RequestId, Response, StatusCode, Verb};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio_util::codec::{Decoder, Encoder};

/// What korv 0.2.1's client sends for `get('/hello')`: Python's
/// `gzip.compress(json.dumps(request, separators=[',', ':']).encode(), mtime=0)`.
const PYTHON_GET_HELLO: &str = "1f8b0800000000000203ab56ca4c51b232343733313530353230d7333432363135d3512a4b2d4a52b25272770d51d2512a4a2dce2f2d4a4e050ae867a4e6e4e403c592f2532a95acf24a73726a016ce8d4a845000000";

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex"))
        .collect()
}

fn gzip(content: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::new(level));
    encoder.write_all(content).expect("in memory");
    encoder.finish().expect("in memory")
}

/// Decodes `wire` fed in `pieces`, then signals EOF.
fn decode_pieces(codec: &mut LegacyCodec, wire: &[u8], pieces: &[usize]) -> Vec<LegacyFrame> {
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    for &piece in pieces {
        let end = (at + piece).min(wire.len());
        buffer.extend_from_slice(&wire[at..end]);
        at = end;
        while let Some(frame) = codec.decode(&mut buffer).expect("only I/O fails") {
            frames.push(frame);
        }
    }
    buffer.extend_from_slice(&wire[at..]);
    while let Some(frame) = codec.decode_eof(&mut buffer).expect("only I/O fails") {
        frames.push(frame);
    }
    assert!(buffer.is_empty(), "everything is consumed at EOF");
    frames
}

fn decode_all(wire: &[u8]) -> Vec<LegacyFrame> {
    decode_pieces(&mut LegacyCodec::new(), wire, &[wire.len()])
}

fn payload(content: &[u8]) -> LegacyFrame {
    LegacyFrame::Payload(bytes::Bytes::copy_from_slice(content))
}

fn is_corrupt(frame: &LegacyFrame) -> bool {
    matches!(frame, LegacyFrame::Corrupt { .. })
}

#[test]
fn reads_what_korv_0_2_1_sends() {
    let frames = decode_all(&unhex(PYTHON_GET_HELLO));
    assert_eq!(
        frames,
        [payload(
            br#"{"id":1764505207.123456,"verb":"GET","resource":"/hello","body":null}"#
        )]
    );
    let LegacyFrame::Payload(content) = &frames[0] else {
        unreachable!()
    };
    let request = Request::from_legacy_payload(content).expect("a valid request");
    assert_eq!(request.verb, Verb::Get);
    assert_eq!(request.resource, "/hello");
    assert_eq!(request.id.to_string(), "1764505207.123456");
    assert!(request.body.is_none());
}

#[test]
fn members_back_to_back_in_one_chunk_or_one_byte_at_a_time() {
    let mut wire = Vec::new();
    for n in 0..5 {
        wire.extend(gzip(format!("{{\"n\":{n}}}").as_bytes(), 6));
    }
    let whole = decode_all(&wire);
    assert_eq!(whole.len(), 5);
    assert_eq!(whole[4], payload(br#"{"n":4}"#));
    let bytewise = decode_pieces(&mut LegacyCodec::new(), &wire, &vec![1; wire.len()]);
    assert_eq!(whole, bytewise);
}

#[test]
fn header_with_optional_fields_is_skipped() {
    // FEXTRA, FNAME, FCOMMENT and FHCRC, as other gzip writers may set them.
    let plain = gzip(b"{\"a\":1}", 6);
    let mut header = vec![0x1f, 0x8b, 8, 0x04 | 0x08 | 0x10 | 0x02, 0, 0, 0, 0, 0, 3];
    header.extend([3, 0, b'x', b'y', b'z']);
    header.extend(b"name.json\0");
    header.extend(b"a comment\0");
    let mut crc = flate2::Crc::new();
    crc.update(&header);
    header.extend((crc.sum() as u16).to_le_bytes());
    let mut wire = header;
    wire.extend(&plain[10..]);
    assert_eq!(decode_all(&wire), [payload(b"{\"a\":1}")]);
    // The same with a wrong header checksum.
    let at = wire.len() - plain.len() + 10 - 1;
    wire[at] ^= 0xff;
    let frames = decode_all(&wire);
    assert!(frames.len() == 1 && is_corrupt(&frames[0]), "{frames:?}");
}

#[test]
fn content_up_to_the_maximum_is_read_one_byte_more_is_refused() {
    let max = 1000;
    let exact = vec![b'a'; max];
    let mut codec = LegacyCodec::builder().max_frame(max).build();
    let wire = gzip(&exact, 6);
    assert_eq!(
        decode_pieces(&mut codec, &wire, &[wire.len()]),
        [payload(&exact)]
    );
    let mut codec = LegacyCodec::builder().max_frame(max).build();
    let wire = gzip(&[b'a'; 1001], 6);
    assert_eq!(
        decode_pieces(&mut codec, &wire, &[wire.len()]),
        [LegacyFrame::Oversized { max_frame: max }]
    );
}

#[test]
fn a_gzip_bomb_is_refused_long_before_its_end() {
    // 64 MiB of zeros compress to about 64 KiB; the maximum frame is 1 MiB.
    let bomb = gzip(&vec![0; 64 << 20], 9);
    let max = 1 << 20;
    let mut codec = LegacyCodec::builder().max_frame(max).build();
    let mut buffer = BytesMut::new();
    let mut fed = 0;
    let mut verdict = None;
    for chunk in bomb.chunks(256) {
        buffer.extend_from_slice(chunk);
        fed += chunk.len();
        if let Some(frame) = codec.decode(&mut buffer).expect("only I/O fails") {
            verdict = Some(frame);
            break;
        }
    }
    assert_eq!(verdict, Some(LegacyFrame::Oversized { max_frame: max }));
    // Deflate expands at most about 1032:1, so 1 MiB of zeros needs about
    // 1 KiB of input: the refusal comes after a small part of the member.
    assert!(fed < bomb.len() / 8, "fed {fed} of {} bytes", bomb.len());
    assert!(buffer.is_empty());
    // The stream is over: what follows is discarded, nothing more is decoded.
    let mut rest = BytesMut::from(&gzip(b"{}", 6)[..]);
    assert_eq!(codec.decode(&mut rest).expect("only I/O fails"), None);
    assert!(rest.is_empty());
    assert_eq!(codec.decode_eof(&mut rest).expect("only I/O fails"), None);
}

#[test]
fn a_truncated_member_is_reported_at_eof() {
    let wire = gzip(br#"{"id":1,"verb":"GET","resource":"/a"}"#, 6);
    for cut in 1..wire.len() {
        let frames = decode_all(&wire[..cut]);
        assert!(
            frames.len() == 1 && is_corrupt(&frames[0]),
            "cut at {cut}: {frames:?}"
        );
    }
}

fn good_content() -> Vec<u8> {
    br#"{"id":1,"verb":"GET","resource":"/a"}"#.to_vec()
}

#[test]
fn corrupt_members_are_reported_once_and_end_the_stream() {
    let good = gzip(&good_content(), 6);
    // Not gzip at all (a version-1 frame), a wrong method, reserved flags.
    for bad in [
        b"\x00\x00\x00\x02{}".to_vec(),
        b"\x1f\x00".to_vec(),
        [&[0x1f, 0x8b, 7][..], &good[3..]].concat(),
        [&[0x1f, 0x8b, 8, 0x80][..], &good[4..]].concat(),
    ] {
        let mut wire = bad.clone();
        wire.extend(&good);
        let frames = decode_all(&wire);
        assert!(
            frames.len() == 1 && is_corrupt(&frames[0]),
            "{bad:?}: {frames:?}"
        );
    }
    // A flipped bit anywhere after the header: a bad deflate stream, a
    // checksum or size that does not match, or a member that does not end.
    for at in 10..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        let mut wire = bad;
        wire.extend(&good);
        let frames = decode_all(&wire);
        // A bit that changes nothing leaves two good members; otherwise
        // the first member is reported corrupt and nothing follows it.
        let first_good = frames.first() == Some(&payload(&good_content()));
        let expected_len = if first_good { 2 } else { 1 };
        assert!(
            frames.len() == expected_len
                && (first_good || is_corrupt(&frames[0]))
                && (!first_good || frames[1] == payload(&good_content())),
            "bit flipped at {at}: {frames:?}"
        );
    }
}

#[test]
fn an_empty_member_is_an_empty_payload_which_is_a_400_with_id_zero() {
    assert_eq!(decode_all(&gzip(b"", 6)), [payload(b"")]);
    let rejection = Request::from_legacy_payload(b"").expect_err("not a request");
    let mut codec = LegacyCodec::new();
    let mut wire = BytesMut::new();
    codec
        .encode(rejection.into_response(), &mut wire)
        .expect("encodes");
    let answer = answer_of(&mut codec, &mut wire);
    assert_eq!(answer["request_id"], json!(0));
    assert_eq!(answer["code"], json!(400));
}

fn answer_of(codec: &mut LegacyCodec, wire: &mut BytesMut) -> Value {
    let Some(LegacyFrame::Payload(content)) = codec.decode(wire).expect("only I/O fails") else {
        panic!("one member")
    };
    assert!(wire.is_empty(), "exactly one member");
    serde_json::from_slice(&content).expect("JSON")
}

#[test]
fn legacy_requests_keep_float_ids_and_are_validated_as_version_1() {
    let request =
        Request::from_legacy_payload(br#"{"id":1.5e3,"verb":"STORE","resource":"/n","body":{}}"#)
            .expect("valid");
    assert_eq!(request.id.to_string(), "1.5e3");
    // Integers stay integers, strings strings.
    let request =
        Request::from_legacy_payload(br#"{"id":7,"verb":"GET","resource":"/n"}"#).expect("valid");
    assert_eq!(request.id, RequestId::from(7));
    let request =
        Request::from_legacy_payload(br#"{"id":"x","verb":"GET","resource":"/n"}"#).expect("valid");
    assert_eq!(request.id, RequestId::from("x"));
    // The same 400s as version 1, with the id.
    let rejection =
        Request::from_legacy_payload(br#"{"id":0.25,"verb":"STORE","resource":"/n","body":null}"#)
            .expect_err("STORE needs a body");
    assert_eq!(
        rejection.request_id.map(|id| id.to_string()),
        Some("0.25".into())
    );
    let rejection = Request::from_legacy_payload(br#"{"id":0.25,"verb":"WATCH","resource":"/n"}"#)
        .expect_err("no watches in this format");
    assert_eq!(
        rejection.request_id.map(|id| id.to_string()),
        Some("0.25".into())
    );
    // An id that is not a number or a string cannot be echoed.
    let rejection = Request::from_legacy_payload(br#"{"id":null,"verb":"GET","resource":"/n"}"#)
        .expect_err("bad id");
    assert_eq!(rejection.request_id, None);
    // Version 1 still refuses float ids.
    assert!(Request::from_payload(br#"{"id":1.5,"verb":"GET","resource":"/n"}"#).is_err());
}

#[test]
fn answers_echo_the_id_text_and_carry_the_server_clock() {
    let mut codec = LegacyCodec::new();
    let mut wire = BytesMut::new();
    let id = RequestId::from_number_text("1764505207.1234567").expect("a number");
    codec
        .encode(
            Response::new(id, StatusCode::OK, json!({"msg": "Hello World!"})),
            &mut wire,
        )
        .expect("encodes");
    let Some(LegacyFrame::Payload(content)) = codec.decode(&mut wire).expect("decodes") else {
        panic!("one member")
    };
    let text = std::str::from_utf8(&content).expect("UTF-8");
    assert!(
        text.contains(
            r#""request_id":1764505207.1234567,"code":200,"body":{"msg":"Hello World!"}"#
        ),
        "{text}"
    );
    let answer: Value = serde_json::from_str(text).expect("JSON");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let clock = answer["id"].as_f64().expect("a float");
    assert!((now - clock).abs() < 60.0, "{clock} is not now ({now})");
}

#[test]
fn tracebacks_are_one_string_in_a_500() {
    let mut codec = LegacyCodec::new();
    let mut wire = BytesMut::new();
    let body = json!({"message": "handler error: boom", "traceback": ["boom", "caused by: disk"]});
    codec
        .encode(
            Response::new(
                RequestId::from(3),
                StatusCode::INTERNAL_SERVER_ERROR,
                body.clone(),
            ),
            &mut wire,
        )
        .expect("encodes");
    let answer = answer_of(&mut codec, &mut wire);
    assert_eq!(answer["traceback"], Value::Null);
    assert_eq!(answer["body"]["traceback"], json!("boom\ncaused by: disk"));
    assert_eq!(answer["body"]["message"], json!("handler error: boom"));
    // Other codes are sent as they are.
    codec
        .encode(
            Response::new(RequestId::from(4), StatusCode::OK, body.clone()),
            &mut wire,
        )
        .expect("encodes");
    assert_eq!(answer_of(&mut codec, &mut wire)["body"], body);
}

/// Text that does not compress: a xorshift sequence in hex.
fn incompressible(len: usize) -> String {
    let mut state = 0x9e37_79b9_u32;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            char::from_digit(state % 16, 16).expect("a digit")
        })
        .collect()
}

#[test]
fn an_answer_that_does_not_fit_in_one_packet_becomes_a_500() {
    let mut codec = LegacyCodec::new();
    let mut wire = BytesMut::new();
    // 20 KB that compress well fit; 100 KB that do not compress do not.
    let fits = "x".repeat(20_000);
    codec
        .encode(
            Response::new(RequestId::from(1), StatusCode::OK, json!({ "text": fits })),
            &mut wire,
        )
        .expect("encodes");
    assert!(wire.len() <= LEGACY_MAX_PACKET);
    assert_eq!(
        answer_of(&mut codec, &mut wire)["body"]["text"],
        json!(fits)
    );

    let id = RequestId::from_number_text("12.5").expect("a number");
    codec
        .encode(
            Response::new(
                id,
                StatusCode::OK,
                json!({ "text": incompressible(100_000) }),
            ),
            &mut wire,
        )
        .expect("encodes");
    assert!(wire.len() <= LEGACY_MAX_PACKET);
    let answer = answer_of(&mut codec, &mut wire);
    assert_eq!(answer["request_id"], json!(12.5));
    assert_eq!(answer["code"], json!(500));
    assert_eq!(answer["body"], json!({ "message": TOO_LARGE_FOR_LEGACY }));

    // A smaller packet, and a maximum frame below the content, also count.
    let mut small = LegacyCodec::builder().max_message(600).build();
    small
        .encode(
            Response::new(
                RequestId::from(2),
                StatusCode::OK,
                json!({ "text": incompressible(1000) }),
            ),
            &mut wire,
        )
        .expect("encodes");
    assert!(wire.len() <= 600);
    assert_eq!(answer_of(&mut small, &mut wire)["code"], json!(500));
    let mut tiny_frame = LegacyCodec::builder().max_frame(200).build();
    tiny_frame
        .encode(
            Response::new(RequestId::from(2), StatusCode::OK, json!("y".repeat(300))),
            &mut wire,
        )
        .expect("encodes");
    let answer = answer_of(&mut LegacyCodec::new(), &mut wire);
    assert_eq!(answer["code"], json!(500));
    assert_eq!(answer["request_id"], json!(2));
}

#[test]
fn an_unreadable_request_is_answered_with_id_zero() {
    let mut codec = LegacyCodec::new();
    let mut wire = BytesMut::new();
    codec
        .encode(
            Response::error(None, StatusCode::BAD_REQUEST, "not JSON"),
            &mut wire,
        )
        .expect("encodes");
    let answer = answer_of(&mut codec, &mut wire);
    assert_eq!(answer["request_id"], json!(0));
    assert_eq!(answer["body"]["message"], json!("not JSON"));
}

#[test]
fn requests_are_written_as_korv_0_2_1_writes_them() {
    let mut codec = LegacyCodec::new();
    let mut wire = BytesMut::new();
    codec
        .encode(Request::new(9, Verb::Delete, "/notes/1"), &mut wire)
        .expect("encodes");
    assert_eq!(&wire[..2], &GZIP_MAGIC);
    let Some(LegacyFrame::Payload(content)) = codec.decode(&mut wire).expect("decodes") else {
        panic!("one member")
    };
    assert_eq!(
        &content[..],
        br#"{"id":9,"verb":"DELETE","resource":"/notes/1","body":null}"#
    );
    let request = Request::new(10, Verb::Store, "/notes/1")
        .with_body(&json!({"text": incompressible(80_000)}))
        .expect("serializable");
    let err = codec.encode(&request, &mut wire).expect_err("too large");
    assert!(matches!(
        err,
        korv_proto::ProtoError::FrameTooLarge { max, .. } if max == LEGACY_MAX_PACKET
    ));
    assert!(wire.is_empty(), "nothing is written");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Members written at any level (and by this codec) and cut anywhere
    /// decode to the same contents.
    #[test]
    fn members_cut_anywhere_decode_the_same(
        contents in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..2000),
                "[a-c]{0,5000}".prop_map(String::into_bytes),
            ],
            1..6,
        ),
        levels in prop::collection::vec(0u32..=9, 6),
        pieces in prop::collection::vec(0usize..700, 0..40),
    ) {
        let mut wire = Vec::new();
        for (content, level) in contents.iter().zip(&levels) {
            wire.extend(gzip(content, *level));
        }
        let expected: Vec<LegacyFrame> = contents.iter().map(|c| payload(c)).collect();
        prop_assert_eq!(&decode_all(&wire), &expected);
        prop_assert_eq!(&decode_pieces(&mut LegacyCodec::new(), &wire, &pieces), &expected);
    }

    /// Whatever follows the magic bytes, the decoder never panics, never
    /// returns more than the maximum, and reports a broken stream once.
    #[test]
    fn arbitrary_bytes_never_break_the_decoder(
        tail in prop::collection::vec(any::<u8>(), 0..600),
        pieces in prop::collection::vec(0usize..50, 0..20),
    ) {
        let mut wire = GZIP_MAGIC.to_vec();
        wire.extend(&tail);
        let max = 256;
        let mut codec = LegacyCodec::builder().max_frame(max).build();
        let frames = decode_pieces(&mut codec, &wire, &pieces);
        let broken = frames
            .iter()
            .filter(|f| !matches!(f, LegacyFrame::Payload(_)))
            .count();
        prop_assert!(broken <= 1);
        for frame in &frames {
            if let LegacyFrame::Payload(content) = frame {
                prop_assert!(content.len() <= max);
            }
        }
    }

    /// Any response this codec encodes fits the packet and decodes to the
    /// same code and id, or to the 500 that replaces it.
    #[test]
    fn encoded_answers_fit_and_decode(
        id in prop_oneof![
            any::<i64>().prop_map(RequestId::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| RequestId::from_number_text(&serde_json::to_string(&f).expect("finite")).expect("a number")),
        ],
        text in "[a-z0-9]{0,40000}",
        max_message in 512usize..40_000,
    ) {
        let mut codec = LegacyCodec::builder().max_message(max_message).build();
        let mut wire = BytesMut::new();
        codec
            .encode(Response::new(id.clone(), StatusCode::OK, json!({ "text": text })), &mut wire)
            .expect("encodes");
        prop_assert!(wire.len() <= max_message);
        let answer = answer_of(&mut LegacyCodec::new(), &mut wire);
        let expected: Value = serde_json::from_str(&id.to_string()).expect("JSON");
        match answer["code"].as_u64() {
            Some(200) => {
                prop_assert_eq!(&answer["request_id"], &expected);
                prop_assert_eq!(&answer["body"]["text"], &json!(text));
            }
            Some(500) => prop_assert_eq!(&answer["body"]["message"], &json!(TOO_LARGE_FOR_LEGACY)),
            other => prop_assert!(false, "code {:?}", other),
        }
    }
}
