//! The per-stream loop over an in-memory pipe, no SSH: every code the
//! framework produces, concurrency, backpressure, EOF, timeouts, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use korv_server::routing;
use korv_server::{
    ClientInfo, Error, KorvServer, Limits, Request, RequestId, StatusCode, StreamService, Verb,
};
use korv_testkit::frame::frame;
use korv_testkit::pipe::Pipe;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;

#[derive(Deserialize)]
struct NewUser {
    #[allow(dead_code)]
    name: String,
    #[allow(dead_code)]
    age: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("database unreachable")]
struct DbError(#[source] std::io::Error);

fn app(limits: Limits) -> StreamService<Arc<AtomicUsize>> {
    let running = Arc::new(AtomicUsize::new(0));
    KorvServer::with_state(running)
        .limits(limits)
        .route(
            "/hello",
            routing::get(|_req: Request| async { (200, json!({"msg": "Hello World!"})) })
                .store(|_req: Request| async { (201, json!({"stored": true})) })
                .delete(|_req: Request| async { (204, Value::Null) }),
        )
        .route("/users/{id}", routing::get(|req: Request| async move {
            json!({"id": req.param("id"), "user": req.client().user, "fp": req.client().fingerprint})
        }))
        .route("/users/me", routing::get(|_req: Request| async { json!("me") }))
        .route("/users", routing::store(|req: Request| async move {
            let _user: NewUser = req.body()?;
            Ok::<_, anyhow::Error>((201, json!({"ok": true})))
        }))
        .route("/sleep/{ms}", routing::get(|req: Request, running: Arc<AtomicUsize>| async move {
            let ms: u64 = req.param("ms").unwrap().parse().unwrap();
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            json!({"slept": ms, "concurrent": now})
        }))
        .route("/fail", routing::get(|_req: Request| async {
            Err::<Value, _>(DbError(std::io::Error::other("connection refused")))
        }))
        .route("/missing", routing::get(|_req: Request| async {
            Err::<Value, _>(Error::new(404, "no such thing"))
        }))
        .route("/panic", routing::get(|_req: Request| async {
            if true {
                panic!("boom at the handler");
            }
            json!(null)
        }))
        .route("/big", routing::get(|_req: Request| async { json!("x".repeat(4096)) }))
        .route("/badcode", routing::get(|_req: Request| async { (600, json!(null)) }))
        .into_stream_service()
}

/// Signals between a test and the handlers of `/hold/{id}`, which count
/// themselves as started and then wait until released.
struct Gate {
    started: AtomicUsize,
    changed: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

impl Gate {
    /// Waits until `n` handlers have started.
    async fn started(&self, n: usize) {
        loop {
            let changed = self.changed.notified();
            if self.started.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::timeout(Duration::from_secs(60), changed)
                .await
                .expect("the handlers start");
        }
    }
}

/// A service with `/hold/{id}` (answers `{"id": id}` once released) and
/// `/hello`.
fn gated(limits: Limits) -> (StreamService<Arc<Gate>>, Arc<Gate>) {
    let gate = Arc::new(Gate {
        started: AtomicUsize::new(0),
        changed: tokio::sync::Notify::new(),
        release: tokio::sync::Semaphore::new(0),
    });
    let service = KorvServer::with_state(Arc::clone(&gate))
        .limits(limits)
        .route(
            "/hold/{id}",
            routing::get(|req: Request, gate: Arc<Gate>| async move {
                gate.started.fetch_add(1, Ordering::SeqCst);
                gate.changed.notify_waiters();
                gate.release.acquire().await.unwrap().forget();
                json!({"id": req.param("id")})
            }),
        )
        .route(
            "/hello",
            routing::get(|_req: Request| async { json!("hello") }),
        )
        .into_stream_service();
    (service, gate)
}

fn limits() -> Limits {
    Limits {
        max_frame: 2048,
        request_timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

fn get(id: i64, resource: &str) -> Value {
    json!({"id": id, "verb": "GET", "resource": resource})
}

#[tokio::test]
async fn a_handler_answers_200_with_the_request_id() {
    let mut pipe = Pipe::open(&app(limits()));
    let response = pipe.call(get(1, "/hello")).await;
    assert_eq!(response.request_id, Some(RequestId::from(1)));
    assert_eq!(response.code, StatusCode::OK);
    assert_eq!(response.body, json!({"msg": "Hello World!"}));
    let response = pipe
        .call(json!({"id": "s", "verb": "STORE", "resource": "/hello", "body": 1}))
        .await;
    assert_eq!(
        (response.request_id, response.code),
        (Some(RequestId::from("s")), StatusCode::CREATED)
    );
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn captures_and_the_client_reach_the_handler_and_static_routes_win() {
    let mut pipe = Pipe::open(&app(limits()));
    let response = pipe.call(get(1, "/users/42")).await;
    assert_eq!(
        response.body,
        json!({"id": "42", "user": "alice", "fp": "SHA256:abc"})
    );
    assert_eq!(pipe.call(get(2, "/users/me")).await.body, json!("me"));
}

#[tokio::test]
async fn malformed_payload_gets_400_and_the_stream_lives() {
    let mut pipe = Pipe::open(&app(limits()));
    let response = pipe
        .call(json!({"id": 3, "verb": "get", "resource": "/hello"}))
        .await;
    assert_eq!(response.code, StatusCode::BAD_REQUEST);
    assert_eq!(response.request_id, Some(RequestId::from(3)));
    pipe.send_raw(b"\x00\x00\x00\x03{{{").await;
    let response = pipe.recv().await;
    assert_eq!(
        (response.code, response.request_id),
        (StatusCode::BAD_REQUEST, None)
    );
    assert_eq!(pipe.call(get(4, "/hello")).await.code, StatusCode::OK);
}

#[tokio::test]
async fn a_zero_length_frame_gets_400_with_null_id() {
    let mut pipe = Pipe::open(&app(limits()));
    pipe.send_raw(&[0, 0, 0, 0]).await;
    let response = pipe.recv().await;
    assert_eq!(
        (response.code, response.request_id.clone()),
        (StatusCode::BAD_REQUEST, None)
    );
    assert_eq!(pipe.call(get(5, "/hello")).await.code, StatusCode::OK);
}

#[tokio::test]
async fn an_oversized_frame_gets_413_is_skipped_and_the_stream_goes_on() {
    let mut pipe = Pipe::open(&app(limits()));
    let big = json!({"id": 1, "verb": "STORE", "resource": "/hello", "body": "y".repeat(5000)})
        .to_string();
    let mut frame = (big.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(big.as_bytes());
    pipe.send_raw(&frame).await;
    let response = pipe.recv().await;
    assert_eq!(response.code, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.request_id, None);
    assert_eq!(response.body["max_frame_bytes"], json!(2048));
    assert_eq!(
        pipe.call(get(2, "/hello")).await.request_id,
        Some(RequestId::from(2))
    );
}

#[tokio::test]
async fn no_route_is_404_and_a_wrong_verb_is_405_with_allow_in_order() {
    let mut pipe = Pipe::open(&app(limits()));
    let response = pipe.call(get(1, "/nowhere")).await;
    assert_eq!(response.code, StatusCode::NOT_FOUND);
    assert!(response.message().unwrap().contains("/nowhere"));
    let response = pipe
        .call(json!({"id": 2, "verb": "UPDATE", "resource": "/hello", "body": {}}))
        .await;
    assert_eq!(response.code, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.body["allow"], json!(["GET", "STORE", "DELETE"]));
    assert!(response.message().unwrap().contains("UPDATE"));
}

#[tokio::test]
async fn allow_lists_the_verbs_in_the_protocols_order_whatever_the_registration_order() {
    let one = |_r: Request| async { json!(1) };
    let service = KorvServer::new()
        .route("/a", routing::delete(one))
        .route("/a", routing::update(one))
        .route("/a", routing::get(one))
        .route("/b", routing::delete(one).store(one))
        .into_stream_service();
    let mut pipe = Pipe::open(&service);
    let response = pipe
        .call(json!({"id": 1, "verb": "STORE", "resource": "/a", "body": 1}))
        .await;
    assert_eq!(response.code, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.body["allow"], json!(["GET", "UPDATE", "DELETE"]));
    assert!(response.message().is_some(), "a 405 has a message");
    let response = pipe.call(get(2, "/b")).await;
    assert_eq!(response.code, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.body["allow"], json!(["STORE", "DELETE"]));
}

#[tokio::test]
async fn validation_comes_before_routing() {
    let mut pipe = Pipe::open(&app(limits()));
    let response = pipe
        .call(json!({"id": 1, "verb": "STORE", "resource": "/nowhere"}))
        .await;
    assert_eq!(response.code, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_body_that_does_not_fit_the_handlers_type_is_a_400_naming_the_field() {
    let mut pipe = Pipe::open(&app(limits()));
    let response = pipe
        .call(json!({"id": 1, "verb": "STORE", "resource": "/users", "body": {"name": "a", "age": "old"}}))
        .await;
    assert_eq!(response.code, StatusCode::BAD_REQUEST);
    assert!(
        response.message().unwrap().contains("`age`"),
        "{:?}",
        response.message()
    );
    let response = pipe.call(json!({"id": 2, "verb": "STORE", "resource": "/users", "body": {"name": "a", "age": 3}})).await;
    assert_eq!(response.code, StatusCode::CREATED);
}

#[tokio::test]
async fn a_handler_error_is_a_500_with_the_error_and_each_cause() {
    let mut pipe = Pipe::open(&app(limits()));
    let response = pipe.call(get(7, "/fail")).await;
    assert_eq!(response.code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.request_id, Some(RequestId::from(7)));
    assert_eq!(
        response.body["traceback"],
        json!(["database unreachable", "connection refused"])
    );
    assert!(response.message().unwrap().contains("database unreachable"));
}

#[tokio::test]
async fn an_error_with_a_code_answers_with_that_code() {
    let mut pipe = Pipe::open(&app(limits()));
    let response = pipe.call(get(1, "/missing")).await;
    assert_eq!(response.code, StatusCode::NOT_FOUND);
    assert_eq!(response.message(), Some("no such thing"));
}

#[tokio::test]
async fn a_panic_is_a_500_with_message_and_location_and_the_stream_lives() {
    let mut pipe = Pipe::open(&app(limits()));
    let response = pipe.call(get(8, "/panic")).await;
    assert_eq!(response.code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.request_id, Some(RequestId::from(8)));
    let traceback = response.body["traceback"].as_array().unwrap();
    assert_eq!(traceback[0], json!("panic: boom at the handler"));
    assert!(
        traceback[1].as_str().unwrap().contains("tests/stream.rs:"),
        "{traceback:?}"
    );
    assert_eq!(pipe.call(get(9, "/hello")).await.code, StatusCode::OK);
}

#[tokio::test]
async fn tracebacks_can_be_turned_off() {
    let service = KorvServer::new()
        .tracebacks(false)
        .route(
            "/fail",
            routing::get(|_req: Request| async {
                Err::<Value, _>(anyhow::anyhow!("secret detail"))
            }),
        )
        .route(
            "/panic",
            routing::get(|_req: Request| async {
                if true {
                    panic!("secret panic");
                }
                json!(null)
            }),
        )
        .into_stream_service();
    let mut pipe = Pipe::open(&service);
    for resource in ["/fail", "/panic"] {
        let response = pipe.call(get(1, resource)).await;
        assert_eq!(response.code, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.body, json!({"message": "internal server error"}));
    }
}

#[tokio::test]
async fn a_response_above_the_maximum_frame_is_a_500_response_too_large() {
    let mut pipe = Pipe::open(&app(limits()));
    let response = pipe.call(get(11, "/big")).await;
    assert_eq!(response.code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.request_id, Some(RequestId::from(11)));
    assert_eq!(response.message(), Some("response too large"));
}

#[tokio::test]
async fn an_invalid_status_code_from_a_handler_is_a_500() {
    let mut pipe = Pipe::open(&app(limits()));
    let response = pipe.call(get(1, "/badcode")).await;
    assert_eq!(response.code, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.message().unwrap().contains("600"));
}

#[tokio::test]
async fn a_slow_request_does_not_hold_up_a_fast_one() {
    let (service, gate) = gated(limits());
    let mut pipe = Pipe::open(&service);
    pipe.send(get(1, "/hold/1")).await;
    gate.started(1).await;
    // Request 1 is running and cannot finish: request 2 is answered anyway.
    let fast = pipe.call(get(2, "/hello")).await;
    assert_eq!(fast.request_id, Some(RequestId::from(2)));
    gate.release.add_permits(1);
    let slow = pipe.recv().await;
    assert_eq!(slow.request_id, Some(RequestId::from(1)));
    assert_eq!(slow.body, json!({"id": "1"}));
}

#[tokio::test]
async fn eof_drains_the_requests_in_flight() {
    let mut pipe = Pipe::open(&app(limits()));
    for id in 0..20 {
        pipe.send(get(id, "/sleep/100")).await;
    }
    let rest = pipe.finish().await;
    let mut ids: Vec<i64> = rest
        .iter()
        .map(|r| r.request_id.as_ref().unwrap().as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
    assert!(rest.iter().all(|r| r.code == StatusCode::OK));
}

#[tokio::test]
async fn in_flight_requests_are_capped_per_stream_by_backpressure() {
    let service = app(Limits {
        max_in_flight_per_stream: 3,
        ..limits()
    });
    let mut pipe = Pipe::open(&service);
    for id in 0..12 {
        pipe.send(get(id, "/sleep/50")).await;
    }
    let rest = pipe.finish().await;
    assert_eq!(rest.len(), 12);
    let peak = rest
        .iter()
        .map(|r| r.body["concurrent"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(peak <= 3, "at most 3 handlers at once, saw {peak}");
    assert!(peak >= 2, "handlers do run concurrently, saw {peak}");
}

#[tokio::test]
async fn a_stream_at_its_in_flight_limit_stops_reading() {
    use futures_util::FutureExt;
    const FRAMES: u64 = 1000;
    let (service, gate) = gated(Limits {
        max_in_flight_per_stream: 3,
        ..limits()
    });
    // A 4 KiB pipe: once the server stops reading, the client's writes stop.
    let (ours, theirs) = tokio::io::duplex(4096);
    let served = tokio::spawn(async move { service.serve_as(theirs, Pipe::client()).await });
    let (reader, mut writer) = tokio::io::split(ours);
    let padding = "x".repeat(400);
    let request = move |id: u64| {
        frame(&json!({"id": id, "verb": "GET", "resource": format!("/hold/{id}"), "pad": padding}))
    };
    let total: usize = (0..FRAMES).map(|id| request(id).len()).sum();
    // Write frames for as long as the pipe takes them; when a write cannot
    // go on, let every other task run and try again, until nothing moves.
    let mut written = 0;
    let mut next = 0;
    let mut pending = request(next);
    let mut stalled = 0;
    while stalled < 1000 {
        match writer.write(&pending).now_or_never() {
            Some(n) => {
                let n = n.unwrap();
                written += n;
                pending.drain(..n);
                stalled = 0;
                if pending.is_empty() {
                    next += 1;
                    assert!(
                        next < FRAMES,
                        "the client wrote every frame: nothing held it back"
                    );
                    pending = request(next);
                }
            }
            None => {
                stalled += 1;
                tokio::task::yield_now().await;
            }
        }
    }
    gate.started(3).await;
    assert_eq!(
        gate.started.load(Ordering::SeqCst),
        3,
        "three handlers at once"
    );
    // What the server took: the three running requests and at most two reads
    // of its 64 KiB buffer; the rest of the writes wait in the 4 KiB pipe.
    assert!(
        written <= 2 * 64 * 1024 + 4096 + 3 * 500,
        "the server went on reading: {written} of {total} bytes written"
    );
    // Released, every request is answered (1,000 short answers stay under
    // the bound on answers a client leaves unread).
    gate.release.add_permits(FRAMES as usize);
    let rest = tokio::spawn(async move {
        writer.write_all(&pending).await.unwrap();
        for id in next + 1..FRAMES {
            writer.write_all(&request(id)).await.unwrap();
        }
        writer.shutdown().await.unwrap();
    });
    let mut answers = FramedRead::new(reader, korv_proto::KorvCodec::new());
    let mut seen = 0;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(60), answers.next())
        .await
        .expect("every answer in time")
    {
        let korv_proto::Frame::Payload(payload) = frame.unwrap() else {
            panic!("not a response")
        };
        let response = korv_proto::Response::from_payload(&payload).unwrap();
        assert_eq!(response.code, StatusCode::OK);
        seen += 1;
    }
    rest.await.unwrap();
    served.await.unwrap().unwrap();
    assert_eq!(seen, FRAMES);
}

/// Tokio runs the task that a finishing task wakes right after it: without
/// care, each handler's task would wake the stream and its answer would be
/// written (over SSH: sent as a packet) alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn answers_of_handlers_that_finish_together_are_written_together() {
    const REQUESTS: usize = 32;
    let (service, gate) = gated(limits());
    let (mut pipe, writes) = Pipe::open_recorded(&service);
    let mut burst = Vec::new();
    for id in 0..REQUESTS {
        burst.extend(frame(&get(id as i64, &format!("/hold/{id}"))));
    }
    pipe.send_raw(&burst).await;
    gate.started(REQUESTS).await;
    assert!(writes.lock().unwrap().is_empty(), "nothing is answered yet");
    gate.release.add_permits(REQUESTS);
    let mut ids: Vec<i64> = Vec::new();
    for _ in 0..REQUESTS {
        let response = pipe.recv().await;
        assert_eq!(response.code, StatusCode::OK);
        ids.push(response.body["id"].as_str().unwrap().parse().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..REQUESTS as i64).collect::<Vec<_>>());
    // Released from another thread, the handlers may not all finish in one
    // go; one write per answer, or anything near it, is the fault.
    let written = writes.lock().unwrap().len();
    assert!(
        written <= REQUESTS / 8,
        "{REQUESTS} answers that were ready together took {written} writes"
    );
}

#[tokio::test]
async fn a_handler_past_the_request_timeout_gets_504() {
    let service = app(Limits {
        request_timeout: Duration::from_millis(100),
        ..limits()
    });
    let mut pipe = Pipe::open(&service);
    let response = pipe.call(get(5, "/sleep/5000")).await;
    assert_eq!(response.code, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(response.request_id, Some(RequestId::from(5)));
    assert!(response.message().unwrap().contains("100"));
    assert_eq!(pipe.call(get(6, "/hello")).await.code, StatusCode::OK);
}

#[tokio::test]
async fn shutdown_answers_new_requests_503_and_drains_in_flight_ones() {
    let (service, gate) = gated(Limits {
        shutdown_grace: Duration::from_secs(60),
        ..limits()
    });
    let mut pipe = Pipe::open(&service);
    pipe.send(get(1, "/hold/1")).await;
    gate.started(1).await;
    service.shutdown_handle().shutdown();
    // The stream sees the shutdown before any frame that arrives after it.
    let refused = pipe.call(get(2, "/hello")).await;
    assert_eq!(refused.code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.request_id, Some(RequestId::from(2)));
    gate.release.add_permits(1);
    let drained = pipe.recv().await;
    assert_eq!(
        (drained.request_id, drained.code),
        (Some(RequestId::from(1)), StatusCode::OK)
    );
    // With nothing left in flight the server closes the stream by itself.
    let end = pipe.recv_or_end(Duration::from_secs(5)).await;
    assert!(end.is_none());
}

#[tokio::test]
async fn a_request_arriving_on_an_idle_stream_just_after_shutdown_gets_503() {
    let service = app(Limits {
        shutdown_grace: Duration::from_secs(5),
        ..limits()
    });
    let mut pipe = Pipe::open(&service);
    assert_eq!(pipe.call(get(1, "/hello")).await.code, StatusCode::OK);
    // Nothing in flight: the stream lingers rather than closing at once,
    // so a request already on its way is answered, not dropped.
    service.shutdown_handle().shutdown();
    let refused = pipe.call(get(2, "/hello")).await;
    assert_eq!(
        (refused.request_id, refused.code),
        (Some(RequestId::from(2)), StatusCode::SERVICE_UNAVAILABLE)
    );
    // Then, quiet, it closes by itself.
    let end = pipe.recv_or_end(Duration::from_secs(5)).await;
    assert!(end.is_none());
}

#[tokio::test]
async fn requests_still_running_when_the_grace_period_ends_get_503() {
    let (service, gate) = gated(Limits {
        shutdown_grace: Duration::from_millis(200),
        ..limits()
    });
    let mut pipe = Pipe::open(&service);
    pipe.send(get(1, "/hold/1")).await;
    gate.started(1).await;
    service.shutdown_handle().shutdown();
    let response = pipe.recv().await;
    assert_eq!(
        (response.request_id, response.code),
        (Some(RequestId::from(1)), StatusCode::SERVICE_UNAVAILABLE)
    );
    // The handler never finished: the grace period ended it, not its end.
    assert_eq!(gate.release.available_permits(), 0);
}

#[tokio::test]
async fn a_partial_frame_at_eof_is_dropped_and_the_stream_closes_cleanly() {
    let mut pipe = Pipe::open(&app(limits()));
    pipe.send(get(1, "/hello")).await;
    pipe.send_raw(&[0, 0, 0, 50, b'{']).await;
    let rest = pipe.finish().await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].request_id, Some(RequestId::from(1)));
}

#[test]
#[should_panic(expected = "route conflict: GET \"/users/{name}\"")]
fn registering_the_same_verb_and_pattern_twice_panics_with_a_message() {
    let mut server = KorvServer::new();
    server.add_callback(Verb::Get, "/users/{id}", |_r: Request| async { json!(1) });
    server.add_callback(Verb::Get, "/users/{name}", |_r: Request| async { json!(2) });
}

#[test]
fn try_route_reports_conflicts_and_bad_patterns() {
    let one = |_r: Request| async { json!(1) };
    let server = KorvServer::new()
        .try_route("/a", routing::get(one))
        .unwrap();
    let server = server.try_route("/a", routing::store(one)).unwrap();
    let err = server.try_route("/a", routing::get(one)).err().unwrap();
    assert!(err.to_string().contains("already registered"), "{err}");
    let err = KorvServer::new()
        .try_route("a", routing::get(one))
        .err()
        .unwrap();
    assert!(err.to_string().contains("must start with '/'"), "{err}");
}

#[test]
fn a_verb_given_twice_for_one_pattern_is_a_conflict() {
    let one = |_r: Request| async { json!(1) };
    let err = KorvServer::new()
        .try_route("/a", routing::get(one).store(one).get(one))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("route conflict: GET \"/a\" is already registered"),
        "{err}"
    );
    let err = KorvServer::new()
        .route("/a/{id}", routing::store(one))
        .try_route("/a/{name}", routing::any(one))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("STORE \"/a/{name}\" is already registered (as \"/a/{id}\")"),
        "{err}"
    );
}

#[test]
fn route_panics_with_the_conflict() {
    let one = |_r: Request| async { json!(1) };
    let server = KorvServer::new().route("/a", routing::delete(one));
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        server.route("/a", routing::update(one).delete(one))
    }))
    .err()
    .expect("a conflicting route panics");
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("route conflict: DELETE \"/a\""),
        "{message}"
    );
}

#[tokio::test]
async fn any_serves_every_verb_and_routes_on_one_pattern_add_up() {
    let verb = |r: Request| async move { json!(r.verb().as_str()) };
    let service = KorvServer::new()
        .route("/any", routing::any(verb))
        .route("/some", routing::get(verb))
        .route("/some", routing::update(verb))
        .into_stream_service();
    let mut pipe = Pipe::open(&service);
    for (id, verb) in (0..).zip(Verb::ALL) {
        let request = json!({"id": id, "verb": verb.as_str(), "resource": "/any", "body": 1});
        let response = pipe.call(request).await;
        assert_eq!(response.code, StatusCode::OK);
        assert_eq!(response.body, json!(verb.as_str()));
    }
    let response = pipe
        .call(json!({"id": 9, "verb": "UPDATE", "resource": "/some", "body": 1}))
        .await;
    assert_eq!(response.body, json!("UPDATE"));
    let response = pipe
        .call(json!({"id": 10, "verb": "DELETE", "resource": "/some"}))
        .await;
    assert_eq!(response.code, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.body["allow"], json!(["GET", "UPDATE"]));
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn a_client_that_never_reads_answers_has_its_stream_closed_at_the_bound() {
    // Answers waiting for a client that does not read them are bounded (8
    // maximum frames, at least 64 KiB): beyond it the stream is closed
    // rather than the server queueing answers without end.
    let calls = Arc::new(AtomicUsize::new(0));
    let service = KorvServer::with_state(Arc::clone(&calls))
        .limits(Limits {
            max_frame: 4096,
            ..limits()
        })
        .route(
            "/count",
            routing::get(|_r: Request, calls: Arc<AtomicUsize>| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                json!("x".repeat(200))
            }),
        )
        .into_stream_service();
    // 1 KiB of pipe each way: a few answers fill the client's unread side.
    let (ours, theirs) = tokio::io::duplex(1024);
    let served = tokio::spawn(async move {
        service
            .serve_as(
                theirs,
                ClientInfo::new("alice", "SHA256:abc", "ssh-ed25519", "", None),
            )
            .await
    });
    let (_reader, mut writer) = tokio::io::split(ours);
    let sending = tokio::spawn(async move {
        for id in 0..2000 {
            if writer.write_all(&frame(&get(id, "/count"))).await.is_err() {
                return id;
            }
        }
        2000
    });
    let outcome = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the stream is closed, not left waiting on the client")
        .unwrap();
    let err = outcome.expect_err("the stream ends with an error");
    assert!(err.to_string().contains("does not read"), "{err}");
    let handled = calls.load(Ordering::SeqCst);
    // 64 KiB of ~230-byte answers, plus what the pipe and one batch hold.
    assert!(
        handled < 400,
        "the server handled {handled} requests for a client that reads nothing"
    );
    let sent = sending.await.unwrap();
    assert!(sent < 2000, "the client could write all its requests");
}
