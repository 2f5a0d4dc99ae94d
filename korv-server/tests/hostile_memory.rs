//! An announced 4 GiB − 1 frame costs the server no memory: a frame above the
//! maximum is answered 413 as soon as its length is read, and its payload is
//! skipped as it arrives, never buffered. Alone in its own test binary, so
//! that no other test's allocations blur the measurement.

use korv_server::routing::get;
use korv_server::{KorvServer, Limits, Request, RequestId, StatusCode};
use korv_testkit::frame::frame;
use korv_testkit::pipe::Pipe;
use serde_json::json;

/// Bytes of payload sent before the second measurement.
const SENT_BEFORE_MEASURING: u64 = 64 << 20;

/// The allowed growth of resident memory.
const ALLOWED_GROWTH: u64 = 32 << 20;

/// The page size, from the auxiliary vector (`AT_PAGESZ`); 4096 if unreadable.
fn page_size() -> u64 {
    const AT_PAGESZ: u64 = 6;
    let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
    auxv.chunks_exact(16)
        .map(|pair| {
            let key = u64::from_ne_bytes(pair[..8].try_into().unwrap());
            let value = u64::from_ne_bytes(pair[8..].try_into().unwrap());
            (key, value)
        })
        .find(|&(key, _)| key == AT_PAGESZ)
        .map_or(4096, |(_, value)| value)
}

/// Resident set size in bytes, from `/proc/self/statm` (second field, in pages).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * page_size()
}

#[tokio::test]
async fn a_4_gib_frame_is_answered_413_and_skipped_without_buffering_it() {
    let service = KorvServer::new()
        .limits(Limits::default())
        .route(
            "/hello",
            get(|_req: Request| async { (200, json!({"msg": "Hello World!"})) }),
        )
        .into_stream_service();
    let mut pipe = Pipe::open(&service);
    let hello = |id: i64| frame(&json!({"id": id, "verb": "GET", "resource": "/hello"}));
    // The chunk is allocated before the first measurement; it is a run of valid
    // frames, which the server must not take for requests.
    let chunk: Vec<u8> = hello(666).into_iter().cycle().take(1 << 20).collect();

    // Warm up: the stream's buffers exist before the first measurement.
    pipe.send_raw(&hello(1)).await;
    let warm = pipe.recv().await;
    assert_eq!(
        (warm.code, warm.request_id),
        (StatusCode::OK, Some(RequestId::from(1)))
    );
    let before = resident_bytes();

    let len = u32::MAX;
    pipe.send_raw(&len.to_be_bytes()).await;
    let too_large = pipe.recv().await;
    assert_eq!(
        (too_large.code, too_large.request_id.clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, None)
    );
    assert_eq!(
        too_large.body["max_frame_bytes"],
        json!(korv_proto::DEFAULT_MAX_FRAME)
    );

    let mut left = u64::from(len);
    let mut sent = 0;
    while sent < SENT_BEFORE_MEASURING {
        pipe.send_raw(&chunk).await;
        sent += chunk.len() as u64;
    }
    left -= sent;
    // The duplex pipe holds at most 1 MiB: everything else reached the server.
    let during = resident_bytes();
    assert!(
        during.saturating_sub(before) < ALLOWED_GROWTH,
        "after {sent} bytes of an oversized payload, resident memory grew from {before} to {during} bytes"
    );

    // The rest of the payload, then a request that must be answered.
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap();
        pipe.send_raw(&chunk[..n]).await;
        left -= n as u64;
    }
    let after = resident_bytes();
    assert!(
        after.saturating_sub(before) < ALLOWED_GROWTH,
        "after the whole 4 GiB payload, resident memory grew from {before} to {after} bytes"
    );
    pipe.send_raw(&hello(2)).await;
    let alive = pipe.recv().await;
    assert_eq!(
        (alive.code, alive.request_id),
        (StatusCode::OK, Some(RequestId::from(2)))
    );
    assert_eq!(alive.body, json!({"msg": "Hello World!"}));

    let end = pipe.finish().await;
    assert!(end.is_empty(), "no answer after EOF: {end:?}");
}
