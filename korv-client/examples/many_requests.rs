//! Many requests in flight at once from one client: each task gets a clone,
//! and every clone shares the one SSH connection and its multiplexed stream.
//!
//! Start a server that answers `STORE /echo` (`korv serve`, or the korv-server
//! `hello` example), then:
//!
//! ```sh
//! cargo run -p korv-cli --bin korv -- serve --listen 127.0.0.1:8022 &
//! cargo run -p korv-client --example many_requests -- localhost 8022 1000
//! ```
//!
//! It uses your `~/.ssh` keys or ssh-agent, and trusts the server's host key
//! on first use (accept-new), recording it in `~/.ssh/known_hosts`.

use std::time::Instant;

use korv_client::{ClientConfig, HostKeyPolicy, KorvClient};
use serde_json::json;
use tokio::task::JoinSet;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "localhost".into());
    let port = args.next().and_then(|p| p.parse().ok()).unwrap_or(8022);
    let count: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);

    let client = KorvClient::connect(
        ClientConfig::new(host)
            .port(port)
            .host_key_policy(HostKeyPolicy::AcceptNew),
    )
    .await?;

    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for n in 0..count {
        // A clone is a handle to the same connection: cheap, and `Send`.
        let client = client.clone();
        tasks.spawn(async move {
            let answer = client.store("/echo", &json!({ "n": n })).await?;
            // Answers come back in any order; the client matches each to its
            // request by id, so every task gets its own.
            assert_eq!(answer.body["body"]["n"], n, "an answer to another request");
            Ok::<_, korv_client::Error>(answer.code)
        });
    }
    let mut ok = 0;
    while let Some(done) = tasks.join_next().await {
        if done??.is_success() {
            ok += 1;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{ok} of {count} requests answered 2xx in {elapsed:.2?} over one connection ({:.0} requests/s)",
        count as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
