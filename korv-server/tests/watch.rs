//! Watches (`WATCH` / `UNWATCH`, protocol 1.1) over an in-memory pipe, no
//! SSH: each line of the protocol's section on subscriptions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream;
use korv_server::routing::{self, get, watch};
use korv_server::{Error, KorvServer, Limits, Request, Response, StatusCode, StreamService};
use korv_testkit::pipe::Pipe;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The events of `/hub/{name}` watches: every watcher of a name gets each
/// event published on it; publishing never waits.
#[derive(Clone, Default)]
struct Hub {
    watchers: Arc<Mutex<Vec<Subscriber>>>,
}

/// A watcher's name and queue.
type Subscriber = (String, mpsc::UnboundedSender<Value>);

impl Hub {
    fn subscribe(&self, name: &str) -> mpsc::UnboundedReceiver<Value> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.watchers.lock().unwrap().push((name.to_owned(), tx));
        rx
    }

    /// Sends `event` to every live watcher of `name`; returns how many got it.
    fn publish_on(&self, name: &str, event: Value) -> usize {
        let mut watchers = self.watchers.lock().unwrap();
        watchers.retain(|(_, w)| !w.is_closed());
        watchers
            .iter()
            .filter(|(n, w)| n == name && w.send(event.clone()).is_ok())
            .count()
    }

    /// Publishes on `a`.
    fn publish(&self, event: Value) -> usize {
        self.publish_on("a", event)
    }

    fn watchers(&self) -> usize {
        let mut watchers = self.watchers.lock().unwrap();
        watchers.retain(|(_, w)| !w.is_closed());
        watchers.len()
    }
}

async fn hub_events(
    req: Request,
    hub: Hub,
) -> Result<impl futures_util::Stream<Item = Value> + use<>, Error> {
    let mut events = hub.subscribe(req.param("name").unwrap());
    Ok(stream::poll_fn(move |cx| events.poll_recv(cx)))
}

fn app(limits: Limits) -> (StreamService<Hub>, Hub) {
    let hub = Hub::default();
    let service = KorvServer::with_state(hub.clone())
        .limits(limits)
        .route(
            "/hello",
            get(|_req: Request| async { (200, json!({"msg": "Hello World!"})) }),
        )
        .route(
            "/hub/{name}",
            get(|_req: Request| async { json!("state") }).watch(hub_events),
        )
        .route(
            "/count/{n}",
            watch(|req: Request| async move {
                let n: u64 = req.param("n").unwrap().parse().unwrap();
                Ok::<_, Error>(stream::iter((1..=n).map(|i| json!({"i": i}))))
            }),
        )
        .route(
            "/refuse",
            watch(|_req: Request| async {
                Err::<stream::Empty<Value>, _>(Error::new(404, "no such job"))
            }),
        )
        .route(
            "/params",
            watch(|req: Request| async move { Ok::<_, Error>(stream::iter([req.body_value()])) }),
        )
        .into_stream_service();
    (service, hub)
}

fn watch_request(id: u64, resource: &str) -> Value {
    json!({"id": id, "verb": "WATCH", "resource": resource})
}

fn unwatch_request(id: u64, target: Value) -> Value {
    json!({"id": id, "verb": "UNWATCH", "resource": "/hub/a", "body": {"request_id": target}})
}

/// Asserts `frame` is frame `seq` of watch `id` with `code` and `more`.
#[track_caller]
fn assert_frame(frame: &Response, id: u64, seq: u64, code: u16, more: bool) {
    assert_eq!(
        frame.request_id.as_ref().and_then(|i| i.as_u64()),
        Some(id),
        "{frame:?}"
    );
    assert_eq!(frame.seq, Some(seq), "{frame:?}");
    assert_eq!(frame.more, Some(more), "{frame:?}");
    assert_eq!(frame.code.as_u16(), code, "{frame:?}");
}

/// Reads frames until one for `id` comes; the others are returned too.
async fn recv_for(pipe: &mut Pipe, id: u64) -> (Response, Vec<Response>) {
    let mut others = Vec::new();
    loop {
        let frame = pipe.recv().await;
        if frame.request_id.as_ref().and_then(|i| i.as_u64()) == Some(id) {
            return (frame, others);
        }
        others.push(frame);
    }
}

#[tokio::test]
async fn a_watch_is_confirmed_then_sends_gapless_events_then_one_final_frame() {
    let (service, _hub) = app(Limits::default());
    let mut pipe = Pipe::open(&service);
    pipe.send(watch_request(7, "/count/3")).await;
    let confirmation = pipe.recv().await;
    assert_eq!(
        serde_json::to_string(&confirmation).unwrap(),
        r#"{"request_id":7,"code":200,"body":null,"seq":0,"more":true}"#,
        "the confirmation frame, byte for byte"
    );
    for i in 1..=3 {
        let event = pipe.recv().await;
        assert_frame(&event, 7, i, 200, true);
        assert_eq!(event.body, json!({"i": i}));
    }
    let last = pipe.recv().await;
    assert_frame(&last, 7, 4, 200, false);
    assert_eq!(last.body, Value::Null, "the handler finished it");
    assert!(
        pipe.finish().await.is_empty(),
        "nothing after the final frame"
    );
}

#[tokio::test]
async fn the_watch_handler_gets_the_body_as_its_parameters() {
    let (service, _hub) = app(Limits::default());
    let mut pipe = Pipe::open(&service);
    let request = json!({"id": "w", "verb": "WATCH", "resource": "/params", "body": {"since": 5}});
    pipe.send(request).await;
    assert_eq!(pipe.recv().await.seq, Some(0));
    let event = pipe.recv().await;
    assert_eq!(
        event.request_id,
        Some("w".into()),
        "a string id is echoed as a string"
    );
    assert_eq!(event.body, json!({"since": 5}));
    assert_eq!(pipe.recv().await.more, Some(false));
}

#[tokio::test]
async fn a_refused_watch_is_one_ordinary_response() {
    let (service, _hub) = app(Limits::default());
    let mut pipe = Pipe::open(&service);
    let refused = pipe.call(watch_request(1, "/refuse")).await;
    assert_eq!(refused.code, StatusCode::NOT_FOUND);
    assert_eq!(refused.message(), Some("no such job"));
    assert_eq!((refused.seq, refused.more), (None, None));
    let payload = serde_json::to_string(&refused).unwrap();
    assert!(
        !payload.contains("seq") && !payload.contains("more"),
        "{payload}"
    );
    let unknown = pipe.call(watch_request(2, "/nowhere")).await;
    assert_eq!(unknown.code, StatusCode::NOT_FOUND);
    assert_eq!((unknown.seq, unknown.more), (None, None));
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn a_405_lists_watch_last_in_allow() {
    let (service, _hub) = app(Limits::default());
    let mut pipe = Pipe::open(&service);
    let response = pipe
        .call(json!({"id": 1, "verb": "STORE", "resource": "/hub/a", "body": 1}))
        .await;
    assert_eq!(response.code, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.body["allow"], json!(["GET", "WATCH"]));
    let response = pipe.call(watch_request(2, "/hello")).await;
    assert_eq!(response.code, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.body["allow"], json!(["GET"]));
    let response = pipe
        .call(json!({"id": 3, "verb": "GET", "resource": "/count/1"}))
        .await;
    assert_eq!(response.body["allow"], json!(["WATCH"]));
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn events_interleave_with_ordinary_requests_on_the_same_stream() {
    let (service, hub) = app(Limits::default());
    let mut pipe = Pipe::open(&service);
    pipe.send(watch_request(1, "/hub/a")).await;
    assert_frame(&pipe.recv().await, 1, 0, 200, true);
    for round in 0..5_u64 {
        assert_eq!(hub.publish(json!({"round": round})), 1);
        let (event, _) = recv_for(&mut pipe, 1).await;
        assert_frame(&event, 1, round + 1, 200, true);
        assert_eq!(event.body, json!({"round": round}));
        let hello = pipe
            .call(json!({"id": 100 + round, "verb": "GET", "resource": "/hello"}))
            .await;
        assert_eq!(hello.code, StatusCode::OK);
        assert_eq!((hello.seq, hello.more), (None, None));
    }
    pipe.send(unwatch_request(2, json!(1))).await;
    let answer = pipe.recv().await;
    assert_eq!(answer.request_id, Some(2.into()));
    assert_eq!(answer.code, StatusCode::OK);
    assert_frame(&pipe.recv().await, 1, 6, 410, false);
}

#[tokio::test]
async fn unwatch_is_answered_200_before_the_watchs_final_410() {
    let (service, hub) = app(Limits::default());
    let mut pipe = Pipe::open(&service);
    pipe.send(watch_request(7, "/hub/a")).await;
    assert_frame(&pipe.recv().await, 7, 0, 200, true);
    hub.publish(json!("e1"));
    assert_frame(&pipe.recv().await, 7, 1, 200, true);
    pipe.send(unwatch_request(8, json!(7))).await;
    let answer = pipe.recv().await;
    assert_eq!(
        serde_json::to_string(&answer).unwrap(),
        r#"{"request_id":8,"code":200,"body":null}"#
    );
    let last = pipe.recv().await;
    assert_frame(&last, 7, 2, 410, false);
    assert_eq!(last.message(), Some("cancelled by the client"));
    // The handler's stream is dropped: the hub sees no watcher left.
    let again = pipe.call(unwatch_request(9, json!(7))).await;
    assert_eq!(again.code, StatusCode::NOT_FOUND, "no longer active");
    assert_eq!(hub.watchers(), 0, "the handler's stream was dropped");
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn unwatch_of_an_unknown_id_is_404_and_a_bad_body_is_400() {
    let (service, _hub) = app(Limits::default());
    let mut pipe = Pipe::open(&service);
    let unknown = pipe.call(unwatch_request(1, json!(99))).await;
    assert_eq!(unknown.code, StatusCode::NOT_FOUND);
    assert!(unknown.message().is_some());
    // An id of another type is another id: "99" is not 99.
    pipe.send(watch_request(99, "/hub/a")).await;
    assert_eq!(pipe.recv().await.seq, Some(0));
    let string = pipe.call(unwatch_request(2, json!("99"))).await;
    assert_eq!(string.code, StatusCode::NOT_FOUND);
    for (id, body) in [
        (3, json!({})),
        (4, json!({"request_id": null})),
        (5, json!({"request_id": 1.5})),
        (6, json!({"request_id": [99]})),
        (7, json!([99])),
        (8, json!(99)),
    ] {
        let answer = pipe
            .call(json!({"id": id, "verb": "UNWATCH", "resource": "/hub/a", "body": body}))
            .await;
        assert_eq!(answer.code, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer.request_id, Some(id.into()));
        assert!(
            answer.message().unwrap().contains("request_id"),
            "{answer:?}"
        );
    }
    let bodiless = pipe
        .call(json!({"id": 9, "verb": "UNWATCH", "resource": "/hub/a"}))
        .await;
    assert_eq!(bodiless.code, StatusCode::BAD_REQUEST);
    // The watch lived through all of that.
    let answer = pipe.call(unwatch_request(10, json!(99))).await;
    assert_eq!(answer.code, StatusCode::OK);
    assert_frame(&pipe.recv().await, 99, 1, 410, false);
}

#[tokio::test]
async fn a_watch_above_the_streams_limit_is_429_and_watches_are_not_requests_in_flight() {
    let (service, _hub) = app(Limits {
        max_watches_per_stream: 2,
        max_in_flight_per_stream: 1,
        ..Limits::default()
    });
    let mut pipe = Pipe::open(&service);
    for id in [1, 2] {
        pipe.send(watch_request(id, "/hub/a")).await;
        assert_frame(&pipe.recv().await, id, 0, 200, true);
    }
    let refused = pipe.call(watch_request(3, "/hub/a")).await;
    assert_eq!(refused.code, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.message().is_some());
    assert_eq!((refused.seq, refused.more), (None, None));
    // Two watches, and the one request in flight allowed still runs.
    let hello = pipe
        .call(json!({"id": 4, "verb": "GET", "resource": "/hello"}))
        .await;
    assert_eq!(hello.code, StatusCode::OK);
    pipe.send(unwatch_request(5, json!(1))).await;
    assert_eq!(pipe.recv().await.code, StatusCode::OK);
    assert_frame(&pipe.recv().await, 1, 1, 410, false);
    pipe.send(watch_request(6, "/hub/a")).await;
    assert_frame(&pipe.recv().await, 6, 0, 200, true);
}

#[tokio::test]
async fn a_watch_outlives_the_request_timeout() {
    let (service, hub) = app(Limits {
        request_timeout: Duration::from_millis(20),
        ..Limits::default()
    });
    let mut pipe = Pipe::open(&service);
    pipe.send(watch_request(1, "/hub/a")).await;
    assert_frame(&pipe.recv().await, 1, 0, 200, true);
    // The condition under test: time passes, well beyond the timeout.
    tokio::time::sleep(Duration::from_millis(200)).await;
    hub.publish(json!("late"));
    let event = pipe.recv().await;
    assert_frame(&event, 1, 1, 200, true);
    assert_eq!(event.body, json!("late"));
}

#[tokio::test]
async fn at_the_clients_eof_every_watch_ends_410_before_the_stream_closes() {
    let (service, hub) = app(Limits::default());
    let mut pipe = Pipe::open(&service);
    for id in [1, 2, 3] {
        pipe.send(watch_request(id, "/hub/a")).await;
        assert_frame(&pipe.recv().await, id, 0, 200, true);
    }
    hub.publish(json!("before EOF"));
    let mut rest = pipe.finish().await;
    rest.sort_by_key(|f| (f.request_id.as_ref().and_then(|i| i.as_u64()), f.seq));
    assert_eq!(rest.len(), 6, "{rest:?}");
    for (i, id) in [1, 2, 3].into_iter().enumerate() {
        assert_frame(&rest[2 * i], id, 1, 200, true);
        assert_frame(&rest[2 * i + 1], id, 2, 410, false);
    }
    assert_eq!(hub.watchers(), 0);
}

#[tokio::test]
async fn on_shutdown_every_watch_ends_503() {
    let (service, _hub) = app(Limits {
        shutdown_grace: Duration::from_secs(30),
        ..Limits::default()
    });
    let mut pipe = Pipe::open(&service);
    for id in [1, 2] {
        pipe.send(watch_request(id, "/hub/a")).await;
        assert_frame(&pipe.recv().await, id, 0, 200, true);
    }
    service.shutdown_handle().shutdown();
    let mut ends = [pipe.recv().await, pipe.recv().await];
    ends.sort_by_key(|f| f.request_id.as_ref().and_then(|i| i.as_u64()));
    assert_frame(&ends[0], 1, 1, 503, false);
    assert_frame(&ends[1], 2, 1, 503, false);
    assert!(ends[0].message().unwrap().contains("shutting down"));
    let refused = pipe.call(watch_request(3, "/hub/a")).await;
    assert_eq!(refused.code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.seq, None,
        "a new watch is refused with an ordinary 503"
    );
    // The stream closes once quiet, well within the grace period.
    assert!(pipe.finish().await.is_empty());
}

#[tokio::test]
async fn a_watcher_that_does_not_read_ends_503_after_every_queued_event_and_nothing_else_waits() {
    let (service, hub) = app(Limits {
        watch_queue: 8,
        ..Limits::default()
    });
    let mut pipe = Pipe::open(&service);
    pipe.send(watch_request(1, "/hub/a")).await;
    assert_frame(&pipe.recv().await, 1, 0, 200, true);
    // A second watch on the same stream, quiet.
    pipe.send(watch_request(2, "/hub/b")).await;
    assert_frame(&pipe.recv().await, 2, 0, 200, true);
    // The test stops reading. 3,000 events of 1 KiB are three times what
    // the pipe buffers: publishing them never waits all the same.
    let events = 3_000_u64;
    let padding = "x".repeat(1024);
    for n in 0..events {
        assert_eq!(hub.publish(json!({"n": n, "pad": padding})), 1);
    }
    // Now it reads: every event in order up to the end, which is 503.
    let mut seq = 1;
    let last = loop {
        let frame = pipe.recv().await;
        if frame.more == Some(false) {
            break frame;
        }
        assert_frame(&frame, 1, seq, 200, true);
        assert_eq!(frame.body["n"], json!(seq - 1), "no event skipped");
        seq += 1;
    };
    assert_frame(&last, 1, seq, 503, false);
    assert!(last.message().unwrap().contains("fast enough"), "{last:?}");
    assert!(
        seq - 1 < events,
        "the watch ended before all {events} events"
    );
    // The stream and the other watch live on.
    let hello = pipe
        .call(json!({"id": 9, "verb": "GET", "resource": "/hello"}))
        .await;
    assert_eq!(hello.code, StatusCode::OK);
    assert_eq!(hub.publish_on("b", json!("still here")), 1);
    let event = pipe.recv().await;
    assert_frame(&event, 2, 1, 200, true);
    assert_eq!(event.body, json!("still here"));
    pipe.send(watch_request(3, "/hub/a")).await;
    assert_frame(&pipe.recv().await, 3, 0, 200, true);
}

#[tokio::test]
async fn a_watch_id_already_active_on_the_stream_is_refused() {
    let (service, _hub) = app(Limits::default());
    let mut pipe = Pipe::open(&service);
    pipe.send(watch_request(1, "/hub/a")).await;
    assert_frame(&pipe.recv().await, 1, 0, 200, true);
    let twice = pipe.call(watch_request(1, "/hub/a")).await;
    assert_eq!(twice.code, StatusCode::BAD_REQUEST);
    assert_eq!(twice.seq, None);
}

#[tokio::test]
async fn request_handlers_cannot_take_watch_verbs_and_a_route_has_one_watch_handler() {
    let result = KorvServer::new().try_route(
        "/x",
        routing::on(korv_server::Verb::Watch, |_req: Request| async { json!(1) }),
    );
    assert!(matches!(
        result.err(),
        Some(korv_server::RouteError::WatchVerb { .. })
    ));
    let twice = KorvServer::<()>::new().try_route(
        "/x",
        watch(|_r: Request| async { Ok::<_, Error>(stream::empty::<Value>()) })
            .watch(|_r: Request| async { Ok::<_, Error>(stream::empty::<Value>()) }),
    );
    assert!(matches!(
        twice.err(),
        Some(korv_server::RouteError::Conflict { .. })
    ));
}

#[tokio::test]
async fn a_watch_on_a_korv_0_2_1_stream_is_400() {
    let (service, _hub) = app(Limits::default());
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let server = service.clone();
    let served =
        tokio::spawn(async move { server.serve_legacy_as(theirs, Pipe::client(), 32_768).await });
    let request = json!({"id": 1.5, "verb": "WATCH", "resource": "/hub/a", "body": null});
    let answer = legacy_call(ours, &request).await;
    assert_eq!(answer["code"], json!(400));
    assert_eq!(answer["request_id"], json!(1.5));
    assert!(answer.get("seq").is_none());
    served.abort();
}

/// Sends one korv 0.2.1 request (a gzip member) and reads one answer.
async fn legacy_call(mut io: tokio::io::DuplexStream, request: &Value) -> Value {
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(serde_json::to_string(request).unwrap().as_bytes())
        .unwrap();
    io.write_all(&gz.finish().unwrap()).await.unwrap();
    let mut buf = vec![0; 65_536];
    let n = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&buf[..n])
        .read_to_string(&mut text)
        .unwrap();
    serde_json::from_str(&text).unwrap()
}
