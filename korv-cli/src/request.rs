//! `korv get|store|update|delete`: one request, its body on stdout, its
//! status as the exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Args;
use korv_client::{Headers, KorvClient};
use korv_proto::Verb;
use serde_json::Value;

use crate::body::read_body;
use crate::connect::ConnectArgs;
use crate::error_reporting::{self, UsageError};

/// The arguments of `korv get|store|update|delete`.
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

/// Sends `verb` with `args`, prints the answer's body (and with `verbose`
/// its status and headers on stderr); the exit code follows the status.
pub(crate) async fn run(verb: Verb, args: RequestArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    let target = args.connect.target(&args.resource)?;
    let body = args.body.as_deref().map(read_body).transpose()?;
    if verb.requires_body() && body.as_ref().is_none_or(Value::is_null) {
        return Err(UsageError(format!(
            "{verb} needs a BODY (JSON text, @file.json, or - for stdin)"
        ))
        .into());
    }
    let mut headers = Headers::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| UsageError(format!("header {header:?} is not NAME:VALUE")))?;
        headers.insert(name.trim().to_owned(), value.trim().to_owned());
    }
    let config = args.connect.client_config(&target);
    if verbose > 0 {
        crate::connect::show_route(&config);
    }
    let client = KorvClient::connect(config).await?;
    let response = client
        .request(verb, &target.path, body.as_ref(), headers)
        .await?;
    if verbose > 0 {
        eprintln!("{}", response.code);
        for (name, value) in &response.headers {
            eprintln!("{name}: {value}");
        }
    }
    let terminal = std::io::stdout().is_terminal();
    println!(
        "{}",
        crate::output::render(&response.body, terminal && !args.compact, terminal)
    );
    Ok(error_reporting::for_status(response.code.as_u16()))
}
