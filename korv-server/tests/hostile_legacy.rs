//! The hostile-input corpus in korv 0.2.1's format (gzip members, no
//! framing), each driven through the per-stream loop over an in-memory pipe:
//! gzip bombs, truncated and corrupt members, contents that are not
//! requests. Each is checked for the exact code and `request_id` (0 when the
//! request cannot be read), exactly one answer per member, one write per
//! answer (korv 0.2.1 reads each SSH channel-data message as one whole
//! message), and whether the stream goes on or closes.

use std::io::Write as _;
use std::time::Duration;

use bytes::BytesMut;
use flate2::Compression;
use flate2::write::GzEncoder;
use futures_util::StreamExt;
use korv_proto::legacy::TOO_LARGE_FOR_LEGACY;
use korv_proto::{LegacyCodec, LegacyFrame};
use korv_server::{ClientInfo, KorvServer, Limits, Request, StreamService, Verb};
use korv_testkit::pipe::{Recorded, Writes};
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, FramedRead};

/// How long any one answer may take (generous: debug builds, 2 shared cores).
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// korv 0.2.1's client's maximum packet size.
const PACKET: usize = 32 * 1024;

/// A client end of a korv 0.2.1 stream served by a `StreamService`.
struct Pipe {
    writer: WriteHalf<DuplexStream>,
    reader: FramedRead<ReadHalf<DuplexStream>, LegacyCodec>,
    served: JoinHandle<std::io::Result<()>>,
    writes: Writes,
}

impl Pipe {
    fn open(service: &StreamService<()>) -> Pipe {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (io, writes) = Recorded::new(theirs);
        let service = service.clone();
        let served = tokio::spawn(async move {
            service
                .serve_legacy_as(
                    io,
                    ClientInfo::new("mallory", "SHA256:evil", "ssh-ed25519", "mallory@x", None),
                    PACKET,
                )
                .await
        });
        let (reader, writer) = tokio::io::split(ours);
        Pipe {
            writer,
            reader: FramedRead::new(reader, LegacyCodec::new()),
            served,
            writes,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        let frame = tokio::time::timeout(ANSWER_WITHIN, self.reader.next())
            .await
            .expect("an answer in time")
            .expect("the stream is open")
            .unwrap();
        content(frame)
    }

    /// Sends EOF, collects the remaining answers, expects the server to close
    /// its side and end without an error, and checks that every write the
    /// server made was exactly one whole member within the packet size.
    async fn finish(mut self) -> Vec<Value> {
        let _ = self.writer.shutdown().await;
        self.closed().await
    }

    /// Collects the remaining answers until the server closes by itself.
    async fn closed(mut self) -> Vec<Value> {
        let mut rest = Vec::new();
        while let Some(frame) = tokio::time::timeout(ANSWER_WITHIN, self.reader.next())
            .await
            .expect("the server closes")
        {
            rest.push(content(frame.unwrap()));
        }
        self.served.await.unwrap().unwrap();
        for write in self.writes.lock().unwrap().iter() {
            assert!(write.len() <= PACKET, "a write of {} bytes", write.len());
            let mut one = BytesMut::from(&write[..]);
            let mut codec = LegacyCodec::new();
            assert!(
                matches!(codec.decode(&mut one), Ok(Some(LegacyFrame::Payload(_)))),
                "each write is one whole member"
            );
            assert!(one.is_empty(), "each write is exactly one member");
        }
        rest
    }
}

fn content(frame: LegacyFrame) -> Value {
    let LegacyFrame::Payload(content) = frame else {
        panic!("the server sent {frame:?}")
    };
    serde_json::from_slice(&content).unwrap()
}

fn gzip(content: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::new(6));
    encoder.write_all(content).unwrap();
    encoder.finish().unwrap()
}

/// What korv 0.2.1's client sends.
fn request(id: &str, verb: &str, resource: &str, body: Value) -> Vec<u8> {
    gzip(
        format!(r#"{{"id":{id},"verb":"{verb}","resource":"{resource}","body":{body}}}"#)
            .as_bytes(),
    )
}

fn hello(id: &str) -> Vec<u8> {
    request(id, "GET", "/hello", Value::Null)
}

async fn echo(req: Request) -> Value {
    json!({ "body": req.body_value() })
}

async fn fail(_req: Request) -> anyhow::Result<Value> {
    let cause: Result<Value, std::io::Error> = Err(std::io::Error::other("the disk is full"));
    anyhow::Context::context(cause, "could not save the note")
}

fn app_with(limits: Limits) -> StreamService<()> {
    let mut server = KorvServer::new().limits(limits);
    server.add_callback(Verb::Get, "/hello", |_req: Request| async {
        json!({"msg": "Hello World!"})
    });
    server.add_callback(Verb::Get, "/echo", echo);
    server.add_callback(Verb::Store, "/echo", echo);
    server.add_callback(Verb::Get, "/fail", fail);
    server.into_stream_service()
}

fn app() -> StreamService<()> {
    app_with(Limits::default())
}

/// The answer to `GET /hello` with `id` (its JSON text).
fn assert_hello(answer: &Value, id: &str) {
    assert_eq!(answer["request_id"].to_string(), id, "{answer}");
    assert_eq!(answer["code"], json!(200), "{answer}");
    assert_eq!(answer["body"], json!({"msg": "Hello World!"}));
    assert!(answer["id"].is_f64(), "the server's clock: {answer}");
}

fn assert_error(answer: &Value, code: u16, id: &str) {
    assert_eq!(answer["code"], json!(code), "{answer}");
    assert_eq!(answer["request_id"].to_string(), id, "{answer}");
    assert!(
        answer["body"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error has a message: {answer}"
    );
}

#[tokio::test]
async fn a_float_id_comes_back_as_the_same_text() {
    let mut pipe = Pipe::open(&app());
    pipe.send(&hello("1764505207.1234567")).await;
    assert_hello(&pipe.recv().await, "1764505207.1234567");
    pipe.send(&hello("1e-7")).await;
    let answer = pipe.recv().await;
    assert_eq!(answer["request_id"], json!(1e-7));
    assert_eq!(pipe.finish().await, Vec::<Value>::new());
}

#[tokio::test]
async fn members_written_one_byte_at_a_time_are_read() {
    let mut pipe = Pipe::open(&app());
    for byte in hello("1.5").iter().chain(&hello("2.5")) {
        pipe.send(&[*byte]).await;
    }
    assert_hello(&pipe.recv().await, "1.5");
    assert_hello(&pipe.recv().await, "2.5");
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn content_that_is_not_json_is_a_400_with_id_0_and_the_stream_goes_on() {
    for content in [
        &b"this is not JSON"[..],
        b"[1,2,3]",
        b"",
        b"\xff\xfe",
        b"{\"id\":1.5,\"verb\":\"GET\"",
    ] {
        let mut pipe = Pipe::open(&app());
        pipe.send(&gzip(content)).await;
        assert_error(&pipe.recv().await, 400, "0");
        pipe.send(&hello("3.5")).await;
        assert_hello(&pipe.recv().await, "3.5");
        assert!(pipe.finish().await.is_empty());
    }
}

#[tokio::test]
async fn invalid_requests_are_the_400s_of_version_1_with_their_id() {
    let mut pipe = Pipe::open(&app());
    // STORE with a null body, a verb korv 0.2.1 never had, no resource.
    pipe.send(&request("1.25", "STORE", "/echo", Value::Null))
        .await;
    assert_error(&pipe.recv().await, 400, "1.25");
    pipe.send(&request("2.25", "WATCH", "/echo", Value::Null))
        .await;
    assert_error(&pipe.recv().await, 400, "2.25");
    pipe.send(&gzip(br#"{"id":3.25,"verb":"GET"}"#)).await;
    assert_error(&pipe.recv().await, 400, "3.25");
    // No id: nothing to echo.
    pipe.send(&gzip(br#"{"verb":"GET","resource":"/hello"}"#))
        .await;
    assert_error(&pipe.recv().await, 400, "0");
    // Routing as usual.
    pipe.send(&request("4.25", "GET", "/nothing", Value::Null))
        .await;
    assert_error(&pipe.recv().await, 404, "4.25");
    pipe.send(&request("5.25", "DELETE", "/hello", Value::Null))
        .await;
    assert_error(&pipe.recv().await, 405, "5.25");
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn a_handler_error_is_a_500_with_the_traceback_as_one_string() {
    let mut pipe = Pipe::open(&app());
    pipe.send(&request("7.5", "GET", "/fail", Value::Null))
        .await;
    let answer = pipe.recv().await;
    assert_error(&answer, 500, "7.5");
    let traceback = answer["body"]["traceback"].as_str().expect("one string");
    assert!(
        traceback.contains("could not save the note\n"),
        "{traceback}"
    );
    assert!(traceback.ends_with("the disk is full"), "{traceback}");
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn an_answer_larger_than_a_packet_is_replaced_by_a_500() {
    let mut pipe = Pipe::open(&app());
    // Text from a xorshift generator does not compress below 32 KiB.
    let mut state = 0x2545_f491_u32;
    let text: String = (0..100_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            char::from(b'!' + (state % 90) as u8)
        })
        .collect();
    pipe.send(&request("8.5", "STORE", "/echo", json!({ "text": text })))
        .await;
    let answer = pipe.recv().await;
    assert_error(&answer, 500, "8.5");
    assert_eq!(answer["body"], json!({ "message": TOO_LARGE_FOR_LEGACY }));
    pipe.send(&hello("9.5")).await;
    assert_hello(&pipe.recv().await, "9.5");
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn two_hundred_requests_in_one_write_each_get_one_answer_in_its_own_write() {
    let mut pipe = Pipe::open(&app());
    let mut wire = Vec::new();
    for n in 0..200 {
        wire.extend(request(
            &format!("{n}.5"),
            "STORE",
            "/echo",
            json!({ "n": n }),
        ));
    }
    pipe.send(&wire).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let answer = pipe.recv().await;
        assert_eq!(answer["code"], json!(200));
        let n = answer["body"]["body"]["n"].as_u64().unwrap();
        assert_eq!(answer["request_id"].to_string(), format!("{n}.5"));
        assert!(seen.insert(n), "answered twice: {n}");
    }
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn a_gzip_bomb_is_a_413_with_id_0_then_the_stream_closes() {
    // 256 MiB of zeros compress to about 256 KiB; the maximum frame is 1 MiB.
    let bomb = {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::new(9));
        let zeros = vec![0; 1 << 20];
        for _ in 0..256 {
            encoder.write_all(&zeros).unwrap();
        }
        encoder.finish().unwrap()
    };
    let service = app_with(Limits {
        max_frame: 1 << 20,
        ..Limits::default()
    });
    let mut pipe = Pipe::open(&service);
    pipe.send(&hello("1.5")).await;
    assert_hello(&pipe.recv().await, "1.5");
    let started = std::time::Instant::now();
    // The rest of the bomb may find the server's side closed.
    let _ = pipe.writer.write_all(&bomb).await;
    let answer = pipe.recv().await;
    assert_error(&answer, 413, "0");
    assert_eq!(answer["body"]["max_frame_bytes"], json!(1 << 20));
    // The server closes by itself: nothing follows the bomb.
    let _ = pipe.writer.write_all(&hello("2.5")).await;
    assert!(pipe.closed().await.is_empty());
    assert!(started.elapsed() < ANSWER_WITHIN);
}

#[tokio::test]
async fn a_corrupt_member_is_a_400_with_id_0_then_the_stream_closes() {
    let good = hello("1.5");
    let mut bad_crc = hello("2.5");
    let at = bad_crc.len() - 6;
    bad_crc[at] ^= 0xff;
    let mut bad_deflate = hello("3.5");
    bad_deflate[10] = 0xff;
    let mut bad_method = hello("4.5");
    bad_method[2] = 7;
    for bad in [
        bad_crc,
        bad_deflate,
        bad_method,
        b"\x1f\x8b\x08\x00garbage".to_vec(),
    ] {
        let mut pipe = Pipe::open(&app());
        pipe.send(&good).await;
        assert_hello(&pipe.recv().await, "1.5");
        pipe.send(&bad).await;
        let _ = pipe.writer.write_all(&hello("5.5")).await;
        let answer = pipe.recv().await;
        assert_error(&answer, 400, "0");
        assert!(
            pipe.closed().await.is_empty(),
            "nothing after a corrupt member"
        );
    }
}

#[tokio::test]
async fn a_member_cut_short_by_eof_is_a_400_with_id_0_after_the_earlier_answers() {
    let whole = hello("1.5");
    let cut = &hello("2.5")[..20];
    let mut pipe = Pipe::open(&app());
    pipe.send(&whole).await;
    pipe.send(cut).await;
    let rest = pipe.finish().await;
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert_hello(&rest[0], "1.5");
    assert_error(&rest[1], 400, "0");
}

#[tokio::test]
async fn bytes_that_are_not_gzip_are_a_400_with_id_0_then_the_stream_closes() {
    let mut pipe = Pipe::open(&app());
    // A version-1 frame on a korv 0.2.1 stream.
    pipe.send(b"\x00\x00\x00\x29{\"id\":1,\"verb\":\"GET\",\"resource\":\"/hello\"}")
        .await;
    assert_error(&pipe.recv().await, 400, "0");
    assert!(pipe.closed().await.is_empty());
}
