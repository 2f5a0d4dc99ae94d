//! The hostile-input corpus: malformed frames and payloads, each driven through
//! the per-stream loop over an in-memory pipe (no SSH). Every frame, malformed or
//! not, gets exactly one answer, with the exact code and the exact `request_id`
//! (null when the id cannot be read: an empty, oversized or unparsable frame), and
//! the stream still serves a valid `GET /hello` afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use korv_server::routing::get;
use korv_server::{
    BodyError, KorvServer, Limits, Request, RequestId, Response, StatusCode, StreamService,
};
use korv_testkit::frame::frame_bytes;
use korv_testkit::pipe::Pipe;
use serde_json::{Value, json};

/// The server's default maximum payload: 8 MiB.
const MAX: usize = 8 * 1024 * 1024;

/// Sends `len` bytes of filler in chunks of at most 1 MiB, so that a huge
/// payload never exists in memory on this side either. The filler is a run of
/// valid `GET /hello` frames with id 666: a server that interpreted a skipped
/// payload would answer them, and `assert_alive` would see it.
async fn send_filler(pipe: &mut Pipe, len: u64) {
    let chunk = filler_chunk();
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap();
        pipe.send_raw(&chunk[..n]).await;
        left -= n as u64;
    }
}

/// The length prefix alone.
fn header(len: u32) -> [u8; 4] {
    len.to_be_bytes()
}

/// 1 MiB of back-to-back valid `GET /hello` frames (id 666).
fn filler_chunk() -> Vec<u8> {
    let decoy = frame_bytes(br#"{"id":666,"verb":"GET","resource":"/hello"}"#);
    decoy.iter().copied().cycle().take(1 << 20).collect()
}

/// Echoes the body (parsed by the handler) and the headers.
async fn echo(req: Request) -> Result<Value, BodyError> {
    let body: Value = req.body()?;
    Ok(json!({"body": body, "headers": req.headers()}))
}

fn app_with(limits: Limits) -> StreamService<()> {
    KorvServer::new()
        .limits(limits)
        .route(
            "/hello",
            get(|_req: Request| async { (200, json!({"msg": "Hello World!"})) }),
        )
        .route("/echo", get(echo).store(echo).update(echo))
        .into_stream_service()
}

/// The server with the default limits (8 MiB frames).
fn app() -> StreamService<()> {
    app_with(Limits {
        request_timeout: Duration::from_secs(30),
        ..Limits::default()
    })
}

/// The stream still works: a valid `GET /hello` gets `200` with its own id and
/// the right body, and it is the very next answer (no stray answer in between).
async fn assert_alive(pipe: &mut Pipe) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = format!("alive-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let payload = json!({"id": id, "verb": "GET", "resource": "/hello"}).to_string();
    pipe.send_payload(payload.as_bytes()).await;
    let response = pipe.recv().await;
    assert_eq!(
        (response.request_id.clone(), response.code),
        (Some(RequestId::from(id.as_str())), StatusCode::OK),
        "the stream must still answer a valid request; got {response:?}"
    );
    assert_eq!(response.body, json!({"msg": "Hello World!"}));
}

/// Asserts one answer's code and id, and that a framework error has a message.
fn assert_answer(response: &Response, code: StatusCode, id: Option<RequestId>) {
    assert_eq!(
        (response.code, response.request_id.clone()),
        (code, id),
        "unexpected answer {response:?}"
    );
    if code.as_u16() >= 400 {
        assert!(
            response.message().is_some_and(|m| !m.is_empty()),
            "an error has a message: {response:?}"
        );
    }
}

/// Sends `payload` as one frame on a fresh stream with the default limits,
/// expects exactly one answer with `code` and `id`, checks that the stream
/// still works, and that nothing else arrives before the server closes.
async fn answered(payload: &[u8], code: StatusCode, id: Option<RequestId>) -> Response {
    answered_by(&app(), payload, code, id).await
}

async fn answered_by(
    service: &StreamService<()>,
    payload: &[u8],
    code: StatusCode,
    id: Option<RequestId>,
) -> Response {
    let mut pipe = Pipe::open(service);
    pipe.send_payload(payload).await;
    let response = pipe.recv().await;
    assert_answer(&response, code, id);
    assert_alive(&mut pipe).await;
    assert_eq!(
        pipe.finish().await,
        Vec::new(),
        "exactly one answer per frame"
    );
    response
}

/// A `400` with `id`; returns the message.
async fn rejected(payload: &[u8], id: Option<RequestId>) -> String {
    let response = answered(payload, StatusCode::BAD_REQUEST, id).await;
    response.message().unwrap().to_owned()
}

fn id(n: i64) -> Option<RequestId> {
    Some(RequestId::from(n))
}

/// `{"id":7,"verb":"GET","resource":"/hello", <member>}`.
fn hello_with(member: &str) -> Vec<u8> {
    format!(r#"{{"id":7,"verb":"GET","resource":"/hello",{member}}}"#).into_bytes()
}

fn nested(depth: usize, open: &str, close: &str) -> String {
    format!("{}{}", open.repeat(depth), close.repeat(depth))
}

// ---------------------------------------------------------------- frames ----

#[tokio::test]
async fn a_zero_length_frame_gets_400_with_null_id() {
    let mut pipe = Pipe::open(&app());
    pipe.send_raw(&header(0)).await;
    let response = pipe.recv().await;
    assert_answer(&response, StatusCode::BAD_REQUEST, None);
    assert_alive(&mut pipe).await;
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn ten_thousand_zero_length_frames_in_one_write_get_ten_thousand_400s() {
    let mut pipe = Pipe::open(&app());
    pipe.send_raw(&[0; 4 * 10_000]).await;
    for _ in 0..10_000 {
        assert_answer(&pipe.recv().await, StatusCode::BAD_REQUEST, None);
    }
    assert_alive(&mut pipe).await;
    assert!(pipe.finish().await.is_empty());
}

/// Announces `len`, checks the 413 arrives before any payload byte is sent
/// ("as soon as it has read the length"), then sends the whole payload in
/// 1 MiB chunks and checks that none of it was taken for frames.
async fn oversized_is_413_and_skipped(len: u32) {
    let mut pipe = Pipe::open(&app());
    pipe.send_raw(&header(len)).await;
    let response = pipe.recv().await;
    assert_answer(&response, StatusCode::PAYLOAD_TOO_LARGE, None);
    assert_eq!(response.body["max_frame_bytes"], json!(MAX));
    send_filler(&mut pipe, u64::from(len)).await;
    assert_alive(&mut pipe).await;
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn a_length_of_8_mib_plus_1_gets_413_and_its_payload_is_skipped() {
    oversized_is_413_and_skipped(MAX as u32 + 1).await;
}

#[tokio::test]
async fn a_length_of_16_mib_gets_413_and_its_payload_is_skipped() {
    oversized_is_413_and_skipped(16 << 20).await;
}

#[tokio::test]
async fn a_length_of_1_gib_gets_413_and_its_payload_is_skipped() {
    oversized_is_413_and_skipped(1 << 30).await;
}

#[tokio::test]
async fn a_length_of_4_gib_minus_1_gets_413_and_its_payload_is_skipped() {
    oversized_is_413_and_skipped(u32::MAX).await;
}

#[tokio::test]
async fn an_oversized_frame_with_its_payload_in_the_same_write_gets_413() {
    let mut pipe = Pipe::open(&app());
    let mut bytes = header(MAX as u32 + 1).to_vec();
    bytes.extend(filler_chunk().iter().copied().cycle().take(MAX + 1));
    bytes.extend(frame_bytes(br#"{"id":1,"verb":"GET","resource":"/hello"}"#));
    pipe.send_raw(&bytes).await;
    assert_answer(&pipe.recv().await, StatusCode::PAYLOAD_TOO_LARGE, None);
    assert_answer(&pipe.recv().await, StatusCode::OK, id(1));
    assert_alive(&mut pipe).await;
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn a_frame_of_exactly_8_mib_is_not_oversized() {
    let prefix = r#"{"id":8,"verb":"GET","resource":"/hello","pad":""#;
    let pad = MAX - prefix.len() - 2;
    let payload = format!("{prefix}{}\"}}", "p".repeat(pad));
    assert_eq!(payload.len(), MAX);
    answered(payload.as_bytes(), StatusCode::OK, id(8)).await;
}

#[tokio::test]
async fn a_body_of_7_9_mib_is_accepted_and_echoed() {
    let text = "b".repeat(7_900 * 1024);
    let payload = json!({"id": 79, "verb": "STORE", "resource": "/echo", "body": text}).to_string();
    assert!(payload.len() < MAX);
    let response = answered(payload.as_bytes(), StatusCode::OK, id(79)).await;
    assert_eq!(response.body["body"].as_str(), Some(text.as_str()));
}

#[tokio::test]
async fn a_truncated_frame_then_eof_is_dropped_after_the_earlier_answers() {
    let mut pipe = Pipe::open(&app());
    assert_alive(&mut pipe).await;
    pipe.send_payload(br#"{"id":1,"verb":"GET","resource":"/hello"}"#)
        .await;
    pipe.send_payload(br#"{"id":2,"verb":"GET","resource":"/nowhere"}"#)
        .await;
    // Length 100, then 10 bytes, then EOF.
    pipe.send_raw(&header(100)).await;
    pipe.send_raw(br#"{"id":3,"v"#).await;
    let mut rest = pipe.finish().await;
    rest.sort_by_key(|r| r.request_id.clone());
    assert_eq!(rest.len(), 2, "only the two complete frames: {rest:?}");
    assert_answer(&rest[0], StatusCode::OK, id(1));
    assert_answer(&rest[1], StatusCode::NOT_FOUND, id(2));
}

async fn truncated_length_prefix(bytes: &[u8]) {
    let mut pipe = Pipe::open(&app());
    assert_alive(&mut pipe).await;
    pipe.send_payload(br#"{"id":1,"verb":"GET","resource":"/hello"}"#)
        .await;
    pipe.send_raw(bytes).await;
    let rest = pipe.finish().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_answer(&rest[0], StatusCode::OK, id(1));
}

#[tokio::test]
async fn a_1_byte_length_prefix_then_eof_closes_cleanly() {
    truncated_length_prefix(&[0]).await;
}

#[tokio::test]
async fn a_2_byte_length_prefix_then_eof_closes_cleanly() {
    truncated_length_prefix(&[0, 0]).await;
}

#[tokio::test]
async fn a_3_byte_length_prefix_then_eof_closes_cleanly() {
    truncated_length_prefix(&[0, 0, 0]).await;
}

#[tokio::test]
async fn an_oversized_frame_cut_short_by_eof_gets_413_and_a_clean_close() {
    let mut pipe = Pipe::open(&app());
    assert_alive(&mut pipe).await;
    pipe.send_raw(&header(1 << 30)).await;
    send_filler(&mut pipe, 3 << 20).await;
    let rest = pipe.finish().await;
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_answer(&rest[0], StatusCode::PAYLOAD_TOO_LARGE, None);
}

#[tokio::test]
async fn a_valid_request_written_one_byte_per_write_gets_its_answer() {
    let mut pipe = Pipe::open(&app());
    for byte in frame_bytes(br#"{"id":"slow","verb":"GET","resource":"/hello"}"#) {
        pipe.send_raw(&[byte]).await;
        pipe.flush().await;
    }
    assert_answer(
        &pipe.recv().await,
        StatusCode::OK,
        Some(RequestId::from("slow")),
    );
    assert_alive(&mut pipe).await;
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn many_bad_frames_then_a_good_one_in_one_write_each_get_one_answer() {
    let bad: Vec<(Vec<u8>, StatusCode, Option<RequestId>)> = vec![
        (header(0).to_vec(), StatusCode::BAD_REQUEST, None),
        (frame_bytes(b"{{{"), StatusCode::BAD_REQUEST, None),
        (frame_bytes(b"\xff\xfe"), StatusCode::BAD_REQUEST, None),
        (
            frame_bytes(b"\xef\xbb\xbf{}"),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (frame_bytes(b"[]"), StatusCode::BAD_REQUEST, None),
        (frame_bytes(b"   "), StatusCode::BAD_REQUEST, None),
        (
            frame_bytes(br#"{"id":1,"verb":"get","resource":"/hello"}"#),
            StatusCode::BAD_REQUEST,
            id(1),
        ),
        (
            frame_bytes(br#"{"id":2,"verb":"GET","resource":"hello"}"#),
            StatusCode::BAD_REQUEST,
            id(2),
        ),
        (
            frame_bytes(br#"{"id":3,"verb":"STORE","resource":"/echo"}"#),
            StatusCode::BAD_REQUEST,
            id(3),
        ),
        (
            frame_bytes(br#"{"id":1.5,"verb":"GET","resource":"/hello"}"#),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            frame_bytes(br#"{"id":4,"verb":"GET","resource":"/hello","id":5}"#),
            StatusCode::BAD_REQUEST,
            id(4),
        ),
        (
            frame_bytes(br#"{"id":6,"verb":"DELETE","resource":"/hello"}"#),
            StatusCode::METHOD_NOT_ALLOWED,
            id(6),
        ),
        (
            frame_bytes(br#"{"id":7,"verb":"GET","resource":"/nowhere"}"#),
            StatusCode::NOT_FOUND,
            id(7),
        ),
        (
            {
                let mut oversized = header(MAX as u32 + 1).to_vec();
                oversized.extend(filler_chunk().iter().copied().cycle().take(MAX + 1));
                oversized
            },
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            frame_bytes(b"{\"id\":8,\"verb\":\"GET\",\"resource\":\"/hello\"}x"),
            StatusCode::BAD_REQUEST,
            None,
        ),
    ];
    let mut bytes = Vec::new();
    for _round in 0..3 {
        for (wire, _, _) in &bad {
            bytes.extend_from_slice(wire);
        }
    }
    bytes.extend(frame_bytes(
        br#"{"id":"good","verb":"GET","resource":"/hello"}"#,
    ));
    let mut pipe = Pipe::open(&app());
    pipe.send_raw(&bytes).await;
    // One answer per frame, in whatever order the server sends them (the
    // protocol leaves it free): the same codes and ids, each as often as
    // its frame was sent.
    let key = |code: StatusCode, id: &Option<RequestId>| (code.as_u16(), format!("{id:?}"));
    let mut expected: Vec<_> = (0..3)
        .flat_map(|_| bad.iter().map(|(_, code, id)| key(*code, id)))
        .collect();
    expected.push(key(StatusCode::OK, &Some(RequestId::from("good"))));
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let response = pipe.recv().await;
        assert_answer(&response, response.code, response.request_id.clone());
        got.push(key(response.code, &response.request_id));
    }
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert_alive(&mut pipe).await;
    assert!(pipe.finish().await.is_empty());
}

// -------------------------------------------------------------- encoding ----

#[tokio::test]
async fn invalid_utf8_inside_a_string_gets_400_with_null_id() {
    rejected(
        b"{\"id\":1,\"verb\":\"GET\",\"resource\":\"/h\xffllo\"}",
        None,
    )
    .await;
}

#[tokio::test]
async fn an_overlong_utf8_encoding_gets_400_with_null_id() {
    // 0xC0 0xAF is an overlong '/'.
    rejected(
        b"{\"id\":1,\"verb\":\"GET\",\"resource\":\"\xc0\xafhello\"}",
        None,
    )
    .await;
}

#[tokio::test]
async fn a_utf8_encoded_surrogate_gets_400_with_null_id() {
    // 0xED 0xA0 0x80 would be U+D800, which UTF-8 must not encode.
    rejected(
        b"{\"id\":1,\"verb\":\"GET\",\"resource\":\"/\xed\xa0\x80\"}",
        None,
    )
    .await;
}

#[tokio::test]
async fn a_payload_cut_inside_a_multibyte_character_gets_400_with_null_id() {
    rejected(
        b"{\"id\":1,\"verb\":\"GET\",\"resource\":\"/\"}\xe2\x82",
        None,
    )
    .await;
}

#[tokio::test]
async fn a_utf8_bom_before_the_object_gets_400_with_null_id() {
    rejected(
        b"\xef\xbb\xbf{\"id\":1,\"verb\":\"GET\",\"resource\":\"/hello\"}",
        None,
    )
    .await;
}

#[tokio::test]
async fn a_raw_nul_inside_a_string_gets_400_with_null_id() {
    rejected(
        b"{\"id\":1,\"verb\":\"GET\",\"resource\":\"/hel\0lo\"}",
        None,
    )
    .await;
}

#[tokio::test]
async fn a_nul_between_tokens_gets_400_with_null_id() {
    rejected(
        b"{\"id\":1,\0\"verb\":\"GET\",\"resource\":\"/hello\"}",
        None,
    )
    .await;
}

#[tokio::test]
async fn a_nul_after_the_object_gets_400_with_null_id() {
    rejected(
        b"{\"id\":1,\"verb\":\"GET\",\"resource\":\"/hello\"}\0",
        None,
    )
    .await;
}

#[tokio::test]
async fn an_escaped_nul_in_the_resource_is_valid_and_gets_404_with_the_id() {
    let response = answered(
        br#"{"id":1,"verb":"GET","resource":"/hel\u0000lo"}"#,
        StatusCode::NOT_FOUND,
        id(1),
    )
    .await;
    assert!(response.message().unwrap().contains("/hel\0lo"));
}

#[tokio::test]
async fn a_string_id_with_escapes_and_nul_is_echoed_with_the_same_value() {
    answered(
        br#"{"id":"a\"b\\c\u0000d\n","verb":"GET","resource":"/hello"}"#,
        StatusCode::OK,
        Some(RequestId::from("a\"b\\c\0d\n")),
    )
    .await;
}

#[tokio::test]
async fn an_unpaired_high_surrogate_in_the_resource_gets_400_with_null_id() {
    rejected(br#"{"id":1,"verb":"GET","resource":"/\ud800"}"#, None).await;
}

#[tokio::test]
async fn an_unpaired_low_surrogate_in_the_body_gets_400_with_null_id() {
    rejected(&hello_with(r#""body":"\udc00""#), None).await;
}

#[tokio::test]
async fn an_unpaired_surrogate_in_an_unknown_member_gets_400_with_null_id() {
    rejected(&hello_with(r#""future":["\ud83d x"]"#), None).await;
}

#[tokio::test]
async fn a_reversed_surrogate_pair_gets_400_with_null_id() {
    rejected(&hello_with(r#""body":"\ude00\ud83d""#), None).await;
}

#[tokio::test]
async fn an_unpaired_surrogate_in_a_member_name_gets_400_with_null_id() {
    rejected(&hello_with(r#""\ud800":1"#), None).await;
}

#[tokio::test]
async fn an_unpaired_surrogate_in_a_string_id_gets_400_with_null_id() {
    rejected(br#"{"id":"\udbff","verb":"GET","resource":"/hello"}"#, None).await;
}

#[tokio::test]
async fn a_surrogate_pair_in_a_string_id_is_echoed_as_one_character() {
    answered(
        br#"{"id":"\ud83d\ude00","verb":"GET","resource":"/hello"}"#,
        StatusCode::OK,
        Some(RequestId::from("\u{1F600}")),
    )
    .await;
}

#[tokio::test]
async fn an_escaped_backslash_before_u_d800_is_text_not_a_surrogate() {
    // `\\ud800` is a backslash followed by the letters "ud800": valid.
    let response = answered(
        br#"{"id":2,"verb":"STORE","resource":"/echo","body":"\\ud800"}"#,
        StatusCode::OK,
        id(2),
    )
    .await;
    assert_eq!(response.body["body"], json!("\\ud800"));
}

#[tokio::test]
async fn an_invalid_escape_gets_400_with_null_id() {
    rejected(&hello_with(r#""body":"\x41""#), None).await;
}

#[tokio::test]
async fn a_short_unicode_escape_gets_400_with_null_id() {
    rejected(&hello_with(r#""body":"\u12""#), None).await;
}

// --------------------------------------------------------------- nesting ----

#[tokio::test]
async fn arrays_nested_100000_deep_at_top_level_get_400_with_null_id() {
    rejected(nested(100_000, "[", "]").as_bytes(), None).await;
}

#[tokio::test]
async fn objects_nested_100000_deep_at_top_level_get_400_with_null_id() {
    // {"a":{"a":…}}: an object, but without an id.
    let deep = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    rejected(deep.as_bytes(), None).await;
}

#[tokio::test]
async fn a_body_nested_100000_deep_is_kept_raw_and_a_handler_that_ignores_it_answers() {
    answered(
        &hello_with(&format!(r#""body":{}"#, nested(100_000, "[", "]"))),
        StatusCode::OK,
        id(7),
    )
    .await;
}

#[tokio::test]
async fn a_body_nested_100000_deep_is_a_400_from_a_handler_that_parses_it() {
    let payload = format!(
        r#"{{"id":9,"verb":"STORE","resource":"/echo","body":{}}}"#,
        nested(100_000, "[", "]")
    );
    rejected(payload.as_bytes(), id(9)).await;
}

#[tokio::test]
async fn an_unknown_member_nested_100000_deep_is_ignored() {
    answered(
        &hello_with(&format!(r#""future":{}"#, nested(100_000, "[", "]"))),
        StatusCode::OK,
        id(7),
    )
    .await;
}

#[tokio::test]
async fn an_id_nested_100000_deep_gets_400_with_null_id() {
    let payload = format!(
        r#"{{"id":{},"verb":"GET","resource":"/hello"}}"#,
        nested(100_000, "[", "]")
    );
    rejected(payload.as_bytes(), None).await;
}

#[tokio::test]

async fn headers_nested_100000_deep_get_400_with_the_id() {
    rejected(
        &hello_with(&format!(r#""headers":{}"#, nested(100_000, "[", "]"))),
        id(7),
    )
    .await;
}

#[tokio::test]

async fn a_verb_nested_100000_deep_gets_400_with_the_id() {
    let payload = format!(
        r#"{{"id":7,"verb":{},"resource":"/hello"}}"#,
        nested(100_000, "[", "]")
    );
    rejected(payload.as_bytes(), id(7)).await;
}

// --------------------------------------------------------------- numbers ----

#[tokio::test]
async fn a_10000_digit_number_as_id_gets_400_with_null_id() {
    let payload = format!(
        r#"{{"id":{},"verb":"GET","resource":"/hello"}}"#,
        "9".repeat(10_000)
    );
    rejected(payload.as_bytes(), None).await;
}

#[tokio::test]
async fn a_10000_digit_number_in_the_body_is_kept_raw_and_accepted() {
    answered(
        &hello_with(&format!(r#""body":{}"#, "7".repeat(10_000))),
        StatusCode::OK,
        id(7),
    )
    .await;
}

#[tokio::test]
async fn a_10000_digit_fraction_in_the_body_is_accepted_by_a_parsing_handler() {
    let payload = format!(
        r#"{{"id":3,"verb":"STORE","resource":"/echo","body":0.{}1}}"#,
        "0".repeat(10_000)
    );
    let response = answered(payload.as_bytes(), StatusCode::OK, id(3)).await;
    assert!(response.body["body"].is_f64(), "{:?}", response.body);
}

#[tokio::test]

async fn a_10000_digit_number_as_verb_gets_400_with_the_id() {
    let payload = format!(
        r#"{{"id":7,"verb":{},"resource":"/hello"}}"#,
        "9".repeat(10_000)
    );
    rejected(payload.as_bytes(), id(7)).await;
}

#[tokio::test]

async fn a_header_value_of_1e400_gets_400_with_the_id() {
    rejected(&hello_with(r#""headers":{"x":1e400}"#), id(7)).await;
}

// ------------------------------------------------------------------- ids ----

#[tokio::test]
async fn an_id_with_a_fraction_gets_400_with_null_id() {
    let message = rejected(br#"{"id":1.5,"verb":"GET","resource":"/hello"}"#, None).await;
    assert!(message.contains("`id`"), "{message}");
}

#[tokio::test]
async fn an_id_with_a_zero_fraction_gets_400_with_null_id() {
    rejected(br#"{"id":1.0,"verb":"GET","resource":"/hello"}"#, None).await;
}

#[tokio::test]
async fn an_id_with_an_exponent_gets_400_with_null_id() {
    rejected(br#"{"id":1e3,"verb":"GET","resource":"/hello"}"#, None).await;
}

#[tokio::test]
async fn an_id_with_a_capital_exponent_gets_400_with_null_id() {
    rejected(br#"{"id":2E0,"verb":"GET","resource":"/hello"}"#, None).await;
}

#[tokio::test]
async fn a_negative_id_is_valid_and_echoed() {
    answered(
        br#"{"id":-42,"verb":"GET","resource":"/hello"}"#,
        StatusCode::OK,
        id(-42),
    )
    .await;
}

#[tokio::test]
async fn the_smallest_id_minus_2_pow_63_is_valid_and_echoed() {
    let response = answered(
        br#"{"id":-9223372036854775808,"verb":"GET","resource":"/hello"}"#,
        StatusCode::OK,
        id(i64::MIN),
    )
    .await;
    assert_eq!(response.request_id.unwrap().as_i64(), Some(i64::MIN));
}

#[tokio::test]
async fn an_id_below_minus_2_pow_63_gets_400_with_null_id() {
    rejected(
        br#"{"id":-9223372036854775809,"verb":"GET","resource":"/hello"}"#,
        None,
    )
    .await;
}

#[tokio::test]
async fn the_largest_id_2_pow_64_minus_1_is_valid_and_echoed() {
    answered(
        br#"{"id":18446744073709551615,"verb":"GET","resource":"/hello"}"#,
        StatusCode::OK,
        Some(RequestId::from(u64::MAX)),
    )
    .await;
}

#[tokio::test]
async fn an_id_of_2_pow_64_gets_400_with_null_id() {
    rejected(
        br#"{"id":18446744073709551616,"verb":"GET","resource":"/hello"}"#,
        None,
    )
    .await;
}

#[tokio::test]

async fn a_negative_zero_id_has_no_fraction_and_is_echoed_as_zero() {
    answered(
        br#"{"id":-0,"verb":"GET","resource":"/hello"}"#,
        StatusCode::OK,
        id(0),
    )
    .await;
}

#[tokio::test]
async fn an_id_with_a_leading_zero_is_not_json_and_gets_400_with_null_id() {
    rejected(br#"{"id":01,"verb":"GET","resource":"/hello"}"#, None).await;
}

#[tokio::test]
async fn a_true_id_gets_400_with_null_id() {
    rejected(br#"{"id":true,"verb":"GET","resource":"/hello"}"#, None).await;
}

#[tokio::test]
async fn a_false_id_gets_400_with_null_id() {
    rejected(br#"{"id":false,"verb":"GET","resource":"/hello"}"#, None).await;
}

#[tokio::test]
async fn a_null_id_gets_400_with_null_id() {
    rejected(br#"{"id":null,"verb":"GET","resource":"/hello"}"#, None).await;
}

#[tokio::test]
async fn an_object_id_gets_400_with_null_id() {
    rejected(br#"{"id":{"n":1},"verb":"GET","resource":"/hello"}"#, None).await;
}

#[tokio::test]
async fn an_array_id_gets_400_with_null_id() {
    rejected(br#"{"id":[1],"verb":"GET","resource":"/hello"}"#, None).await;
}

#[tokio::test]
async fn an_empty_string_id_is_valid_and_echoed() {
    answered(
        br#"{"id":"","verb":"GET","resource":"/hello"}"#,
        StatusCode::OK,
        Some(RequestId::from("")),
    )
    .await;
}

#[tokio::test]
async fn a_numeric_string_id_stays_a_string() {
    let response = answered(
        br#"{"id":"7","verb":"GET","resource":"/hello"}"#,
        StatusCode::OK,
        Some(RequestId::from("7")),
    )
    .await;
    assert_eq!(response.request_id.unwrap().as_i64(), None);
}

#[tokio::test]
async fn a_string_id_too_long_for_any_answer_gets_500_response_too_large() {
    // The request fits the maximum frame, but an answer carrying its id cannot:
    // the only possible answer is the 500 without an id.
    let prefix = r#"{"verb":"GET","resource":"/hello","id":""#;
    let long = "i".repeat(MAX - prefix.len() - 2);
    let payload = format!("{prefix}{long}\"}}");
    assert_eq!(payload.len(), MAX);
    let response = answered(payload.as_bytes(), StatusCode::INTERNAL_SERVER_ERROR, None).await;
    assert_eq!(response.message(), Some("response too large"));
}

// -------------------------------------------------------- duplicate keys ----

#[tokio::test]
async fn a_duplicate_id_gets_400_with_the_first_id() {
    let message = rejected(
        br#"{"id":1,"verb":"GET","resource":"/hello","id":2}"#,
        id(1),
    )
    .await;
    assert!(message.contains("\"id\""), "{message}");
}

#[tokio::test]
async fn a_duplicate_verb_gets_400_with_the_id() {
    let message = rejected(
        br#"{"id":1,"verb":"GET","resource":"/hello","verb":"GET"}"#,
        id(1),
    )
    .await;
    assert!(message.contains("\"verb\""), "{message}");
}

#[tokio::test]
async fn a_duplicate_resource_gets_400_with_the_id() {
    let message = rejected(
        br#"{"id":1,"resource":"/nowhere","verb":"GET","resource":"/hello"}"#,
        id(1),
    )
    .await;
    assert!(message.contains("\"resource\""), "{message}");
}

#[tokio::test]
async fn a_duplicate_body_gets_400_with_the_id() {
    rejected(
        br#"{"id":1,"verb":"STORE","resource":"/echo","body":1,"body":2}"#,
        id(1),
    )
    .await;
}

#[tokio::test]
async fn a_duplicate_headers_member_gets_400_with_the_id() {
    rejected(&hello_with(r#""headers":{},"headers":{}"#), id(7)).await;
}

#[tokio::test]
async fn a_duplicate_unknown_member_gets_400_with_the_id() {
    let message = rejected(&hello_with(r#""x":1,"x":1"#), id(7)).await;
    assert!(message.contains("\"x\""), "{message}");
}

#[tokio::test]
async fn a_duplicate_verb_spelled_with_an_escape_gets_400_with_the_id() {
    let message = rejected(
        br#"{"id":1,"verb":"GET","resource":"/hello","v\u0065rb":"GET"}"#,
        id(1),
    )
    .await;
    assert!(message.contains("\"verb\""), "{message}");
}

#[tokio::test]
async fn a_duplicate_whose_value_is_out_of_range_still_gets_400_with_the_id() {
    rejected(&hello_with(r#""verb":1e400"#), id(7)).await;
}

#[tokio::test]
async fn duplicate_members_inside_the_body_are_the_handlers_business() {
    answered(
        &hello_with(r#""body":{"a":1,"a":2}"#),
        StatusCode::OK,
        id(7),
    )
    .await;
}

// ------------------------------------------------------ wrong field types ----

async fn wrong_type(member: &str, value: &str) -> String {
    let mut fields = vec![
        ("id", "7".to_owned()),
        ("verb", r#""GET""#.to_owned()),
        ("resource", r#""/hello""#.to_owned()),
    ];
    for field in &mut fields {
        if field.0 == member {
            field.1 = value.to_owned();
        }
    }
    let payload = format!(
        "{{{}}}",
        fields
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let message = rejected(payload.as_bytes(), id(7)).await;
    assert!(message.contains(&format!("`{member}`")), "{message}");
    message
}

#[tokio::test]
async fn a_null_verb_gets_400_with_the_id() {
    wrong_type("verb", "null").await;
}

#[tokio::test]
async fn a_boolean_verb_gets_400_with_the_id() {
    wrong_type("verb", "true").await;
}

#[tokio::test]
async fn a_number_verb_gets_400_with_the_id() {
    wrong_type("verb", "1").await;
}

#[tokio::test]
async fn an_array_verb_gets_400_with_the_id() {
    wrong_type("verb", r#"["GET"]"#).await;
}

#[tokio::test]
async fn an_object_verb_gets_400_with_the_id() {
    wrong_type("verb", r#"{"GET":"GET"}"#).await;
}

#[tokio::test]
async fn a_null_resource_gets_400_with_the_id() {
    wrong_type("resource", "null").await;
}

#[tokio::test]
async fn a_boolean_resource_gets_400_with_the_id() {
    wrong_type("resource", "false").await;
}

#[tokio::test]
async fn a_number_resource_gets_400_with_the_id() {
    wrong_type("resource", "404").await;
}

#[tokio::test]
async fn an_array_resource_gets_400_with_the_id() {
    wrong_type("resource", r#"["/hello"]"#).await;
}

#[tokio::test]
async fn an_object_resource_gets_400_with_the_id() {
    wrong_type("resource", r#"{"/hello":1}"#).await;
}

#[tokio::test]

async fn null_headers_get_400_with_the_id() {
    rejected(&hello_with(r#""headers":null"#), id(7)).await;
}

#[tokio::test]
async fn boolean_headers_get_400_with_the_id() {
    let message = rejected(&hello_with(r#""headers":true"#), id(7)).await;
    assert!(message.contains("`headers`"), "{message}");
}

#[tokio::test]
async fn number_headers_get_400_with_the_id() {
    rejected(&hello_with(r#""headers":12"#), id(7)).await;
}

#[tokio::test]
async fn string_headers_get_400_with_the_id() {
    rejected(&hello_with(r#""headers":"trace: abc""#), id(7)).await;
}

#[tokio::test]
async fn array_headers_get_400_with_the_id() {
    rejected(&hello_with(r#""headers":[["trace","abc"]]"#), id(7)).await;
}

#[tokio::test]
async fn a_header_with_a_number_value_gets_400_with_the_id() {
    let message = rejected(&hello_with(r#""headers":{"trace":1}"#), id(7)).await;
    assert!(message.contains("\"trace\""), "{message}");
}

#[tokio::test]
async fn a_header_with_a_null_value_gets_400_with_the_id() {
    rejected(&hello_with(r#""headers":{"trace":null}"#), id(7)).await;
}

#[tokio::test]
async fn a_header_with_an_object_value_gets_400_with_the_id() {
    rejected(&hello_with(r#""headers":{"trace":{}}"#), id(7)).await;
}

#[tokio::test]
async fn a_header_with_a_boolean_value_gets_400_with_the_id() {
    rejected(&hello_with(r#""headers":{"a":"ok","b":false}"#), id(7)).await;
}

#[tokio::test]
async fn store_without_a_body_gets_400_with_the_id() {
    let message = rejected(br#"{"id":5,"verb":"STORE","resource":"/echo"}"#, id(5)).await;
    assert!(message.contains("`body`"), "{message}");
}

#[tokio::test]
async fn update_with_a_null_body_gets_400_with_the_id() {
    rejected(
        br#"{"id":5,"verb":"UPDATE","resource":"/echo","body":null}"#,
        id(5),
    )
    .await;
}

#[tokio::test]
async fn store_without_a_body_on_an_unknown_resource_is_400_before_404() {
    rejected(br#"{"id":5,"verb":"STORE","resource":"/nowhere"}"#, id(5)).await;
}

#[tokio::test]
async fn a_body_of_every_json_type_is_accepted_for_store() {
    let mut pipe = Pipe::open(&app());
    for (n, body) in [
        json!(true),
        json!(0),
        json!("s"),
        json!([1]),
        json!({"k": []}),
    ]
    .into_iter()
    .enumerate()
    {
        let n = n as i64;
        let payload = json!({"id": n, "verb": "STORE", "resource": "/echo", "body": body});
        pipe.send_payload(payload.to_string().as_bytes()).await;
        let response = pipe.recv().await;
        assert_answer(&response, StatusCode::OK, id(n));
        assert_eq!(response.body["body"], body);
    }
    assert_alive(&mut pipe).await;
    assert!(pipe.finish().await.is_empty());
}

// ------------------------------------------------------------------ verbs ----

#[tokio::test]
async fn a_lowercase_verb_gets_400_with_the_id() {
    let message = rejected(br#"{"id":1,"verb":"get","resource":"/hello"}"#, id(1)).await;
    assert!(message.contains("\"get\""), "{message}");
}

#[tokio::test]
async fn a_mixed_case_verb_gets_400_with_the_id() {
    rejected(br#"{"id":1,"verb":"Get","resource":"/hello"}"#, id(1)).await;
}

#[tokio::test]
async fn an_unknown_verb_gets_400_with_the_id() {
    rejected(
        br#"{"id":"p","verb":"PUT","resource":"/hello"}"#,
        Some(RequestId::from("p")),
    )
    .await;
}

#[tokio::test]
async fn an_empty_verb_gets_400_with_the_id() {
    rejected(br#"{"id":1,"verb":"","resource":"/hello"}"#, id(1)).await;
}

#[tokio::test]
async fn a_verb_with_surrounding_spaces_gets_400_with_the_id() {
    rejected(br#"{"id":1,"verb":" GET ","resource":"/hello"}"#, id(1)).await;
}

#[tokio::test]
async fn a_verb_with_a_trailing_escaped_nul_gets_400_with_the_id() {
    rejected(br#"{"id":1,"verb":"GET\u0000","resource":"/hello"}"#, id(1)).await;
}

// ------------------------------------------------------- missing members ----

#[tokio::test]
async fn a_missing_id_gets_400_with_null_id() {
    let message = rejected(br#"{"verb":"GET","resource":"/hello"}"#, None).await;
    assert!(message.contains("`id`"), "{message}");
}

#[tokio::test]
async fn a_missing_verb_gets_400_with_the_id() {
    let message = rejected(br#"{"id":1,"resource":"/hello"}"#, id(1)).await;
    assert!(message.contains("`verb`"), "{message}");
}

#[tokio::test]
async fn a_missing_resource_gets_400_with_the_id() {
    let message = rejected(br#"{"id":1,"verb":"GET"}"#, id(1)).await;
    assert!(message.contains("`resource`"), "{message}");
}

#[tokio::test]
async fn an_empty_object_gets_400_with_null_id() {
    rejected(b"{}", None).await;
}

#[tokio::test]
async fn unknown_members_are_ignored() {
    answered(
        &hello_with(r#""future":{"x":[1,2,{"y":null}]},"ttl":1e400,"z":"\u00e9""#),
        StatusCode::OK,
        id(7),
    )
    .await;
}

#[tokio::test]

async fn a_request_with_50000_distinct_unknown_members_is_answered_promptly() {
    /// The quickest of three answers to a request with `n` unknown members.
    async fn quickest(n: usize) -> Duration {
        let members: Vec<String> = (0..n).map(|k| format!("\"k{k}\":0")).collect();
        let payload = hello_with(&members.join(","));
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let started = std::time::Instant::now();
            answered(&payload, StatusCode::OK, id(7)).await;
            best = best.min(started.elapsed());
        }
        best
    }
    // Ten times the members costs about ten times the time when the work is
    // linear, and a hundred times when it is quadratic; measured in the same
    // run, so that the machine's speed cancels out.
    let small = quickest(5_000).await;
    let large = quickest(50_000).await;
    println!("5,000 unknown members: {small:?}; 50,000: {large:?}");
    assert!(
        large < small * 40,
        "50,000 members took {large:?}, over 40 × the {small:?} of 5,000"
    );
}

// -------------------------------------------------------------- resource ----

#[tokio::test]
async fn an_empty_resource_gets_400_with_the_id() {
    rejected(br#"{"id":1,"verb":"GET","resource":""}"#, id(1)).await;
}

#[tokio::test]
async fn a_resource_without_a_leading_slash_gets_400_with_the_id() {
    rejected(br#"{"id":1,"verb":"GET","resource":"hello"}"#, id(1)).await;
}

#[tokio::test]
async fn a_resource_starting_with_an_escaped_slash_is_valid() {
    answered(
        br#"{"id":1,"verb":"GET","resource":"\/hello"}"#,
        StatusCode::OK,
        id(1),
    )
    .await;
}

#[tokio::test]
async fn a_resource_of_exactly_4096_bytes_is_valid_and_routed() {
    let resource = format!("/{}", "r".repeat(4095));
    let payload = json!({"id": 1, "verb": "GET", "resource": resource}).to_string();
    answered(payload.as_bytes(), StatusCode::NOT_FOUND, id(1)).await;
}

#[tokio::test]
async fn a_resource_of_4097_bytes_gets_400_with_the_id() {
    let resource = format!("/{}", "r".repeat(4096));
    let payload = json!({"id": 1, "verb": "GET", "resource": resource}).to_string();
    let message = rejected(payload.as_bytes(), id(1)).await;
    assert!(message.contains("4097"), "{message}");
}

#[tokio::test]
async fn a_10_mb_resource_is_above_the_default_maximum_frame_and_gets_413() {
    let resource = format!("/{}", "r".repeat(10_000_000));
    let payload = json!({"id": 1, "verb": "GET", "resource": resource}).to_string();
    let response = answered(payload.as_bytes(), StatusCode::PAYLOAD_TOO_LARGE, None).await;
    assert_eq!(response.body["max_frame_bytes"], json!(MAX));
}

#[tokio::test]
async fn a_10_mb_resource_under_a_16_mib_maximum_frame_gets_400_with_the_id() {
    let service = app_with(Limits {
        max_frame: 16 << 20,
        ..Limits::default()
    });
    let resource = format!("/{}", "r".repeat(10_000_000));
    let payload = json!({"id": 1, "verb": "GET", "resource": resource}).to_string();
    let response = answered_by(&service, payload.as_bytes(), StatusCode::BAD_REQUEST, id(1)).await;
    assert!(response.message().unwrap().contains("10000001"));
}

// ------------------------------------------------------- top-level shape ----

#[tokio::test]
async fn a_top_level_array_gets_400_with_null_id() {
    rejected(br#"[{"id":1,"verb":"GET","resource":"/hello"}]"#, None).await;
}

#[tokio::test]
async fn a_top_level_string_gets_400_with_null_id() {
    rejected(
        br#""{\"id\":1,\"verb\":\"GET\",\"resource\":\"/hello\"}""#,
        None,
    )
    .await;
}

#[tokio::test]
async fn a_top_level_number_gets_400_with_null_id() {
    rejected(b"1", None).await;
}

#[tokio::test]
async fn a_top_level_null_gets_400_with_null_id() {
    rejected(b"null", None).await;
}

#[tokio::test]
async fn a_top_level_true_gets_400_with_null_id() {
    rejected(b"true", None).await;
}

#[tokio::test]
async fn trailing_garbage_after_the_object_gets_400_with_null_id() {
    rejected(br#"{"id":1,"verb":"GET","resource":"/hello"}garbage"#, None).await;
}

#[tokio::test]
async fn two_objects_in_one_frame_get_one_400_with_null_id() {
    rejected(
        br#"{"id":1,"verb":"GET","resource":"/hello"}{"id":2,"verb":"GET","resource":"/hello"}"#,
        None,
    )
    .await;
}

#[tokio::test]
async fn a_whitespace_only_payload_gets_400_with_null_id() {
    rejected(b" \t\r\n ", None).await;
}

#[tokio::test]
async fn whitespace_around_the_object_is_allowed() {
    answered(
        b" \t\r\n{ \"id\" : 1 , \"verb\" : \"GET\" , \"resource\" : \"/hello\" }\n\t ",
        StatusCode::OK,
        id(1),
    )
    .await;
}

#[tokio::test]
async fn a_non_json_whitespace_character_gets_400_with_null_id() {
    // U+00A0 NO-BREAK SPACE is not JSON whitespace.
    rejected(
        "\u{a0}{\"id\":1,\"verb\":\"GET\",\"resource\":\"/hello\"}".as_bytes(),
        None,
    )
    .await;
}

#[tokio::test]
async fn an_unterminated_object_gets_400_with_null_id() {
    rejected(br#"{"id":1,"verb":"GET","resource":"/hello""#, None).await;
}

#[tokio::test]
async fn a_trailing_comma_gets_400_with_null_id() {
    rejected(br#"{"id":1,"verb":"GET","resource":"/hello",}"#, None).await;
}

#[tokio::test]
async fn a_comment_gets_400_with_null_id() {
    rejected(
        br#"{"id":1,/* hi */"verb":"GET","resource":"/hello"}"#,
        None,
    )
    .await;
}

#[tokio::test]
async fn single_quoted_strings_get_400_with_null_id() {
    rejected(br#"{'id':1,'verb':'GET','resource':'/hello'}"#, None).await;
}

#[tokio::test]
async fn an_unquoted_member_name_gets_400_with_null_id() {
    rejected(br#"{id:1,"verb":"GET","resource":"/hello"}"#, None).await;
}

#[tokio::test]
async fn nan_in_the_body_gets_400_with_null_id() {
    rejected(&hello_with(r#""body":NaN"#), None).await;
}
