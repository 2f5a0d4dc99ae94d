//! The command line: arguments, dispatch, exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Call Korv APIs over SSH, serve one, or measure one.
#[derive(Debug, Parser)]
#[command(name = "korv", version, about, long_about = None)]
pub(crate) struct Cli {
    /// More output: the status line and headers on stderr (-v); debug logs (-vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// GET a resource.
    Get(RequestArgs),
    /// STORE (create) a resource with a body.
    Store(RequestArgs),
    /// UPDATE (change) a resource with a body.
    Update(RequestArgs),
    /// DELETE a resource.
    Delete(RequestArgs),
    /// Run the ready server: demo routes plus a persistent document store.
    Serve(ServeArgs),
    /// Run a server and a client in this process and show a whole session.
    Demo,
    /// Load-test a resource: requests/s, MB/s and latency percentiles.
    Bench(crate::bench::BenchArgs),
}

/// Where and how to connect.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectArgs {
    /// Server host (when RESOURCE is a path).
    #[arg(long, env = "KORV_HOST", default_value = "localhost")]
    pub(crate) host: String,
    /// Server port.
    #[arg(long, env = "KORV_PORT", default_value_t = 8022)]
    pub(crate) port: u16,
    /// SSH user (default: the current user).
    #[arg(long, short = 'l')]
    pub(crate) user: Option<String>,
    /// A private key file; repeatable (default: ~/.ssh keys and the ssh-agent).
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    pub(crate) identities: Vec<PathBuf>,
    /// The known_hosts file (default ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub(crate) known_hosts: Option<PathBuf>,
    /// Trust an unknown host key and record it (a changed key is still refused).
    #[arg(long)]
    pub(crate) accept_new: bool,
    /// Use the `korv` subsystem instead of a direct-tcpip channel.
    #[arg(long)]
    pub(crate) subsystem: bool,
    /// Seconds to wait for the connection and for the answer.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub(crate) timeout: f64,
}

#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    /// A path (`/notes/1`) or a URL (`korv://[user@]host[:port]/notes/1`).
    pub(crate) resource: String,
    /// The body: JSON text, `@file.json`, or `-` for stdin.
    pub(crate) body: Option<String>,
    /// A header, `name:value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    pub(crate) headers: Vec<String>,
    /// Compact JSON on stdout even on a terminal.
    #[arg(long)]
    pub(crate) compact: bool,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8022")]
    pub(crate) listen: SocketAddr,
    /// Port to listen on (overrides the port of --listen).
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// Host key file; repeatable (default: an ed25519 key made on first start
    /// in the data folder, ~/.local/share/korv/host_ed25519).
    #[arg(long = "host-key", value_name = "FILE")]
    pub(crate) host_keys: Vec<PathBuf>,
    /// authorized_keys file (default ~/.ssh/authorized_keys).
    #[arg(long, value_name = "FILE")]
    pub(crate) authorized_keys: Option<PathBuf>,
    /// The document store (default ~/.local/share/korv/store.redb).
    #[arg(long, value_name = "PATH")]
    pub(crate) data: Option<PathBuf>,
    /// Serve one stream on stdin/stdout (for `Subsystem korv` in sshd_config).
    #[arg(long)]
    pub(crate) stdio: bool,
    /// Send 500s without tracebacks.
    #[arg(long)]
    pub(crate) no_traceback: bool,
}

/// A mistake in the command line: exit code 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Exit code and hint for an error.
pub(crate) fn classify(err: &anyhow::Error) -> (u8, Option<String>) {
    if err.downcast_ref::<UsageError>().is_some() {
        return (2, None);
    }
    if let Some(client) = err.downcast_ref::<korv_client::Error>() {
        let hint = match client {
            korv_client::Error::HostKeyUnknown { .. } => {
                Some("if you trust this server, run again with --accept-new to record its key".to_owned())
            }
            korv_client::Error::AuthRefused { .. } => Some(
                "add your public key (~/.ssh/id_ed25519.pub) to the server's authorized_keys, or name a key with -i".to_owned(),
            ),
            _ => None,
        };
        return (1, hint);
    }
    (1, None)
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Get(args) => crate::request::run(korv_proto::Verb::Get, args, cli.verbose).await,
        Command::Store(args) => {
            crate::request::run(korv_proto::Verb::Store, args, cli.verbose).await
        }
        Command::Update(args) => {
            crate::request::run(korv_proto::Verb::Update, args, cli.verbose).await
        }
        Command::Delete(args) => {
            crate::request::run(korv_proto::Verb::Delete, args, cli.verbose).await
        }
        Command::Serve(args) => crate::request::serve(args).await,
        Command::Demo => crate::demo::run().await,
        Command::Bench(args) => crate::bench::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_every_option() {
        let cli = Cli::try_parse_from([
            "korv",
            "store",
            "korv://bob@h:9/a",
            "@x.json",
            "-H",
            "a:b",
            "-i",
            "k1",
            "-i",
            "k2",
            "--accept-new",
            "--subsystem",
            "--timeout",
            "2.5",
        ])
        .unwrap();
        let Command::Store(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.resource, "korv://bob@h:9/a");
        assert_eq!(args.body.as_deref(), Some("@x.json"));
        assert_eq!(args.connect.identities.len(), 2);
        assert!(args.connect.accept_new && args.connect.subsystem);
    }

    #[test]
    fn serve_defaults_to_port_8022_on_every_address() {
        let cli = Cli::try_parse_from(["korv", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.listen, "0.0.0.0:8022".parse().unwrap());
    }

    #[test]
    fn an_unknown_subcommand_is_a_usage_error() {
        let err = Cli::try_parse_from(["korv", "fetch", "/a"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
