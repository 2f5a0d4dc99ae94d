//! The command line: [`Cli`] and its subcommands. Each subcommand's
//! arguments live beside the code that runs it.

use clap::{Parser, Subcommand};

use crate::bench::BenchArgs;
use crate::completions::{CompletionsArgs, ManArgs};
use crate::request::RequestArgs;
use crate::serve::ServeArgs;
use crate::watch::WatchArgs;

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

// No doc comment here: clap would take it as help text.
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
    /// WATCH a resource: print each event as one line of JSON until Ctrl-C.
    Watch(WatchArgs),
    /// Run the ready server: demo routes plus a persistent document store.
    Serve(ServeArgs),
    /// Run a server and a client in this process and show a whole session.
    Demo,
    /// Load-test a resource: requests/s, MB/s and latency percentiles.
    Bench(BenchArgs),
    /// Print a shell completion script: `korv completions bash > /etc/bash_completion.d/korv`.
    Completions(CompletionsArgs),
    /// Print the man page (korv(1)), or write every page with --out-dir.
    Man(ManArgs),
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
    fn watch_takes_a_resource_an_optional_body_and_a_count() {
        let cli = Cli::try_parse_from(["korv", "watch", "/notes/", "--count", "3"]).unwrap();
        let Command::Watch(args) = cli.command else {
            panic!()
        };
        assert_eq!((args.resource.as_str(), args.count), ("/notes/", Some(3)));
        assert_eq!(args.body, None);
        let cli = Cli::try_parse_from(["korv", "watch", "/jobs/1", "{\"since\":2}"]).unwrap();
        let Command::Watch(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.body.as_deref(), Some("{\"since\":2}"));
        assert!(Cli::try_parse_from(["korv", "watch", "/n", "--count", "x"]).is_err());
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
