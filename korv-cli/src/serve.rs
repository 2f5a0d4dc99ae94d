//! `korv serve`: the demo routes plus the persistent document store, on a
//! listening socket or on stdin/stdout under sshd.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use korv_cli::load::{parse_duration, parse_warmup};
use korv_server::routing::{any, get};
use korv_server::{
    CertificateInfo, ClientInfo, Error, IpNet, KorvServer, Limits, Request, StatusCode, Verb,
};
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
    /// authorized_keys file (default ~/.ssh/authorized_keys); its
    /// `cert-authority` lines trust user CAs.
    #[arg(long, value_name = "FILE")]
    pub(crate) authorized_keys: Option<PathBuf>,
    /// Trust the user CA keys in FILE (OpenSSH's TrustedUserCAKeys: one
    /// public key per line): certificates they sign for the user name get in.
    #[arg(long = "user-ca", value_name = "FILE")]
    pub(crate) user_ca: Option<PathBuf>,
    /// Refuse the public keys listed in FILE (user keys, certificates' keys
    /// and CAs); re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub(crate) revoked_keys: Option<PathBuf>,
    /// Offer this OpenSSH host certificate with the host key it certifies;
    /// repeatable.
    #[arg(long = "host-cert", value_name = "FILE")]
    pub(crate) host_certs: Vec<PathBuf>,
    /// Resources matching PATTERN (`*` any characters, `?` one) need a
    /// certificate with PRINCIPAL, else 403; repeatable.
    #[arg(long = "require-principal", value_name = "PATTERN=PRINCIPAL", value_parser = parse_requirement)]
    pub(crate) require_principal: Vec<(String, String)>,
    /// The document store (default ~/.local/share/korv/store.redb).
    #[arg(long, value_name = "PATH")]
    pub(crate) data: Option<PathBuf>,
    /// Serve one stream on stdin/stdout (for `Subsystem korv` in sshd_config),
    /// in version 1 only: korv 0.2.1's format is detected on direct-tcpip
    /// channels of a listening server.
    #[arg(long)]
    pub(crate) stdio: bool,
    /// Send 500s without tracebacks.
    #[arg(long)]
    pub(crate) no_traceback: bool,
    /// Connections from NETWORK (ADDRESS or ADDRESS/PREFIX: the load
    /// balancers) must start with a PROXY protocol header (v1 or v2), whose
    /// client address is used for from=, source-address, limits and logs;
    /// repeatable. From other addresses no header is accepted.
    #[arg(long = "proxy-protocol-from", value_name = "NETWORK")]
    pub(crate) proxy_protocol_from: Vec<IpNet>,
    /// This instance's name, shown by GET /whoami, in logs and as the
    /// metrics' instance_name label (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9022): a separate, unauthenticated listener.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub(crate) admission: AdmissionArgs,
}

/// The limits on connections before authentication (see SECURITY.md).
#[derive(Debug, Args)]
#[command(next_help_heading = "Before authentication")]
pub(crate) struct AdmissionArgs {
    /// Unauthenticated connections at once; when all are taken, a newcomer
    /// takes the place of one that has not sent its SSH version, or is refused.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_unauthenticated)]
    pub(crate) max_unauthenticated: usize,
    /// Unauthenticated connections per source (an IPv4 address or an IPv6 /64).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_unauthenticated_per_source)]
    pub(crate) max_unauthenticated_per_source: usize,
    /// Time a connection has to send its SSH version line.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) version_timeout: Duration,
    /// Time a connection has to authenticate, from connecting.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) auth_timeout: Duration,
    /// Penalty unit: each connection of a source that ends unauthenticated
    /// adds one to its debt; past 3 x this, the source is refused until the
    /// debt drains, for longer each time; 0 turns penalties off.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_warmup)]
    pub(crate) penalty_base: Duration,
    /// The longest penalty.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub(crate) penalty_max: Duration,
    /// A network with neither per-source limit nor penalties, as ADDRESS or
    /// ADDRESS/PREFIX; repeatable; replaces the default (loopback: 127.0.0.0/8
    /// and ::1); `none` exempts nothing.
    #[arg(long = "exempt", value_name = "NETWORK", value_parser = parse_exempt)]
    pub(crate) exempt: Vec<Exempt>,
}

/// One `--exempt` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exempt {
    /// `none`: no exempt network.
    Nothing,
    Network(IpNet),
}

fn parse_exempt(text: &str) -> Result<Exempt, String> {
    if text == "none" {
        return Ok(Exempt::Nothing);
    }
    text.parse()
        .map(Exempt::Network)
        .map_err(|err: korv_server::IpNetError| format!("{err}, or none"))
}

impl AdmissionArgs {
    /// `limits` with these settings.
    pub(crate) fn apply(&self, limits: Limits) -> Limits {
        let exempt_networks = if self.exempt.is_empty() {
            limits.exempt_networks
        } else {
            self.exempt
                .iter()
                .filter_map(|exempt| match exempt {
                    Exempt::Nothing => None,
                    Exempt::Network(net) => Some(*net),
                })
                .collect()
        };
        Limits {
            max_unauthenticated: self.max_unauthenticated,
            max_unauthenticated_per_source: self.max_unauthenticated_per_source,
            version_timeout: self.version_timeout,
            auth_timeout: self.auth_timeout,
            penalty_base: self.penalty_base,
            penalty_max: self.penalty_max,
            exempt_networks,
            ..limits
        }
    }
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
    let name = args.name.clone().unwrap_or_else(host_name);
    let mut server = app(store, &name)
        .name(name.clone())
        .tracebacks(!args.no_traceback)
        .limits(args.admission.apply(Limits::default()));
    if !args.require_principal.is_empty() {
        let requirements = args.require_principal.clone();
        server = server.authorize(move |client: &ClientInfo, _verb: Verb, resource: &str| {
            requirements
                .iter()
                .filter(|(pattern, _)| glob(pattern.as_bytes(), resource.as_bytes()))
                .try_for_each(|(pattern, principal)| {
                    if client
                        .certificate
                        .as_ref()
                        .is_some_and(|cert| cert.has_principal(principal))
                    {
                        Ok(())
                    } else {
                        Err(format!(
                            "{resource} (matching {pattern}) requires a certificate with the principal {principal:?}"
                        ))
                    }
                })
        });
    }
    if args.stdio {
        let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
        let client = stdio_client();
        server
            .into_stream_service()
            .serve_as(io, client)
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
    let mut server = server
        .listen(listen)
        .proxy_protocol_from(args.proxy_protocol_from.iter().copied());
    if let Some(metrics) = args.metrics {
        server = server.metrics(metrics);
    }
    if args.host_keys.is_empty() {
        let (path, fingerprint, created) = keys::ensure_default_host_key(&data_dir)?;
        let verb = if created { "created" } else { "using" };
        eprintln!("korv: {verb} host key {} ({fingerprint})", path.display());
        server = server.host_key_file(path);
    }
    for key in &args.host_keys {
        server = server.host_key_file(key);
    }
    for cert in &args.host_certs {
        server = server.host_certificate(cert);
    }
    if let Some(user_ca) = &args.user_ca {
        server = server.trusted_user_ca_keys(user_ca);
    }
    if let Some(revoked) = &args.revoked_keys {
        server = server.revoked_keys(revoked);
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
        Ok(_) if args.user_ca.is_none() => eprintln!(
            "korv: warning: {} is empty: nobody can log in until a key is added",
            authorized.display()
        ),
        Ok(_) => {}
        Err(_) if args.user_ca.is_some() => {}
        Err(err) => eprintln!(
            "korv: warning: cannot read {} ({err}): nobody can log in until it exists",
            authorized.display()
        ),
    }
    let bound = server.authorized_keys_file(&authorized).bind().await?;
    eprintln!(
        "korv: {name} listening on {} (store {})",
        bound.local_addr(),
        data.display()
    );
    if let Some(metrics) = bound.metrics_addr() {
        eprintln!("korv: metrics on http://{metrics}/metrics");
    }
    bound.run_until(korv_server::shutdown_signal()).await?;
    eprintln!("korv: stopped");
    Ok(ExitCode::SUCCESS)
}

/// This machine's host name, or `korv` when it cannot be read.
pub(crate) fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            let name = std::fs::read_to_string(path).ok()?;
            let name = name.trim();
            (!name.is_empty()).then(|| name.to_owned())
        })
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "korv".to_owned())
}

/// The server with every route of `korv serve`; `GET /whoami` tells
/// `name`.
pub(crate) fn app(store: Store, name: &str) -> KorvServer<Store> {
    let name: std::sync::Arc<str> = name.into();
    KorvServer::with_state(store)
        .route("/echo", any(echo))
        .route(
            "/hello",
            get(|_r: Request| async { (200, json!({"msg": "Hello World!"})) }),
        )
        .route("/delay/{ms}", get(delay))
        .route("/boom", get(boom))
        .route(
            "/whoami",
            get(move |req: Request| whoami(req, std::sync::Arc::clone(&name))),
        )
        .fallback(document)
        .watch_fallback(watch_documents)
}

/// `WATCH /notes/` (every document under the prefix) or `WATCH /notes/1`
/// (one document): each change once committed, in commit order.
async fn watch_documents(
    req: Request,
    store: Store,
) -> Result<impl futures_util::Stream<Item = Value> + use<>, Error> {
    let mut changes = store.watch(req.resource());
    Ok(futures_util::stream::poll_fn(move |cx| {
        changes.poll_recv(cx)
    }))
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

async fn whoami(req: Request, instance: std::sync::Arc<str>) -> Value {
    let client = req.client();
    let certificate = client.certificate.as_ref().map(|cert| {
        json!({
            "key_id": cert.key_id,
            "serial": cert.serial,
            "principals": cert.principals,
            "ca": cert.ca_fingerprint,
            "valid_before": cert.valid_before.and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
            }),
        })
    });
    json!({
        "user": client.user,
        "fingerprint": client.fingerprint,
        "algorithm": client.algorithm,
        "comment": client.comment,
        "certificate": certificate,
        "address": client.peer.map(|addr| addr.to_string()),
        "instance": &*instance,
    })
}

/// `PATTERN=PRINCIPAL` of `--require-principal`.
fn parse_requirement(text: &str) -> Result<(String, String), String> {
    match text.rsplit_once('=') {
        Some((pattern, principal)) if pattern.starts_with('/') && !principal.is_empty() => {
            Ok((pattern.to_owned(), principal.to_owned()))
        }
        _ => Err(format!(
            "{text:?} is not PATTERN=PRINCIPAL with PATTERN starting with '/', e.g. '/admin/*=admin'"
        )),
    }
}

/// `*` matches any run of characters (slashes too), `?` any one.
fn glob(pattern: &[u8], subject: &[u8]) -> bool {
    match (pattern.split_first(), subject.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            glob(rest, subject) || subject.split_first().is_some_and(|(_, s)| glob(pattern, s))
        }
        (Some((b'?', rest)), Some((_, s))) => glob(rest, s),
        (Some((p, rest)), Some((c, s))) if p == c => glob(rest, s),
        _ => false,
    }
}

/// Who is on the other end of `--stdio`: the `USER` sshd runs this process
/// as; with `ExposeAuthInfo yes` in sshd_config, also the key or certificate
/// sshd accepted (from the `SSH_USER_AUTH` file), so that handlers and
/// `--require-principal` see the certificate's principals.
fn stdio_client() -> ClientInfo {
    let user = std::env::var("USER").unwrap_or_default();
    let Some(path) = std::env::var_os("SSH_USER_AUTH") else {
        return ClientInfo::local(user);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) => {
            tracing::warn!(file = %PathBuf::from(&path).display(), %err, "cannot read SSH_USER_AUTH");
            return ClientInfo::local(user);
        }
    };
    // One line per method that succeeded: `publickey TYPE BASE64`.
    for line in text.lines() {
        let Some(key) = line.strip_prefix("publickey ") else {
            continue;
        };
        if let Ok(cert) = russh::keys::Certificate::from_openssh(key.trim()) {
            let public = russh::keys::PublicKey::new(cert.public_key().clone(), "");
            return ClientInfo::new(
                user,
                public.fingerprint(russh::keys::HashAlg::Sha256).to_string(),
                public.algorithm().as_str(),
                "",
                None,
            )
            .with_certificate(CertificateInfo::from_certificate(&cert));
        }
        if let Ok(public) = russh::keys::PublicKey::from_openssh(key.trim()) {
            return ClientInfo::new(
                user,
                public.fingerprint(russh::keys::HashAlg::Sha256).to_string(),
                public.algorithm().as_str(),
                "",
                None,
            );
        }
    }
    ClientInfo::local(user)
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
        // Never routed here: watches go to `watch_documents`.
        Verb::Watch | Verb::Unwatch => (
            405,
            json!({"message": format!("{verb} is not served by the document handler")}),
        ),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The admission flags alone, as `korv serve` takes them.
    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        admission: AdmissionArgs,
    }

    fn limits(args: &[&str]) -> Result<Limits, clap::Error> {
        let flags = Flags::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))?;
        Ok(flags.admission.apply(Limits::default()))
    }

    #[test]
    fn without_flags_the_limits_are_the_librarys_defaults() {
        assert_eq!(limits(&[]).unwrap(), Limits::default());
    }

    #[test]
    fn every_admission_flag_sets_its_limit() {
        let limits = limits(&[
            "--max-unauthenticated",
            "100",
            "--max-unauthenticated-per-source",
            "4",
            "--version-timeout",
            "500ms",
            "--auth-timeout",
            "1m",
            "--penalty-base",
            "0",
            "--penalty-max",
            "90s",
            "--exempt",
            "10.1.2.3/8",
            "--exempt",
            "2001:db8::/32",
        ])
        .unwrap();
        assert_eq!(limits.max_unauthenticated, 100);
        assert_eq!(limits.max_unauthenticated_per_source, 4);
        assert_eq!(limits.version_timeout, Duration::from_millis(500));
        assert_eq!(limits.auth_timeout, Duration::from_secs(60));
        assert_eq!(limits.penalty_base, Duration::ZERO);
        assert_eq!(limits.penalty_max, Duration::from_secs(90));
        let exempt: Vec<String> = limits
            .exempt_networks
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(exempt, ["10.0.0.0/8", "2001:db8::/32"]);
    }

    #[test]
    fn exempt_none_exempts_nothing_and_a_bad_network_is_a_usage_error() {
        assert!(
            limits(&["--exempt", "none"])
                .unwrap()
                .exempt_networks
                .is_empty()
        );
        let err = limits(&["--exempt", "10.0.0.0/40"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("10.0.0.0/40"), "{err}");
    }

    #[test]
    fn requirements_parse_as_pattern_and_principal() {
        assert_eq!(
            parse_requirement("/admin/*=admin"),
            Ok(("/admin/*".into(), "admin".into()))
        );
        assert!(parse_requirement("admin").is_err());
        assert!(parse_requirement("/admin/*=").is_err());
        assert!(parse_requirement("admin=x").is_err());
    }

    #[test]
    fn globs_cross_slashes() {
        assert!(glob(b"/admin/*", b"/admin/users/1"));
        assert!(glob(b"/notes/?", b"/notes/1"));
        assert!(!glob(b"/notes/?", b"/notes/12"));
        assert!(!glob(b"/admin/*", b"/administrator"));
    }
}
