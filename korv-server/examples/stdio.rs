//! Hosting under OpenSSH's sshd: sshd authenticates the client with its own
//! users and keys, then starts this program for each `korv` subsystem
//! request; it serves one Korv stream on its stdin and stdout and exits at
//! the client's EOF.
//!
//! Build it, then name it in `/etc/ssh/sshd_config` and reload sshd:
//!
//! ```sh
//! cargo build -p korv-server --example stdio
//! ```
//!
//! ```text
//! Subsystem korv /path/to/target/debug/examples/stdio
//! ```
//!
//! Call it through sshd's port with the subsystem (`korv` is
//! `cargo run -p korv-cli --`):
//!
//! ```sh
//! korv get --subsystem korv://you@host:22/whoami
//! ```
//!
//! Handlers see the user sshd logged in (from `USER`); sshd has already
//! checked the key, so no fingerprint is known here.

use korv_server::routing::get;
use korv_server::{KorvServer, Request};
use serde_json::{Value, json};

async fn whoami(req: Request) -> Value {
    json!({"user": req.client().user})
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    // stdout carries the stream: logs go to stderr, which sshd passes to the
    // client as the channel's extended data.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    KorvServer::new()
        .route("/whoami", get(whoami))
        .serve_stream(io)
        .await
}
