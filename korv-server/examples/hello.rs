//! The original Korv's example, in Rust: `GET /hello` and `STORE /echo`.
//!
//! Run it with a host key and your authorized_keys:
//!
//! ```sh
//! ssh-keygen -t ed25519 -N '' -f /tmp/korv_host_key
//! cargo run -p korv-server --example hello -- /tmp/korv_host_key ~/.ssh/authorized_keys
//! ```
//!
//! then call it through OpenSSH (see docs/PROTOCOL.md) or the korv client.
//! It listens on 127.0.0.1:8022 and stops on Ctrl-C.

use korv_server::{KorvServer, Request, Verb};
use serde_json::{Value, json};

async fn hello(_req: Request) -> (u16, Value) {
    (200, json!({"msg": "Hello World!"}))
}

async fn echo(req: Request) -> (u16, Value) {
    (
        200,
        json!({"verb": req.verb().as_str(), "resource": req.resource(), "body": req.body_value()}),
    )
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
        eprintln!("usage: hello HOST_KEY AUTHORIZED_KEYS");
        std::process::exit(2);
    };
    let mut server = KorvServer::new()
        .host_key_file(host_key)
        .authorized_keys_file(authorized_keys)
        .listen(([127, 0, 0, 1], korv_server::DEFAULT_PORT).into());
    server.add_callback(Verb::Get, "/hello", hello);
    server.add_callback(Verb::Store, "/echo", echo);
    server.serve().await?;
    Ok(())
}
