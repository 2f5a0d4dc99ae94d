//! `korv-peers idle`: many authenticated Korv connections that then say
//! nothing, so that `cargo xtask bench` can read the server's memory per
//! idle connection.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use korv_client::{ClientConfig, HostKeyPolicy, KorvClient};
use tokio::io::AsyncReadExt;

#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    /// The server's host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The server's port.
    #[arg(long)]
    port: u16,
    /// Connections to hold.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// The private key.
    #[arg(short = 'i', long = "identity")]
    identity: PathBuf,
    /// The known_hosts file holding the server's key.
    #[arg(long)]
    known_hosts: PathBuf,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
}

/// Connects, proves each connection with one `GET /hello`, prints
/// `ready N` and holds them until stdin closes.
pub(crate) async fn run(args: IdleArgs) -> anyhow::Result<ExitCode> {
    // One descriptor per connection: the usual soft limit of 1024 is too low.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    anyhow::ensure!(
        (args.connections as u64) < limit.saturating_sub(32),
        "{} connections need more open files than the limit of {limit} allows (ulimit -n)",
        args.connections
    );
    let config = ClientConfig::new(&args.host)
        .port(args.port)
        .identity_file(&args.identity)
        .use_agent(false)
        .default_identities(false)
        .known_hosts(&args.known_hosts)
        .host_key_policy(HostKeyPolicy::Strict);
    let mut clients = Vec::with_capacity(args.connections);
    let mut left = args.connections;
    while left > 0 {
        let batch = left.min(args.parallel.max(1));
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let config = config.clone();
            connecting.spawn(async move {
                let client = KorvClient::connect(config).await?;
                let answer = client.get("/hello").await?;
                anyhow::ensure!(
                    answer.code.as_u16() == 200,
                    "GET /hello got {}",
                    answer.code
                );
                anyhow::Ok(client)
            });
        }
        while let Some(joined) = connecting.join_next().await {
            clients.push(joined.context("a connecting task failed")??);
        }
        left -= batch;
    }
    println!("ready {}", clients.len());
    // Hold them until told to stop (stdin closes).
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(clients);
    Ok(ExitCode::SUCCESS)
}
