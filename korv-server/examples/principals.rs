//! OpenSSH certificates as permissions: users log in with a certificate from
//! a trusted CA, handlers see it, `/admin/...` needs the principal `admin`,
//! and changing `/notes/...` needs `writer`. Others get `403`.
//!
//! Make a CA, a host key and a user certificate, then run it:
//!
//! ```sh
//! ssh-keygen -t ed25519 -N '' -f /tmp/korv_user_ca
//! ssh-keygen -t ed25519 -N '' -f /tmp/korv_host_key
//! ssh-keygen -s /tmp/korv_user_ca -I me -n "$USER",admin -V +1h ~/.ssh/id_ed25519.pub
//! cargo run -p korv-server --example principals -- /tmp/korv_host_key /tmp/korv_user_ca.pub
//! ```
//!
//! then, in another terminal (the CLI finds `~/.ssh/id_ed25519-cert.pub`):
//!
//! ```sh
//! cargo run -p korv-cli -- get korv://localhost:8022/whoami --accept-new
//! cargo run -p korv-cli -- get korv://localhost:8022/admin/users   # 200 with admin
//! cargo run -p korv-cli -- store korv://localhost:8022/notes/1 '{}' # 403: no writer
//! ```

use korv_server::routing::{any, get};
use korv_server::{ClientInfo, KorvServer, Request, Verb};
use serde_json::{Value, json};

async fn whoami(req: Request) -> Value {
    let client = req.client();
    let certificate = client.certificate.as_ref().map(|cert| {
        json!({
            "key_id": cert.key_id,
            "serial": cert.serial,
            "principals": cert.principals,
            "ca": cert.ca_fingerprint,
        })
    });
    json!({"user": client.user, "certificate": certificate})
}

async fn admin(req: Request) -> Value {
    json!({"admin": req.param("rest")})
}

async fn notes(req: Request) -> Value {
    json!({"verb": req.verb().as_str(), "note": req.param("id")})
}

/// Reading is open to every authenticated client; any other verb on a note
/// needs a certificate with the principal `writer`.
fn writers_only(client: &ClientInfo, verb: Verb, resource: &str) -> Result<(), String> {
    let writer = client
        .certificate
        .as_ref()
        .is_some_and(|cert| cert.has_principal("writer"));
    if verb == Verb::Get || !resource.starts_with("/notes/") || writer {
        Ok(())
    } else {
        Err(format!(
            "{verb} on {resource} needs the principal \"writer\""
        ))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let (Some(host_key), Some(user_ca)) = (args.next(), args.next()) else {
        eprintln!("usage: principals HOST_KEY USER_CA_PUB");
        std::process::exit(2);
    };
    KorvServer::new()
        .host_key_file(host_key)
        .trusted_user_ca_keys(user_ca)
        .listen(([127, 0, 0, 1], korv_server::DEFAULT_PORT).into())
        .route("/whoami", get(whoami))
        .route("/admin/{*rest}", any(admin))
        .require_principal("admin")
        .route("/notes/{id}", any(notes))
        .authorize(writers_only)
        .serve()
        .await?;
    Ok(())
}
