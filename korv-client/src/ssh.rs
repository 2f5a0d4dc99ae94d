//! Connecting: TCP, the SSH handshake with the host key checked against
//! known_hosts, public-key authentication, and the Korv channel.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use russh::client::{self, AuthResult, Handle};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::known_hosts::learn_known_hosts_path;
use russh::keys::{
    Algorithm, Certificate, EcdsaCurve, HashAlg, PrivateKeyWithHashAlg, PublicKey,
    PublicKeyOrCertificate,
};
use tokio::net::TcpStream;

use crate::certificate::{self, LocalSigner};
use crate::config::{ChannelKind, ClientConfig, HostKeyPolicy};
use crate::error::{Error, IdentityError};
use crate::known_hosts::{HostVerdict, KnownHosts, host_port};

/// Keeps the SSH connection open.
pub(crate) struct Session {
    _handle: Handle<HostCheck>,
}

pub(crate) struct HostCheck {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    policy: HostKeyPolicy,
    verdict: Arc<Mutex<Option<Error>>>,
}

/// Seconds since the epoch, now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl HostCheck {
    fn read_known_hosts(&self) -> Result<KnownHosts, Error> {
        let known = KnownHosts::read(&self.known_hosts).map_err(|source| Error::KnownHosts {
            path: self.known_hosts.clone(),
            doing: "read known_hosts",
            source,
        })?;
        for line in known.skipped() {
            tracing::warn!(known_hosts = %self.known_hosts.display(), line, "skipping a known_hosts line that does not parse");
        }
        Ok(known)
    }

    /// Judges the offered host key or host certificate against known_hosts.
    fn check(&self, offered: &PublicKeyOrCertificate) -> Result<(), Error> {
        if self.policy == HostKeyPolicy::InsecureAcceptAny {
            return Ok(());
        }
        let shown = host_port(&self.host, self.port);
        let file = self.known_hosts.display().to_string();
        let key = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => {
                PublicKey::new(cert.public_key().clone(), "")
            }
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let known = self.read_known_hosts()?;
        match known.check(&self.host, self.port, offered, now()) {
            HostVerdict::Trusted { .. } => Ok(()),
            HostVerdict::TrustedByCa { ca_fingerprint, .. } => {
                tracing::debug!(host = %shown, ca = %ca_fingerprint, "host certificate trusted");
                Ok(())
            }
            HostVerdict::Revoked {
                what,
                fingerprint,
                line,
            } => Err(Error::HostKeyRevoked {
                host: shown,
                what,
                fingerprint,
                known_hosts: file,
                line,
            }),
            HostVerdict::CertificateRefused(refusal) => Err(Error::HostCertificate {
                host: shown,
                reason: refusal.to_string(),
                known_hosts: file,
            }),
            HostVerdict::UntrustedCa { ca_fingerprint } => Err(Error::HostCertificate {
                host: shown,
                reason: format!(
                    "its CA {ca_fingerprint} is not trusted: no @cert-authority line for this host names it"
                ),
                known_hosts: file,
            }),
            HostVerdict::Changed { line, .. } => Err(Error::HostKeyChanged {
                host: shown,
                offered: fingerprint,
                known_hosts: file,
                line,
            }),
            HostVerdict::Unknown => match self.policy {
                HostKeyPolicy::AcceptNew => {
                    learn_known_hosts_path(&self.host, self.port, &key, &self.known_hosts)
                        .map_err(|err| self.known_hosts_error("add the host key to", err))?;
                    tracing::info!(host = %shown, %fingerprint, known_hosts = %file, "new host key trusted and recorded");
                    Ok(())
                }
                _ => Err(Error::HostKeyUnknown {
                    host: shown,
                    fingerprint,
                    known_hosts: file,
                }),
            },
        }
    }

    /// A failure writing known_hosts. russh reports I/O and key encoding
    /// alike; the latter becomes `InvalidData`.
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

    /// Whether known_hosts has an `@cert-authority` line for the host: then
    /// the client asks for host certificates, as OpenSSH does.
    fn wants_certificates(&self) -> bool {
        self.policy != HostKeyPolicy::InsecureAcceptAny
            && self
                .read_known_hosts()
                .is_ok_and(|known| known.has_authority_for(&self.host, self.port))
    }
}

/// Host certificate algorithms, best first; never SHA-1 `ssh-rsa`.
const HOST_CERTIFICATES: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

impl client::Handler for HostCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match self.check(offered) {
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

/// Connects and opens the Korv channel, as a byte stream.
pub(crate) async fn connect(
    config: &ClientConfig,
) -> Result<(Session, russh::ChannelStream<client::Msg>), Error> {
    tokio::time::timeout(config.connect_timeout, connect_inner(config))
        .await
        .map_err(|_| Error::ConnectTimeout {
            addr: format!("{}:{}", config.host, config.port),
            limit: config.connect_timeout,
        })?
}

async fn connect_inner(
    config: &ClientConfig,
) -> Result<(Session, russh::ChannelStream<client::Msg>), Error> {
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
    let host_key_certificates = if check.wants_certificates() {
        HOST_CERTIFICATES
    } else {
        &[]
    };
    let russh_config = Arc::new(client::Config {
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        // The largest russh accepts: fewer packets per large body.
        maximum_packet_size: 65535,
        preferred: russh::Preferred {
            cipher: cipher_preference().into(),
            host_key_certificates: host_key_certificates.into(),
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
    let channel = match config.channel {
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
    Ok((Session { _handle: handle }, channel.into_stream()))
}

/// The error for a refused `channel`.
fn refused(channel: &'static str) -> impl FnOnce(russh::Error) -> Error {
    move |source| Error::ChannelRefused {
        channel,
        source: Box::new(source),
    }
}

/// The certificates named in the config, read once.
fn named_certificates(config: &ClientConfig) -> Result<Vec<(PathBuf, Certificate)>, Error> {
    config
        .certificates
        .iter()
        .map(|path| {
            certificate::read(path)
                .map(|cert| (path.clone(), cert))
                .map_err(|reason| Error::Identity {
                    path: path.clone(),
                    reason: IdentityError::Certificate {
                        path: path.clone(),
                        reason,
                    },
                })
        })
        .collect()
}

/// The certificates for `key`: the named ones that certify it, then the one
/// beside `identity` (`identity-cert.pub`) if there is one.
fn certificates_for(
    key: &PublicKey,
    identity: Option<&Path>,
    named: &[(PathBuf, Certificate)],
    problems: &mut Vec<Error>,
) -> Vec<(PathBuf, Certificate)> {
    let mut found: Vec<(PathBuf, Certificate)> = named
        .iter()
        .filter(|(_, cert)| certificate::certifies(cert, key.key_data()))
        .cloned()
        .collect();
    if let Some(identity) = identity {
        let beside = certificate::beside(identity);
        if beside.exists() && !found.iter().any(|(path, _)| *path == beside) {
            match certificate::read(&beside) {
                Ok(cert) if certificate::certifies(&cert, key.key_data()) => {
                    found.push((beside, cert));
                }
                Ok(_) => problems.push(certificate_problem(
                    &beside,
                    "it certifies another key".to_owned(),
                )),
                Err(reason) => problems.push(certificate_problem(&beside, reason)),
            }
        }
    }
    found
}

fn certificate_problem(path: &Path, reason: String) -> Error {
    Error::Identity {
        path: path.to_owned(),
        reason: IdentityError::Certificate {
            path: path.to_owned(),
            reason,
        },
    }
}

/// Whether `cert` may be offered now; if not, records why.
fn usable(
    path: &Path,
    cert: &Certificate,
    tried: &mut Vec<String>,
    problems: &mut Vec<Error>,
) -> bool {
    match certificate::unusable(cert, SystemTime::now()) {
        None => {
            tried.push(format!(
                "{} ({})",
                path.display(),
                certificate::describe(cert)
            ));
            true
        }
        Some(reason) => {
            tried.push(format!("{} (not offered: {reason})", path.display()));
            problems.push(certificate_problem(path, reason));
            false
        }
    }
}

async fn authenticate(
    handle: &mut Handle<HostCheck>,
    config: &ClientConfig,
    addr: &str,
) -> Result<(), Error> {
    let ssh_error = |source| Error::Ssh {
        addr: addr.to_owned(),
        doing: "authentication",
        source: Box::new(source),
    };
    let named = named_certificates(config)?;
    let mut tried = Vec::new();
    let mut problems = Vec::new();
    for path in config.identity_paths() {
        let key = match russh::keys::load_secret_key(&path, config.passphrase.as_deref()) {
            Ok(key) => Arc::new(key),
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
        // A certificate first, as OpenSSH does: a server that trusts only
        // its CA would count the plain key as one more failed attempt.
        for (cert_path, cert) in
            certificates_for(key.public_key(), Some(&path), &named, &mut problems)
        {
            if !usable(&cert_path, &cert, &mut tried, &mut problems) {
                continue;
            }
            let mut signer = LocalSigner::new(Arc::clone(&key));
            let result = handle
                .authenticate_certificate_with(&config.user, cert, hash, &mut signer)
                .await
                .map_err(|err| match err {
                    russh::AgentAuthError::Send(_) => ssh_error(russh::Error::SendError),
                    russh::AgentAuthError::Key(err) => Error::Identity {
                        path: path.clone(),
                        reason: IdentityError::Load(err),
                    },
                })?;
            if matches!(result, AuthResult::Success) {
                return Ok(());
            }
        }
        tried.push(format!(
            "{} ({})",
            path.display(),
            key.public_key().fingerprint(HashAlg::Sha256)
        ));
        let result = handle
            .authenticate_publickey(&config.user, PrivateKeyWithHashAlg::new(key, hash))
            .await
            .map_err(ssh_error)?;
        if matches!(result, AuthResult::Success) {
            return Ok(());
        }
    }
    if let Some(socket) = config.agent_path()
        && try_agent(handle, config, &socket, &named, &mut tried, &mut problems).await
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

/// Signs with an agent's plain key for a certificate the agent does not
/// hold (one named with `certificate_file`).
struct AgentKeySigner<'a> {
    agent: &'a mut AgentClient<tokio::net::UnixStream>,
    key: AgentIdentity,
}

impl russh::Signer for AgentKeySigner<'_> {
    type Error = russh::AgentAuthError;

    async fn auth_sign(
        &mut self,
        _certificate: &AgentIdentity,
        hash_alg: Option<HashAlg>,
        to_sign: Vec<u8>,
    ) -> Result<Vec<u8>, Self::Error> {
        Ok(self
            .agent
            .sign_request(&self.key, hash_alg, to_sign)
            .await?)
    }
}

/// Tries the ssh-agent at `socket`: its certificates first, then each of its
/// keys (with any named certificate for it, then plain), recording each in
/// `tried`; true when one is accepted. An agent that cannot be reached is
/// skipped, as OpenSSH does.
async fn try_agent(
    handle: &mut Handle<HostCheck>,
    config: &ClientConfig,
    socket: &Path,
    named: &[(PathBuf, Certificate)],
    tried: &mut Vec<String>,
    problems: &mut Vec<Error>,
) -> bool {
    let Ok(mut agent) = AgentClient::connect_uds(socket).await else {
        tracing::debug!(socket = %socket.display(), "ssh-agent unreachable: skipped");
        return false;
    };
    let mut identities = agent.request_identities().await.unwrap_or_default();
    identities.sort_by_key(|identity| matches!(identity, AgentIdentity::PublicKey { .. }));
    for identity in identities {
        let key = identity.public_key().into_owned();
        let hash = rsa_hash(handle, &key).await;
        match identity {
            AgentIdentity::Certificate { certificate, .. } => {
                let shown = PathBuf::from("agent");
                if !usable(&shown, &certificate, tried, problems) {
                    continue;
                }
                if let Ok(AuthResult::Success) = handle
                    .authenticate_certificate_with(&config.user, certificate, hash, &mut agent)
                    .await
                {
                    return true;
                }
            }
            AgentIdentity::PublicKey { .. } => {
                for (path, cert) in certificates_for(&key, None, named, problems) {
                    if !usable(&path, &cert, tried, problems) {
                        continue;
                    }
                    let mut signer = AgentKeySigner {
                        agent: &mut agent,
                        key: AgentIdentity::from(key.clone()),
                    };
                    if let Ok(AuthResult::Success) = handle
                        .authenticate_certificate_with(&config.user, cert, hash, &mut signer)
                        .await
                    {
                        return true;
                    }
                }
                tried.push(format!("agent key {}", key.fingerprint(HashAlg::Sha256)));
                if let Ok(AuthResult::Success) = handle
                    .authenticate_publickey_with(&config.user, key, hash, &mut agent)
                    .await
                {
                    return true;
                }
            }
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
