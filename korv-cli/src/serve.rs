//! `korv serve`: the demo routes plus the persistent document store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use korv_server::routing::{any, get};
use korv_server::{Error, KorvServer, Request, StatusCode, Verb};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey};
use serde_json::{Value, json};

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

/// A fresh ed25519 key.
pub(crate) fn new_ed25519(comment: &str) -> anyhow::Result<PrivateKey> {
    let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .context("cannot generate an ed25519 key")?;
    key.set_comment(comment);
    Ok(key)
}

/// Writes a private key in OpenSSH format, readable by its owner only.
pub(crate) fn write_private_key(key: &PrivateKey, path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let text = key
        .to_openssh(LineEnding::LF)
        .context("cannot encode the key")?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create the key file {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The default host key: made on first start, reused afterwards. Returns its
/// path and fingerprint.
pub(crate) fn ensure_default_host_key(dir: &Path) -> anyhow::Result<(PathBuf, String, bool)> {
    let path = dir.join("host_ed25519");
    let created = !path.exists();
    if created {
        write_private_key(&new_ed25519("korv host key")?, &path)?;
    }
    let key = russh::keys::load_secret_key(&path, None)
        .with_context(|| format!("host key {}: cannot load it", path.display()))?;
    let fingerprint = key.public_key().fingerprint(HashAlg::Sha256).to_string();
    Ok((path, fingerprint, created))
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
