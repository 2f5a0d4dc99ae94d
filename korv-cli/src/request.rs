//! `korv get|store|update|delete` and `korv serve`.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use korv_client::{ChannelKind, ClientConfig, Headers, HostKeyPolicy, KorvClient};
use korv_proto::Verb;
use serde_json::Value;

use crate::cli::{ConnectArgs, RequestArgs, ServeArgs, UsageError};

/// Host, port, optional user and path from RESOURCE and the options.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: Option<String>,
    pub(crate) path: String,
}

pub(crate) fn parse_target(resource: &str, connect: &ConnectArgs) -> Result<Target, UsageError> {
    let Some(rest) = resource.strip_prefix("korv://") else {
        if !resource.starts_with('/') {
            return Err(UsageError(format!(
                "RESOURCE {resource:?} must be a path starting with '/' or a korv://host/path URL"
            )));
        }
        return Ok(Target {
            host: connect.host.clone(),
            port: connect.port,
            user: connect.user.clone(),
            path: resource.to_owned(),
        });
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user.to_owned()), host),
        None => (connect.user.clone(), authority),
    };
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| UsageError(format!("unclosed '[' in {resource:?}")))?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let port = match port {
        Some(port) => port
            .parse()
            .map_err(|_| UsageError(format!("bad port {port:?} in {resource:?}")))?,
        None => connect.port,
    };
    if host.is_empty() {
        return Err(UsageError(format!("no host in {resource:?}")));
    }
    Ok(Target {
        host: host.to_owned(),
        port,
        user,
        path: path.to_owned(),
    })
}

/// BODY as JSON: text, `@file`, or `-` for stdin.
pub(crate) fn read_body(body: &str) -> anyhow::Result<Value> {
    let (text, origin) = if body == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the body from stdin")?;
        (text, "stdin".to_owned())
    } else if let Some(path) = body.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .map_err(|err| UsageError(format!("cannot read the body file {path}: {err}")))?;
        (text, path.to_owned())
    } else {
        (body.to_owned(), "BODY".to_owned())
    };
    serde_json::from_str(&text)
        .map_err(|err| UsageError(format!("{origin} is not valid JSON: {err}")).into())
}

pub(crate) fn client_config(target: &Target, connect: &ConnectArgs) -> ClientConfig {
    let timeout = Duration::from_secs_f64(connect.timeout.max(0.001));
    let mut config = ClientConfig::new(&target.host)
        .port(target.port)
        .connect_timeout(timeout)
        .request_timeout(Some(timeout));
    if let Some(user) = &target.user {
        config = config.user(user);
    }
    for identity in &connect.identities {
        config = config.identity_file(identity);
    }
    if let Some(known_hosts) = &connect.known_hosts {
        config = config.known_hosts(known_hosts);
    }
    if connect.accept_new {
        config = config.host_key_policy(HostKeyPolicy::AcceptNew);
    }
    if connect.subsystem {
        config = config.channel(ChannelKind::Subsystem);
    }
    config
}

pub(crate) async fn run(verb: Verb, args: RequestArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    let target = parse_target(&args.resource, &args.connect)?;
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
    let client = KorvClient::connect(client_config(&target, &args.connect)).await?;
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
    Ok(ExitCode::from(exit_code(response.code.as_u16())))
}

/// 0 for 2xx; 3, 4, 5 for 3xx, 4xx, 5xx (as httpie's `--check-status`); 1 otherwise.
pub(crate) fn exit_code(status: u16) -> u8 {
    match status {
        200..=299 => 0,
        300..=399 => 3,
        400..=499 => 4,
        500..=599 => 5,
        _ => 1,
    }
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let data_dir = crate::serve::default_data_dir();
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| data_dir.join("store.redb"));
    let store = crate::store::Store::open(&data)?;
    let server = crate::serve::app(store).tracebacks(!args.no_traceback);
    if args.stdio {
        let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
        server
            .serve_stream(io)
            .await
            .context("serving stdin/stdout")?;
        return Ok(ExitCode::SUCCESS);
    }
    // Each connection is a file descriptor: let `max_connections` (1024 by
    // default) be the limit rather than the usual soft limit of 1024 files.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < 2048 => tracing::warn!(
            limit,
            "the open-file limit is low: connections beyond it are refused (raise it with `ulimit -n`)"
        ),
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "cannot raise the open-file limit"),
    }
    let mut listen = args.listen;
    if let Some(port) = args.port {
        listen.set_port(port);
    }
    let mut server = server.listen(listen);
    if args.host_keys.is_empty() {
        let (path, fingerprint, created) = crate::serve::ensure_default_host_key(&data_dir)?;
        let verb = if created { "created" } else { "using" };
        eprintln!("korv: {verb} host key {} ({fingerprint})", path.display());
        server = server.host_key_file(path);
    }
    for key in &args.host_keys {
        server = server.host_key_file(key);
    }
    let authorized = args.authorized_keys.clone().unwrap_or_else(|| {
        let home = std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_default();
        home.join(".ssh").join("authorized_keys")
    });
    match std::fs::read_to_string(&authorized) {
        Ok(text)
            if text
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')) => {}
        Ok(_) => eprintln!(
            "korv: warning: {} is empty: nobody can log in until a key is added",
            authorized.display()
        ),
        Err(err) => eprintln!(
            "korv: warning: cannot read {} ({err}): nobody can log in until it exists",
            authorized.display()
        ),
    }
    let bound = server.authorized_keys_file(&authorized).bind().await?;
    eprintln!(
        "korv: listening on {} (store {})",
        bound.local_addr(),
        data.display()
    );
    let handle = bound.shutdown_handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.shutdown();
    });
    let term_handle = bound.shutdown_handle();
    #[cfg(unix)]
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
            term_handle.shutdown();
        }
    });
    bound.run().await?;
    eprintln!("korv: stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn connect() -> ConnectArgs {
        let cli = crate::cli::Cli::try_parse_from(["korv", "get", "/"]).unwrap();
        let crate::cli::Command::Get(args) = cli.command else {
            panic!()
        };
        args.connect
    }

    #[test]
    fn exit_codes_follow_the_status_class() {
        assert_eq!(
            [200, 201, 299, 301, 304, 400, 404, 409, 500, 504, 101].map(exit_code),
            [0, 0, 0, 3, 3, 4, 4, 4, 5, 5, 1]
        );
    }

    #[test]
    fn paths_use_the_host_options_and_urls_carry_their_own() {
        let c = connect();
        assert_eq!(
            parse_target("/a", &c).unwrap(),
            Target {
                host: "localhost".into(),
                port: 8022,
                user: None,
                path: "/a".into()
            }
        );
        assert_eq!(
            parse_target("korv://bob@example.com:9000/x/y", &c).unwrap(),
            Target {
                host: "example.com".into(),
                port: 9000,
                user: Some("bob".into()),
                path: "/x/y".into()
            }
        );
        assert_eq!(parse_target("korv://[::1]:7/z", &c).unwrap().host, "::1");
        assert_eq!(parse_target("korv://h", &c).unwrap().path, "/");
        assert!(parse_target("notes", &c).is_err());
        assert!(parse_target("korv://h:x/a", &c).is_err());
    }
}
