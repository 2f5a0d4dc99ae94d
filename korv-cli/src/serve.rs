//! `korv serve`: the demo routes plus the persistent document store, on a
//! listening socket or on stdin/stdout under sshd.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use korv_server::routing::{any, get};
use korv_server::{Error, KorvServer, Request, StatusCode, Verb};
use serde_json::{Value, json};

use crate::keys;
use crate::store::{Outcome, Store};

/// The longest `/delay/{ms}`.
const MAX_DELAY_MS: u64 = 60_000;

/// `$XDG_DATA_HOME/korv`, else `~/.local/share/korv`.
pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("korv");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".local").join("share").join("korv")
}

/// The arguments of `korv serve`.
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

/// Serves [`app`] on stdin/stdout (`--stdio`), or on the listen address
/// until Ctrl-C or SIGTERM.
pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let data_dir = default_data_dir();
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| data_dir.join("store.redb"));
    let store = Store::open(&data)?;
    let server = app(store).tracebacks(!args.no_traceback);
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
        let (path, fingerprint, created) = keys::ensure_default_host_key(&data_dir)?;
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
    bound.run_until(korv_server::shutdown_signal()).await?;
    eprintln!("korv: stopped");
    Ok(ExitCode::SUCCESS)
}

/// The server with every route of `korv serve`.
pub(crate) fn app(store: Store) -> KorvServer<Store> {
    KorvServer::with_state(store)
        .route("/echo", any(echo))
        .route(
            "/hello",
            get(|_r: Request| async { (200, json!({"msg": "Hello World!"})) }),
        )
        .route("/delay/{ms}", get(delay))
        .route("/boom", get(boom))
        .route("/whoami", get(whoami))
        .fallback(document)
}

async fn echo(req: Request) -> Value {
    // Built by hand: `json!` would copy the body (it serializes each value).
    let mut answer = serde_json::Map::with_capacity(3);
    answer.insert("verb".into(), Value::from(req.verb().as_str()));
    answer.insert("resource".into(), Value::from(req.resource()));
    answer.insert("body".into(), req.body_value());
    Value::Object(answer)
}

async fn delay(req: Request) -> Result<Value, Error> {
    let ms: u64 = req
        .param("ms")
        .and_then(|ms| ms.parse().ok())
        .filter(|ms| *ms <= MAX_DELAY_MS)
        .ok_or_else(|| {
            Error::new(
                400,
                format!("/delay/{{ms}} takes a whole number of milliseconds up to {MAX_DELAY_MS}"),
            )
        })?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json!({"waited_ms": ms}))
}

#[derive(Debug)]
struct Cause;

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the flux capacitor is not charged")
    }
}

impl std::error::Error for Cause {}

async fn boom(_req: Request) -> anyhow::Result<Value> {
    Err(anyhow::Error::new(Cause).context("/boom failed on purpose, to show a traceback"))
}

async fn whoami(req: Request) -> Value {
    let client = req.client();
    json!({
        "user": client.user,
        "fingerprint": client.fingerprint,
        "algorithm": client.algorithm,
        "comment": client.comment,
    })
}

async fn document(req: Request, store: Store) -> anyhow::Result<(u16, Value)> {
    let path = req.resource().to_owned();
    let verb = req.verb();
    let body = req.body_raw().map(|raw| raw.get().to_owned());
    tokio::task::spawn_blocking(move || document_blocking(&store, verb, &path, body)).await?
}

fn document_blocking(
    store: &Store,
    verb: Verb,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<(u16, Value)> {
    let not_found = || (404, json!({"message": format!("no document at {path}")}));
    let parse = |doc: &str| {
        serde_json::from_str::<Value>(doc).context("a stored document is not valid JSON")
    };
    if verb != Verb::Get && path.ends_with('/') {
        let message = format!("{path} ends in '/': it names a listing, not a document");
        return Ok((400, json!({ "message": message })));
    }
    Ok(match verb {
        Verb::Get if path.ends_with('/') => (200, json!({"items": store.list(path)?})),
        Verb::Get => match store.get(path)? {
            Some(doc) => (200, parse(&doc)?),
            None => not_found(),
        },
        Verb::Store => match store.create(path, body.as_deref().unwrap_or("null"))? {
            Outcome::Done(_) => (StatusCode::CREATED.as_u16(), json!({"resource": path})),
            _ => (
                409,
                json!({"message": format!("{path} exists: UPDATE it, or DELETE it first")}),
            ),
        },
        Verb::Update => match store.replace(path, body.as_deref().unwrap_or("null"))? {
            Outcome::Done(doc) => (200, parse(&doc)?),
            _ => not_found(),
        },
        Verb::Delete => match store.remove(path)? {
            Outcome::Done(doc) => (200, parse(&doc)?),
            _ => not_found(),
        },
    })
}
