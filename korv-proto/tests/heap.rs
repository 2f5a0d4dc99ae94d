//! A large frame keeps large blocks in glibc's heap (`korv-proto`'s `heap`
//! module): after it, the buffers of a large request are not handed back to
//! the kernel and faulted in again on the next one.
//!
//! Each case runs in a process of its own, so that the allocator's state is
//! the case's alone.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use bytes::BytesMut;
use korv_proto::{KorvCodec, RequestId, Response, StatusCode};
use tokio_util::codec::{Decoder, Encoder};

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat is readable");
    // The command name, in parentheses, may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')').expect("a command name") + 2..];
    after_name
        .split(' ')
        .nth(7)
        .and_then(|field| field.parse().ok())
        .expect("minflt is the 10th field")
}

const MIB: usize = 1024 * 1024;

/// Buffers of a 1 MiB request's size, three at a time, as a server has for
/// one echo (the frame, the body, the answer): each written through, then
/// all freed. Returns the page faults this took.
fn requests(rounds: usize) -> u64 {
    let before = minor_faults();
    for _ in 0..rounds {
        let buffers: Vec<Vec<u8>> = (0..3)
            .map(|_| {
                let mut buffer = Vec::with_capacity(MIB);
                buffer.resize(MIB, 1u8);
                std::hint::black_box(buffer)
            })
            .collect();
        drop(std::hint::black_box(buffers));
    }
    minor_faults() - before
}

/// Runs the scenario in a process of its own (this test binary again), so
/// that the allocator's state is the scenario's alone: `trigger` names how
/// the process comes to see its first large frame.
fn in_own_process(trigger: &str) {
    // Any of these turns glibc's rule off (mallopt(3)); the arena count
    // does not.
    let fixed = [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_TOP_PAD_",
        "MALLOC_MMAP_MAX_",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some())
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|tunables| tunables.contains("malloc."));
    if fixed {
        eprintln!("skipped: glibc's malloc thresholds are set in the environment");
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "scenario", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, trigger)
        .output()
        .expect("this test binary runs");
    assert!(
        output.status.success(),
        "the scenario failed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the scenario did not run"
    );
}

/// Set to `read` or `written` in the process that runs [`scenario`].
const SCENARIO: &str = "KORV_HEAP_SCENARIO";

#[test]
fn after_a_large_frame_read_the_buffers_of_large_requests_are_not_faulted_in_again() {
    in_own_process("read");
}

#[test]
fn after_a_large_frame_written_the_buffers_of_large_requests_are_not_faulted_in_again() {
    in_own_process("written");
}

/// The scenario itself; it does nothing unless [`SCENARIO`] says how the
/// first large frame comes.
#[test]
fn scenario() {
    let Ok(trigger) = std::env::var(SCENARIO) else {
        return;
    };
    const ROUNDS: usize = 10;
    // One 1 MiB block mapped and freed: glibc's thresholds rise to about
    // 1 and 2 MiB, too low for three such buffers, whose free then trims
    // the heap. Every round faults its 3 MiB in again (768 pages).
    drop(std::hint::black_box(Vec::<u8>::with_capacity(MIB)));
    let without = requests(ROUNDS);
    assert!(
        without >= (ROUNDS as u64 - 1) * 600,
        "the control should fault its buffers in every round: {without} faults in {ROUNDS} rounds"
    );

    let mut codec = KorvCodec::new();
    match trigger.as_str() {
        // A frame header announcing 600 KiB.
        "read" => {
            let mut wire = BytesMut::from(&(600u32 * 1024).to_be_bytes()[..]);
            assert_eq!(codec.decode(&mut wire).expect("a header"), None);
        }
        // An answer of 600 KiB.
        "written" => {
            let body = serde_json::Value::String("x".repeat(600 * 1024));
            let response = Response::new(RequestId::from(1), StatusCode::OK, body);
            let mut out = BytesMut::new();
            codec.encode(&response, &mut out).expect("encoded");
        }
        other => panic!("no scenario {other:?}"),
    }

    // The first round faults its 3 MiB in once more (the control's last
    // free trimmed them); none after it.
    let with = requests(ROUNDS);
    assert!(
        with <= 3 * 256 + 100,
        "after a large frame {trigger}, {ROUNDS} rounds of 1 MiB buffers took {with} page \
         faults, more than the first round's 768; {without} before it"
    );
}
