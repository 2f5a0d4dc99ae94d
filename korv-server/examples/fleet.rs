//! One instance of a fleet behind a TCP load balancer (HAProxy with
//! `send-proxy-v2`): the client's address comes from the PROXY header the
//! balancer sends, metrics are served for Prometheus, and the instance has a
//! name that logs, metrics and `GET /whoami` show.
//!
//! ```sh
//! ssh-keygen -t ed25519 -N '' -f /tmp/korv_host_key
//! cargo run -p korv-server --example fleet -- /tmp/korv_host_key ~/.ssh/authorized_keys web-1 127.0.0.9/32
//! ```
//!
//! It listens on 127.0.0.1:8022 for SSH, expecting a PROXY header from the
//! network given (the balancer), and on 127.0.0.1:9022 for
//! `curl http://127.0.0.1:9022/metrics`. docs/DEPLOY.md has the HAProxy
//! side; `cargo xtask fleet` runs three such instances behind it.

use std::sync::Arc;

use korv_server::routing::get;
use korv_server::{IpNet, KorvServer, Request};
use serde_json::{Value, json};

async fn whoami(req: Request, name: Arc<str>) -> Value {
    let client = req.client();
    json!({
        "instance": &*name,
        "user": client.user,
        // The client's address behind the balancer, not the balancer's.
        "address": client.peer.map(|addr| addr.to_string()),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host_key, authorized_keys, name, balancer] = args.as_slice() else {
        eprintln!("usage: fleet HOST_KEY AUTHORIZED_KEYS NAME BALANCER_NETWORK");
        std::process::exit(2);
    };
    let balancer: IpNet = balancer.parse()?;
    let instance: Arc<str> = name.as_str().into();
    let bound = KorvServer::new()
        .host_key_file(host_key)
        .authorized_keys_file(authorized_keys)
        .listen(([127, 0, 0, 1], korv_server::DEFAULT_PORT).into())
        .proxy_protocol_from([balancer])
        .metrics(([127, 0, 0, 1], 9022).into())
        .name(name.as_str())
        .route(
            "/whoami",
            get(move |req: Request| whoami(req, Arc::clone(&instance))),
        )
        .bind()
        .await?;
    println!(
        "{name}: SSH on {}, metrics on http://{}/metrics",
        bound.local_addr(),
        bound
            .metrics_addr()
            .map_or_else(String::new, |a| a.to_string())
    );
    bound.run_until(korv_server::shutdown_signal()).await?;
    Ok(())
}
