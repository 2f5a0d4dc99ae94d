//! Calls the server example (`cargo run -p korv-server --example hello ...`).
//!
//! ```sh
//! cargo run -p korv-client --example hello_client -- localhost 8022
//! ```
//!
//! It uses your `~/.ssh` keys or ssh-agent, and trusts the server's host key
//! on first use (accept-new), recording it in `~/.ssh/known_hosts`.

use korv_client::{ClientConfig, HostKeyPolicy, KorvClient};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), korv_client::Error> {
    let mut args = std::env::args().skip(1);
    let host = args.next().unwrap_or_else(|| "localhost".into());
    let port = args.next().and_then(|p| p.parse().ok()).unwrap_or(8022);
    let client = KorvClient::connect(
        ClientConfig::new(host)
            .port(port)
            .host_key_policy(HostKeyPolicy::AcceptNew),
    )
    .await?;
    let hello = client.get("/hello").await?;
    println!("GET /hello -> {} {}", hello.code, hello.body);
    let echo = client.store("/echo", &json!({"text": "hi"})).await?;
    println!("STORE /echo -> {} {}", echo.code, echo.body);
    Ok(())
}
