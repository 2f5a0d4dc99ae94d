//! The smallest server: `GET /hello` answers a greeting, `STORE /echo` sends
//! back what it got.
//!
//! Run it with a host key and your authorized_keys:
//!
//! ```sh
//! ssh-keygen -t ed25519 -N '' -f /tmp/korv_host_key
//! cargo run -p korv-server --example hello -- /tmp/korv_host_key ~/.ssh/authorized_keys
//! ```
//!
//! then, in another terminal, call it with the client example
//! (`cargo run -p korv-client --example hello_client -- localhost 8022`),
//! the CLI (`cargo run -p korv-cli -- get korv://localhost:8022/hello --accept-new`)
//! or OpenSSH (docs/PROTOCOL.md). It listens on 127.0.0.1:8022 and stops on
//! Ctrl-C.

use korv_server::routing::{get, store};
use korv_server::{KorvServer, Request};
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
    KorvServer::new()
        .host_key_file(host_key)
        .authorized_keys_file(authorized_keys)
        .listen(([127, 0, 0, 1], korv_server::DEFAULT_PORT).into())
        .route("/hello", get(hello))
        .route("/echo", store(echo))
        .serve()
        .await?;
    Ok(())
}
