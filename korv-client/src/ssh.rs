//! Connecting: TCP, the SSH handshake with the host key checked against
//! known_hosts, public-key authentication, and the Korv channel.

use std::sync::{Arc, Mutex};

use russh::client::{self, AuthResult, Handle};
use russh::keys::known_hosts::{known_host_keys_path, learn_known_hosts_path};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use tokio::net::TcpStream;

use crate::config::{ChannelKind, ClientConfig, HostKeyPolicy};
use crate::error::{Error, IdentityError};

/// Keeps the SSH connection open.
pub(crate) struct Session {
    _handle: Handle<HostCheck>,
}

pub(crate) struct HostCheck {
    host: String,
    port: u16,
    known_hosts: std::path::PathBuf,
    policy: HostKeyPolicy,
    verdict: Arc<Mutex<Option<Error>>>,
}

fn display_host(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

impl HostCheck {
    fn check(&self, key: &PublicKey) -> Result<(), Error> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let shown = display_host(&self.host, self.port);
        let file = self.known_hosts.display().to_string();
        if self.policy == HostKeyPolicy::InsecureAcceptAny {
            return Ok(());
        }
        let recorded = known_host_keys_path(&self.host, self.port, &self.known_hosts)
            .map_err(|err| self.known_hosts_error("read known_hosts", err))?;
        if recorded.iter().any(|(_, k)| k.key_data() == key.key_data()) {
            return Ok(());
        }
        if let Some((line, old)) = recorded
            .iter()
            .find(|(_, k)| k.algorithm() == key.algorithm())
        {
            // russh's line count skips comment lines: find the real line.
            let line = real_line(&self.known_hosts, old).unwrap_or(*line);
            return Err(Error::HostKeyChanged {
                host: shown,
                offered: fingerprint,
                known_hosts: file,
                line,
            });
        }
        match self.policy {
            HostKeyPolicy::AcceptNew => {
                learn_known_hosts_path(&self.host, self.port, key, &self.known_hosts)
                    .map_err(|err| self.known_hosts_error("add the host key to", err))?;
                tracing::info!(host = %shown, %fingerprint, known_hosts = %file, "new host key trusted and recorded");
                Ok(())
            }
            _ => Err(Error::HostKeyUnknown {
                host: shown,
                fingerprint,
                known_hosts: file,
            }),
        }
    }

    /// A failure reading or writing known_hosts. russh reports I/O and key
    /// lines that do not parse alike; the latter become `InvalidData`.
    fn known_hosts_error(&self, doing: &'static str, err: russh::keys::Error) -> Error {
        let source = match err {
            russh::keys::Error::IO(io) => io,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        };
        Error::KnownHosts {
            path: self.known_hosts.clone(),
            doing,
            source,
        }
    }
}

/// The 1-based line of known_hosts that records `key`.
fn real_line(path: &std::path::Path, key: &PublicKey) -> Option<usize> {
    let encoded = key.to_openssh().ok()?;
    let base64 = encoded.split_whitespace().nth(1)?.to_owned();
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .position(|line| {
            !line.starts_with('#') && line.split_whitespace().any(|field| field == base64)
        })
        .map(|index| index + 1)
}

impl client::Handler for HostCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            if let Ok(mut verdict) = self.verdict.lock() {
                *verdict = Some(Error::HostCertificate {
                    host: display_host(&self.host, self.port),
                });
            }
            return Ok(false);
        };
        match self.check(key) {
            Ok(()) => Ok(true),
            Err(err) => {
                if let Ok(mut verdict) = self.verdict.lock() {
                    *verdict = Some(err);
                }
                Ok(false)
            }
        }
    }
}

/// Connects and opens the Korv channel.
pub(crate) async fn connect(
    config: &ClientConfig,
) -> Result<(Session, russh::Channel<client::Msg>), Error> {
    tokio::time::timeout(config.connect_timeout, connect_inner(config))
        .await
        .map_err(|_| Error::ConnectTimeout {
            addr: format!("{}:{}", config.host, config.port),
            limit: config.connect_timeout,
        })?
}

async fn connect_inner(
    config: &ClientConfig,
) -> Result<(Session, russh::Channel<client::Msg>), Error> {
    let addr = format!("{}:{}", config.host, config.port);
    let socket = TcpStream::connect((config.host.as_str(), config.port))
        .await
        .map_err(|source| Error::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = socket.set_nodelay(true);
    let verdict = Arc::new(Mutex::new(None));
    let check = HostCheck {
        host: config.host.clone(),
        port: config.port,
        known_hosts: config.known_hosts_path(),
        policy: config.policy,
        verdict: Arc::clone(&verdict),
    };
    let russh_config = Arc::new(client::Config {
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        // The largest russh accepts: fewer packets per large body.
        maximum_packet_size: 65535,
        preferred: russh::Preferred {
            cipher: cipher_preference().into(),
            ..russh::Preferred::default()
        },
        ..client::Config::default()
    });
    let mut handle = match client::connect_stream(russh_config, socket, check).await {
        Ok(handle) => handle,
        Err(err) => {
            if let Some(refusal) = verdict.lock().ok().and_then(|mut v| v.take()) {
                return Err(refusal);
            }
            return Err(Error::Ssh {
                addr,
                doing: "handshake",
                source: Box::new(err),
            });
        }
    };
    authenticate(&mut handle, config, &addr).await?;
    // korv 0.2.1 serves direct-tcpip channels only.
    let kind = match config.legacy {
        true => ChannelKind::DirectTcpip,
        false => config.channel,
    };
    let channel = match kind {
        ChannelKind::DirectTcpip => handle
            .channel_open_direct_tcpip("localhost", u32::from(config.port), "127.0.0.1", 0)
            .await
            .map_err(refused("direct-tcpip channel"))?,
        ChannelKind::Subsystem => {
            let channel = handle
                .channel_open_session()
                .await
                .map_err(refused("session channel"))?;
            channel
                .request_subsystem(true, "korv")
                .await
                .map_err(refused("korv subsystem"))?;
            channel
        }
    };
    Ok((Session { _handle: handle }, channel))
}

/// The error for a refused `channel`.
fn refused(channel: &'static str) -> impl FnOnce(russh::Error) -> Error {
    move |source| Error::ChannelRefused {
        channel,
        source: Box::new(source),
    }
}

async fn authenticate(
    handle: &mut Handle<HostCheck>,
    config: &ClientConfig,
    addr: &str,
) -> Result<(), Error> {
    let mut tried = Vec::new();
    let mut problems = Vec::new();
    for path in config.identity_paths() {
        let key = match russh::keys::load_secret_key(&path, config.passphrase.as_deref()) {
            Ok(key) => key,
            Err(err) => {
                let reason = match err {
                    russh::keys::Error::KeyIsEncrypted => IdentityError::Encrypted,
                    other => IdentityError::Load(other),
                };
                problems.push(Error::Identity { path, reason });
                continue;
            }
        };
        let hash = rsa_hash(handle, key.public_key()).await;
        tried.push(format!(
            "{} ({})",
            path.display(),
            key.public_key().fingerprint(HashAlg::Sha256)
        ));
        let result = handle
            .authenticate_publickey(
                &config.user,
                PrivateKeyWithHashAlg::new(Arc::new(key), hash),
            )
            .await
            .map_err(|source| Error::Ssh {
                addr: addr.to_owned(),
                doing: "authentication",
                source: Box::new(source),
            })?;
        if matches!(result, AuthResult::Success) {
            return Ok(());
        }
    }
    if let Some(socket) = config.agent_path()
        && try_agent(handle, config, &socket, &mut tried).await
    {
        return Ok(());
    }
    if tried.is_empty()
        && let Some(problem) = problems.into_iter().next()
    {
        return Err(problem);
    }
    Err(Error::AuthRefused {
        user: config.user.clone(),
        tried,
    })
}

/// Tries every key of the ssh-agent at `socket`, recording each in `tried`;
/// true when one is accepted. An agent that cannot be reached is skipped, as
/// OpenSSH does.
async fn try_agent(
    handle: &mut Handle<HostCheck>,
    config: &ClientConfig,
    socket: &std::path::Path,
    tried: &mut Vec<String>,
) -> bool {
    let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_uds(socket).await else {
        tracing::debug!(socket = %socket.display(), "ssh-agent unreachable: skipped");
        return false;
    };
    let identities = agent.request_identities().await.unwrap_or_default();
    for identity in identities {
        let key = identity.public_key().into_owned();
        let hash = rsa_hash(handle, &key).await;
        tried.push(format!("agent key {}", key.fingerprint(HashAlg::Sha256)));
        if let Ok(AuthResult::Success) = handle
            .authenticate_publickey_with(&config.user, key, hash, &mut agent)
            .await
        {
            return true;
        }
    }
    false
}

/// rsa-sha2-512/256 for RSA keys (never SHA-1), `None` for other keys.
async fn rsa_hash(handle: &Handle<HostCheck>, key: &PublicKey) -> Option<HashAlg> {
    if !key.algorithm().is_rsa() {
        return None;
    }
    handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten()
        .or(Some(HashAlg::Sha256))
}

/// Ciphers, best first. The client's order decides the cipher (RFC 4253:
/// the first of the client's list the server also has), so this is the one
/// place Korv chooses: AES-GCM where the CPU has AES instructions (several
/// times faster than chacha20-poly1305 there), chacha20 first otherwise.
fn cipher_preference() -> Vec<russh::cipher::Name> {
    use russh::cipher::{AES_128_GCM, AES_256_CTR, AES_256_GCM, CHACHA20_POLY1305};
    if aes_instructions() {
        vec![AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305, AES_256_CTR]
    } else {
        vec![CHACHA20_POLY1305, AES_128_GCM, AES_256_GCM, AES_256_CTR]
    }
}

fn aes_instructions() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    return std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("aes");
    #[allow(unreachable_code)]
    false
}
