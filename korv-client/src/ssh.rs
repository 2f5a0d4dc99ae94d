//! Connecting: the route to the server (jump hosts first, each reached
//! through a `direct-tcpip` channel of the one before, or a
//! `ProxyCommand`), the SSH handshake with each host key or host certificate
//! checked against known_hosts, public-key and certificate authentication,
//! and the Korv channel.

use std::path::{Path, PathBuf};
use std::process::Stdio;
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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::certificate::{self, LocalSigner};
use crate::config::{ChannelKind, ClientConfig, HostKeyPolicy};
use crate::endpoint::{self, Endpoint};
use crate::error::{Error, IdentityError};
use crate::known_hosts::{HostVerdict, KnownHosts, host_port};

/// Keeps the SSH connections open: the server's, and those of the jump
/// hosts its stream runs through (they close after it: fields drop in
/// order).
pub(crate) struct Session {
    _handle: Handle<HostCheck>,
    _hops: Vec<Handle<HostCheck>>,
    /// The `ProxyCommand` carrying the first connection (killed when dropped).
    _proxy: Option<Child>,
}

pub(crate) struct HostCheck {
    host: String,
    port: u16,
    /// The user files, where new keys are recorded in the first.
    known_hosts: Vec<PathBuf>,
    /// The system files, only read.
    global_known_hosts: Vec<PathBuf>,
    policy: HostKeyPolicy,
    hash: bool,
    verdict: Arc<Mutex<Option<Error>>>,
}

/// Seconds since the epoch, now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl HostCheck {
    fn new(endpoint: &Endpoint, verdict: &Arc<Mutex<Option<Error>>>) -> HostCheck {
        HostCheck {
            host: endpoint.host.clone(),
            port: endpoint.port,
            known_hosts: endpoint.known_hosts.clone(),
            global_known_hosts: endpoint.global_known_hosts.clone(),
            policy: endpoint.policy,
            hash: endpoint.hash_known_hosts,
            verdict: Arc::clone(verdict),
        }
    }

    /// Every known_hosts file, the user's then the system's, read.
    fn read_known_hosts(&self) -> Result<Vec<(&Path, KnownHosts)>, Error> {
        self.known_hosts
            .iter()
            .chain(&self.global_known_hosts)
            .map(|path| {
                let known = KnownHosts::read(path).map_err(|source| Error::KnownHosts {
                    path: path.clone(),
                    doing: "read known_hosts",
                    source,
                })?;
                for line in known.skipped() {
                    tracing::warn!(known_hosts = %path.display(), line, "skipping a known_hosts line that does not parse");
                }
                Ok((path.as_path(), known))
            })
            .collect()
    }

    /// Judges the offered host key or host certificate against the
    /// known_hosts files taken together, as OpenSSH does: a revocation in
    /// any refuses, then a match in any trusts, then the first changed key
    /// or refused certificate refuses.
    fn check(&self, offered: &PublicKeyOrCertificate) -> Result<(), Error> {
        if self.policy == HostKeyPolicy::InsecureAcceptAny {
            return Ok(());
        }
        let shown = host_port(&self.host, self.port);
        let key = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => {
                PublicKey::new(cert.public_key().clone(), "")
            }
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let now = now();
        let verdicts: Vec<(&Path, HostVerdict)> = self
            .read_known_hosts()?
            .into_iter()
            .map(|(path, known)| (path, known.check(&self.host, self.port, offered, now)))
            .collect();
        for (path, verdict) in &verdicts {
            if let HostVerdict::Revoked {
                what,
                fingerprint,
                line,
            } = verdict
            {
                return Err(Error::HostKeyRevoked {
                    host: shown,
                    what,
                    fingerprint: fingerprint.clone(),
                    known_hosts: path.display().to_string(),
                    line: *line,
                });
            }
        }
        for (_, verdict) in &verdicts {
            match verdict {
                HostVerdict::Trusted { .. } => return Ok(()),
                HostVerdict::TrustedByCa { ca_fingerprint, .. } => {
                    tracing::debug!(host = %shown, ca = %ca_fingerprint, "host certificate trusted");
                    return Ok(());
                }
                _ => {}
            }
        }
        for (path, verdict) in &verdicts {
            let file = path.display().to_string();
            match verdict {
                HostVerdict::Changed { line, .. } => {
                    return Err(Error::HostKeyChanged {
                        host: shown,
                        offered: fingerprint,
                        known_hosts: file,
                        line: *line,
                    });
                }
                HostVerdict::CertificateRefused(refusal) => {
                    return Err(Error::HostCertificate {
                        host: shown,
                        reason: refusal.to_string(),
                        known_hosts: file,
                    });
                }
                HostVerdict::UntrustedCa { ca_fingerprint } => {
                    return Err(Error::HostCertificate {
                        host: shown,
                        reason: format!(
                            "its CA {ca_fingerprint} is not trusted: no @cert-authority line for this host names it"
                        ),
                        known_hosts: file,
                    });
                }
                _ => {}
            }
        }
        let first = self.known_hosts.first();
        match (self.policy, first) {
            (HostKeyPolicy::AcceptNew, Some(file)) => {
                self.learn(&key, file)
                    .map_err(|err| known_hosts_error(file, "add the host key to", err))?;
                tracing::info!(host = %shown, %fingerprint, known_hosts = %file.display(), "new host key trusted and recorded");
                Ok(())
            }
            (HostKeyPolicy::AcceptNew, None) => {
                tracing::warn!(host = %shown, %fingerprint, "new host key trusted; no known_hosts file to record it in");
                Ok(())
            }
            _ => Err(Error::HostKeyUnknown {
                host: shown,
                fingerprint,
                known_hosts: first.map_or_else(|| "none".to_owned(), |f| f.display().to_string()),
            }),
        }
    }

    /// Appends `key` to `file`, under a hashed name with `HashKnownHosts`.
    fn learn(&self, key: &PublicKey, file: &Path) -> Result<(), russh::keys::Error> {
        match self
            .hash
            .then(|| hashed_name(&host_port(&self.host, self.port)))
            .flatten()
        {
            // Port 22 makes russh write the name as given.
            Some(hashed) => learn_known_hosts_path(&hashed, 22, key, file),
            None => learn_known_hosts_path(&self.host, self.port, key, file),
        }
    }

    /// Whether known_hosts has an `@cert-authority` line for the host: then
    /// the client asks for host certificates, as OpenSSH does.
    fn wants_certificates(&self) -> bool {
        self.policy != HostKeyPolicy::InsecureAcceptAny
            && self.read_known_hosts().is_ok_and(|files| {
                files
                    .iter()
                    .any(|(_, known)| known.has_authority_for(&self.host, self.port))
            })
    }
}

/// OpenSSH's hashed known_hosts name, `|1|salt|HMAC-SHA1(salt, name)` in
/// base64; `None` when no random salt can be had.
fn hashed_name(name: &str) -> Option<String> {
    use hmac::{Hmac, KeyInit, Mac};
    use std::io::Read;
    let mut salt = [0u8; 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut salt))
        .ok()?;
    let mac = Hmac::<sha1::Sha1>::new_from_slice(&salt).ok()?;
    let hash = mac.chain_update(name).finalize().into_bytes();
    let base64 = data_encoding::BASE64;
    Some(format!(
        "|1|{}|{}",
        base64.encode(&salt),
        base64.encode(&hash)
    ))
}

/// A failure reading or writing known_hosts. russh reports I/O and key
/// lines that do not parse alike; the latter become `InvalidData`.
fn known_hosts_error(path: &Path, doing: &'static str, err: russh::keys::Error) -> Error {
    let source = match err {
        russh::keys::Error::IO(io) => io,
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
    };
    Error::KnownHosts {
        path: path.to_owned(),
        doing,
        source,
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

/// The route to `config`'s server, resolved through its SSH configuration.
pub(crate) fn route(config: &ClientConfig) -> Result<Vec<Endpoint>, Error> {
    endpoint::route(config)
}

/// Connects through the route's jump hosts to the server and opens the Korv
/// channel.
pub(crate) async fn connect(
    config: &ClientConfig,
) -> Result<(Session, russh::Channel<client::Msg>), Error> {
    let route = route(config)?;
    let mut hops: Vec<Handle<HostCheck>> = Vec::new();
    let mut proxy = None;
    let mut previous: Option<&Endpoint> = None;
    for endpoint in &route {
        let handle = match (hops.last(), previous) {
            (Some(through), Some(jump)) => {
                within(endpoint, async {
                    let channel = through
                        .channel_open_direct_tcpip(
                            endpoint.host.as_str(),
                            u32::from(endpoint.port),
                            "127.0.0.1",
                            0,
                        )
                        .await
                        .map_err(|source| Error::JumpHost {
                            host: jump.name.clone(),
                            source: Box::new(Error::Forward {
                                to: format!("{} ({})", endpoint.name, endpoint.addr()),
                                source: Box::new(source),
                            }),
                        })?;
                    session(channel.into_stream(), endpoint).await
                })
                .await
            }
            (None, _) if endpoint.proxy_command.is_some() => {
                within(endpoint, async {
                    let (child, stream) = spawn_proxy(endpoint)?;
                    proxy = Some(child);
                    session(stream, endpoint).await
                })
                .await
            }
            _ => {
                within(endpoint, async {
                    let socket = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
                        .await
                        .map_err(|source| Error::Connect {
                            addr: endpoint.addr(),
                            source,
                        })?;
                    let _ = socket.set_nodelay(true);
                    // russh reads each SSH packet in two reads (its first
                    // block, then the rest): buffered, a burst of packets
                    // costs one system call, not two per packet.
                    let socket = tokio::io::BufReader::with_capacity(16 * 1024, socket);
                    session(socket, endpoint).await
                })
                .await
            }
        };
        let handle = handle.map_err(|err| name_hop(endpoint, err))?;
        if endpoint.jump {
            tracing::debug!(hop = %endpoint.name, addr = %endpoint.addr(), "jump host connected");
        }
        hops.push(handle);
        previous = Some(endpoint);
    }
    let (handle, target) = match (hops.pop(), route.last()) {
        (Some(handle), Some(target)) => (handle, target),
        _ => unreachable!("a route ends with the server"),
    };
    // korv 0.2.1 serves direct-tcpip channels only.
    let kind = match config.legacy {
        true => ChannelKind::DirectTcpip,
        false => config.channel,
    };
    let channel = match kind {
        ChannelKind::DirectTcpip => handle
            .channel_open_direct_tcpip("localhost", u32::from(target.port), "127.0.0.1", 0)
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
    Ok((
        Session {
            _handle: handle,
            _hops: hops,
            _proxy: proxy,
        },
        channel,
    ))
}

/// Starts `endpoint`'s `ProxyCommand` with `sh -c`, as ssh does: its
/// standard input and output are the connection; its errors go to ours.
fn spawn_proxy(
    endpoint: &Endpoint,
) -> Result<(Child, tokio::io::Join<ChildStdout, ChildStdin>), Error> {
    let command = endpoint.proxy_command.as_deref().unwrap_or_default();
    let proxy_error = |source| Error::ProxyCommand {
        command: command.to_owned(),
        source,
    };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec {command}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(proxy_error)?;
    let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return Err(proxy_error(std::io::Error::other(
            "no pipes to the command",
        )));
    };
    tracing::debug!(%command, addr = %endpoint.addr(), "proxy command started");
    Ok((child, tokio::io::join(stdout, stdin)))
}

/// Runs `step` within `endpoint`'s connect timeout.
async fn within<T>(
    endpoint: &Endpoint,
    step: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(endpoint.connect_timeout, step)
        .await
        .map_err(|_| Error::ConnectTimeout {
            addr: endpoint.addr(),
            limit: endpoint.connect_timeout,
        })?
}

/// A jump host's own failures name it; a failure already naming a hop (the
/// one before refusing to forward) stays as it is.
fn name_hop(endpoint: &Endpoint, err: Error) -> Error {
    if !endpoint.jump || matches!(err, Error::JumpHost { .. }) {
        return err;
    }
    Error::JumpHost {
        host: endpoint.name.clone(),
        source: Box::new(err),
    }
}

/// The SSH handshake and authentication with `endpoint` over `stream`.
async fn session<S>(stream: S, endpoint: &Endpoint) -> Result<Handle<HostCheck>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let verdict = Arc::new(Mutex::new(None));
    let check = HostCheck::new(endpoint, &verdict);
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
        keepalive_interval: endpoint.keepalive.map(|(interval, _)| interval),
        keepalive_max: endpoint
            .keepalive
            .map_or(3, |(_, count)| usize::try_from(count).unwrap_or(usize::MAX)),
        ..client::Config::default()
    });
    let mut handle = match client::connect_stream(russh_config, stream, check).await {
        Ok(handle) => handle,
        Err(err) => {
            if let Some(refusal) = verdict.lock().ok().and_then(|mut v| v.take()) {
                return Err(refusal);
            }
            return Err(Error::Ssh {
                addr: endpoint.addr(),
                doing: "handshake",
                source: Box::new(err),
            });
        }
    };
    authenticate(&mut handle, endpoint).await?;
    Ok(handle)
}

/// The error for a refused `channel`.
fn refused(channel: &'static str) -> impl FnOnce(russh::Error) -> Error {
    move |source| Error::ChannelRefused {
        channel,
        source: Box::new(source),
    }
}

/// The certificates named for `endpoint`, read once.
fn named_certificates(endpoint: &Endpoint) -> Result<Vec<(PathBuf, Certificate)>, Error> {
    endpoint
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

async fn authenticate(handle: &mut Handle<HostCheck>, endpoint: &Endpoint) -> Result<(), Error> {
    let addr = endpoint.addr();
    let ssh_error = |source| Error::Ssh {
        addr: addr.clone(),
        doing: "authentication",
        source: Box::new(source),
    };
    let named = named_certificates(endpoint)?;
    let mut tried = Vec::new();
    let mut problems = Vec::new();
    // With IdentitiesOnly, the agent may sign only for these keys.
    let mut listed: Vec<PublicKey> = Vec::new();
    for path in endpoint.identities.iter().cloned() {
        if let Ok(public) = russh::keys::load_public_key(public_path(&path)) {
            listed.push(public);
        }
        let key = match russh::keys::load_secret_key(&path, endpoint.passphrase.as_deref()) {
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
        listed.push(key.public_key().clone());
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
                .authenticate_certificate_with(&endpoint.user, cert, hash, &mut signer)
                .await
                .map_err(|err| match err {
                    russh::AgentAuthError::Send(_) => ssh_error(russh::Error::SendError),
                    russh::AgentAuthError::Key(err) => Error::Identity {
                        path: path.clone(),
                        reason: IdentityError::Load(err),
                    },
                })?;
            if matches!(result, AuthResult::Success) {
                tracing::debug!(addr = %addr, certificate = %cert_path.display(), "authenticated");
                return Ok(());
            }
        }
        tried.push(format!(
            "{} ({})",
            path.display(),
            key.public_key().fingerprint(HashAlg::Sha256)
        ));
        let result = handle
            .authenticate_publickey(&endpoint.user, PrivateKeyWithHashAlg::new(key, hash))
            .await
            .map_err(ssh_error)?;
        if matches!(result, AuthResult::Success) {
            tracing::debug!(addr = %addr, identity = %path.display(), "authenticated");
            return Ok(());
        }
    }
    if let Some(socket) = &endpoint.agent {
        let only = endpoint.identities_only.then_some(listed.as_slice());
        let mut agent = Agent {
            socket,
            only,
            named: &named,
        };
        if agent
            .try_keys(handle, endpoint, &mut tried, &mut problems)
            .await
        {
            return Ok(());
        }
    }
    if tried.is_empty()
        && let Some(problem) = problems.into_iter().next()
    {
        return Err(problem);
    }
    Err(Error::AuthRefused {
        user: endpoint.user.clone(),
        tried,
    })
}

/// `key.pub` beside the private key `key`.
fn public_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
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

/// The ssh-agent to try, and which of its keys.
struct Agent<'a> {
    socket: &'a Path,
    /// With `IdentitiesOnly`, only the keys of the identity files.
    only: Option<&'a [PublicKey]>,
    /// The certificates named for the endpoint.
    named: &'a [(PathBuf, Certificate)],
}

impl Agent<'_> {
    /// Whether `key` may be offered.
    fn allows(&self, key: &PublicKey) -> bool {
        self.only.is_none_or(|only| {
            only.iter()
                .any(|listed| listed.key_data() == key.key_data())
        })
    }

    /// Tries the agent's certificates first, then each of its keys (with any
    /// named certificate for it, then plain), recording each in `tried`; true
    /// when one is accepted. An agent that cannot be reached is skipped, as
    /// OpenSSH does.
    async fn try_keys(
        &mut self,
        handle: &mut Handle<HostCheck>,
        endpoint: &Endpoint,
        tried: &mut Vec<String>,
        problems: &mut Vec<Error>,
    ) -> bool {
        let (socket, named) = (self.socket, self.named);
        let Ok(mut agent) = AgentClient::connect_uds(socket).await else {
            tracing::debug!(socket = %socket.display(), "ssh-agent unreachable: skipped");
            return false;
        };
        let mut identities = agent.request_identities().await.unwrap_or_default();
        identities.sort_by_key(|identity| matches!(identity, AgentIdentity::PublicKey { .. }));
        for identity in identities {
            let key = identity.public_key().into_owned();
            if !self.allows(&key) {
                continue;
            }
            let hash = rsa_hash(handle, &key).await;
            match identity {
                AgentIdentity::Certificate { certificate, .. } => {
                    let shown = PathBuf::from("agent");
                    if !usable(&shown, &certificate, tried, problems) {
                        continue;
                    }
                    if let Ok(AuthResult::Success) = handle
                        .authenticate_certificate_with(
                            &endpoint.user,
                            certificate,
                            hash,
                            &mut agent,
                        )
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
                            .authenticate_certificate_with(&endpoint.user, cert, hash, &mut signer)
                            .await
                        {
                            return true;
                        }
                    }
                    tried.push(format!("agent key {}", key.fingerprint(HashAlg::Sha256)));
                    if let Ok(AuthResult::Success) = handle
                        .authenticate_publickey_with(&endpoint.user, key, hash, &mut agent)
                        .await
                    {
                        return true;
                    }
                }
            }
        }
        false
    }
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
