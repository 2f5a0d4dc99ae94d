//! The blocking client, for programs without an async runtime: the same
//! methods as the async client, each waiting for its answer.
//!
//! Start a server that answers `GET /hello` and `STORE /echo` (`korv serve`,
//! or the korv-server `hello` example), then:
//!
//! ```sh
//! cargo run -p korv-cli --bin korv -- serve --listen 127.0.0.1:8022 &
//! cargo run -p korv-client --example blocking -- localhost 8022
//! ```
//!
//! It uses your `~/.ssh` keys or ssh-agent, and trusts the server's host key
//! on first use (accept-new), recording it in `~/.ssh/known_hosts`.

use std::process::ExitCode;

use korv_client::blocking::KorvClient;
use korv_client::{ClientConfig, HostKeyPolicy};
use serde_json::json;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "localhost".into());
    let port = args.next().and_then(|p| p.parse().ok()).unwrap_or(8022);
    match run(host, port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The message says what failed, its sources say why.
            let mut text = err.to_string();
            let mut cause = std::error::Error::source(&err);
            while let Some(inner) = cause {
                text += &format!(": {inner}");
                cause = inner.source();
            }
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}

fn run(host: String, port: u16) -> Result<(), korv_client::Error> {
    // The client starts a small runtime of its own; no `#[tokio::main]`.
    let client = KorvClient::connect(
        ClientConfig::new(host)
            .port(port)
            .host_key_policy(HostKeyPolicy::AcceptNew),
    )?;
    let hello = client.get("/hello")?;
    println!("GET /hello -> {} {}", hello.code, hello.body);
    let echo = client.store("/echo", &json!({"text": "hi"}))?;
    println!("STORE /echo -> {} {}", echo.code, echo.body);
    Ok(())
}
