//! Graceful shutdown, three ways: Ctrl-C or SIGTERM, a request to
//! `STORE /stop`, or anything else holding a `ShutdownHandle`. Each stops
//! new connections and requests; requests in flight finish first (within
//! `Limits::shutdown_grace`), then `run_until` returns.
//!
//! ```sh
//! ssh-keygen -t ed25519 -N '' -f /tmp/korv_host_key
//! cargo run -p korv-server --example shutdown -- /tmp/korv_host_key ~/.ssh/authorized_keys
//! ```
//!
//! then, in another terminal (`korv` is `cargo run -p korv-cli --`), start a
//! slow request and stop the server while it runs: the slow request still
//! gets its answer.
//!
//! ```sh
//! korv get korv://localhost:8022/slow --accept-new &
//! korv store korv://localhost:8022/stop '{}'
//! ```

use std::sync::Arc;
use std::time::Duration;

use korv_server::routing::{get, store};
use korv_server::{KorvServer, Request, shutdown_signal};
use serde_json::{Value, json};
use tokio::sync::Notify;

async fn slow(_req: Request) -> Value {
    tokio::time::sleep(Duration::from_secs(3)).await;
    json!("finished, even though the server was stopping")
}

async fn stop(_req: Request, stop: Arc<Notify>) -> (u16, Value) {
    stop.notify_one();
    (202, json!({"message": "shutting down"}))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let (Some(host_key), Some(authorized_keys)) = (args.next(), args.next()) else {
        eprintln!("usage: shutdown HOST_KEY AUTHORIZED_KEYS");
        std::process::exit(2);
    };
    let stop_requested = Arc::new(Notify::new());
    let bound = KorvServer::with_state(Arc::clone(&stop_requested))
        .host_key_file(host_key)
        .authorized_keys_file(authorized_keys)
        .listen(([127, 0, 0, 1], korv_server::DEFAULT_PORT).into())
        .route("/slow", get(slow))
        .route("/stop", store(stop))
        .bind()
        .await?;
    // A handle, cheap to clone, stops the server from any task.
    let handle = bound.shutdown_handle();
    tokio::spawn(async move {
        stop_requested.notified().await;
        handle.shutdown();
    });
    // The future passed here stops it too; `KorvServer::serve` is
    // `serve_with_shutdown(shutdown_signal())`.
    bound.run_until(shutdown_signal()).await?;
    println!("stopped");
    Ok(())
}
