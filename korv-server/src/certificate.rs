//! OpenSSH user certificates: the trusted CA keys, the revoked keys, and the
//! checks a certificate must pass before it authenticates a user.
//!
//! A certificate is trusted through a `TrustedUserCAKeys`-style file (its
//! principals must include the user name) or through a `cert-authority` line
//! of authorized_keys (its principals must include one of the line's
//! `principals="…"`, or the user name when the line has none). The CA is
//! always one of those configured keys: the key a certificate carries as its
//! signer is only compared with them, never trusted by itself.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use korv_proto::utc_date;
use russh::keys::HashAlg;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Algorithm, Certificate, Fingerprint, PublicKey};
use tracing::warn;

use crate::authorized::{self, AuthorizedKeys};
use crate::reload::ReloadingFile;

/// The user certificate a client authenticated with, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateInfo {
    /// The key id the CA wrote into the certificate (`ssh-keygen -I`).
    pub key_id: String,
    /// The certificate's serial number (`ssh-keygen -z`).
    pub serial: u64,
    /// The principals the certificate is valid for (`ssh-keygen -n`).
    pub principals: Vec<String>,
    /// The signing CA key's fingerprint, `SHA256:…`.
    pub ca_fingerprint: String,
    /// The start of the validity window.
    pub valid_after: SystemTime,
    /// The end of the validity window; `None` when the certificate never expires.
    pub valid_before: Option<SystemTime>,
}

/// From this many seconds since the epoch on, a certificate never expires:
/// no later time is representable.
const FOREVER: u64 = i64::MAX as u64;

impl CertificateInfo {
    /// Describes `cert`, trusting whoever checked it: for certificates that
    /// another server accepted, such as OpenSSH's sshd hosting a Korv app
    /// (`ExposeAuthInfo`). Korv's own server checks every certificate before
    /// handlers see it.
    pub fn from_certificate(cert: &Certificate) -> Self {
        CertificateInfo {
            key_id: cert.key_id().to_owned(),
            serial: cert.serial(),
            principals: cert.valid_principals().to_vec(),
            ca_fingerprint: cert
                .signature_key()
                .fingerprint(HashAlg::Sha256)
                .to_string(),
            valid_after: SystemTime::UNIX_EPOCH + Duration::from_secs(cert.valid_after()),
            // OpenSSH writes u64::MAX for "forever"; ssh-key turns it into the
            // latest representable time rather than no end.
            valid_before: match cert.valid_before() {
                FOREVER.. => None,
                _ => cert.valid_before_time(),
            },
        }
    }

    /// Whether the certificate carries `principal`.
    pub fn has_principal(&self, principal: &str) -> bool {
        self.principals.iter().any(|p| p == principal)
    }

    /// A certificate with these principals, for unit tests of rules.
    #[cfg(test)]
    pub(crate) fn for_tests(principals: &[&str]) -> Self {
        CertificateInfo {
            key_id: "test".into(),
            serial: 1,
            principals: principals.iter().map(|p| (*p).to_owned()).collect(),
            ca_fingerprint: String::new(),
            valid_after: SystemTime::UNIX_EPOCH,
            valid_before: None,
        }
    }
}

/// Why a user certificate was refused. The `Display` form is one sentence
/// for the server's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CertRefusal {
    #[error("the certificate's key {fingerprint} is listed in the revoked keys")]
    KeyRevoked { fingerprint: String },
    #[error("the certificate's CA {fingerprint} is listed in the revoked keys")]
    CaRevoked { fingerprint: String },
    #[error("{reason}: refusing every certificate")]
    RevokedKeysUnreadable { reason: String },
    #[error("the certificate is signed by {fingerprint}, which is not a trusted CA")]
    UntrustedCa { fingerprint: String },
    #[error("the cert-authority line for CA {fingerprint} {reason}")]
    CaLineRefused {
        fingerprint: String,
        reason: &'static str,
    },
    #[error("the certificate is a host certificate, not a user certificate")]
    NotUserCertificate,
    #[error("the CA signed the certificate with SHA-1 ssh-rsa, which is refused")]
    Sha1Signature,
    #[error("the certificate's signature does not verify against CA {fingerprint}")]
    BadSignature { fingerprint: String },
    #[error("the certificate is not valid before {valid_after}")]
    NotYetValid { valid_after: String },
    #[error("the certificate expired at {valid_before}")]
    Expired { valid_before: String },
    #[error("the certificate has no principals")]
    NoPrincipals,
    #[error("the certificate's principals {carried:?} include none of {wanted:?}")]
    PrincipalMissing {
        wanted: Vec<String>,
        carried: Vec<String>,
    },
    #[error("the client address {client} is outside the certificate's source-address {allowed:?}")]
    SourceAddress { allowed: String, client: String },
    #[error("the certificate's source-address {value:?} is malformed")]
    BadSourceAddress { value: String },
    #[error("the certificate has force-command {command:?}, which Korv cannot honour")]
    ForceCommand { command: String },
    #[error("the certificate has the critical option {name:?}, which Korv does not implement")]
    UnknownCriticalOption { name: String },
}

/// Parsed contents of a plain public-key list, or why it cannot be used.
type KeyListContents = Result<Vec<KeyData>, String>;

/// A list of public keys, one per line as OpenSSH writes them (comments
/// and blank lines skipped), from memory or from a file re-read on change.
#[derive(Debug)]
pub(crate) enum KeyList {
    Memory(Arc<Vec<KeyData>>),
    File(ReloadingFile<KeyListContents>),
}

impl KeyList {
    pub(crate) fn from_keys(keys: Vec<KeyData>) -> Self {
        KeyList::Memory(Arc::new(keys))
    }

    /// A file re-read when it changes; `what` names it in log lines.
    pub(crate) fn from_file(path: PathBuf, what: &'static str) -> Self {
        KeyList::File(ReloadingFile::new(path, what, parse_key_list))
    }

    /// Runs `f` on the current keys, or returns why the list is unusable.
    fn with_keys<R>(&self, f: impl FnOnce(&[KeyData]) -> R) -> Result<R, String> {
        match self {
            KeyList::Memory(keys) => Ok(f(keys)),
            KeyList::File(file) => match file.current().as_ref() {
                Ok(Ok(keys)) => Ok(f(keys)),
                Ok(Err(reason)) | Err(reason) => Err(reason.clone()),
            },
        }
    }

    fn contains(&self, key: &KeyData) -> Result<bool, String> {
        self.with_keys(|keys| keys.contains(key))
    }
}

/// Parses a plain key list. A certificate line stands for its key. A binary
/// KRL is reported as unusable rather than read as an empty list.
fn parse_key_list(text: &str, path: &Path) -> KeyListContents {
    if text.starts_with("SSHKRL") {
        return Err(format!(
            "{} is a binary KRL, which Korv does not read; give a plain list of public keys",
            path.display()
        ));
    }
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Ok(key) = PublicKey::from_openssh(line) {
            keys.push(key.key_data().clone());
        } else if let Ok(cert) = Certificate::from_openssh(line) {
            keys.push(cert.public_key().clone());
        } else {
            warn!(file = %path.display(), line = index + 1, "skipping a line that is not a public key");
        }
    }
    Ok(keys)
}

/// Everything a user key or certificate is checked against.
#[derive(Debug, Default)]
pub(crate) struct Trust {
    /// `TrustedUserCAKeys`: CAs whose certificates must name the user.
    pub(crate) user_cas: Option<KeyList>,
    /// authorized_keys, for its `cert-authority` lines.
    pub(crate) authorized: Option<Arc<AuthorizedKeys>>,
    /// Keys refused outright, as user keys or as CAs.
    pub(crate) revoked: Option<KeyList>,
}

impl Trust {
    /// Whether a certificate could be accepted at all: a CA is trusted by a
    /// `TrustedUserCAKeys` file or by a `cert-authority` line.
    pub(crate) fn accepts_certificates(&self) -> bool {
        self.user_cas.is_some()
            || self
                .authorized
                .as_ref()
                .is_some_and(|authorized| authorized.has_authorities())
    }

    /// Whether `key` is listed in the revoked keys; an unreadable list
    /// counts every key as revoked.
    pub(crate) fn is_revoked(&self, key: &KeyData) -> Result<bool, String> {
        match &self.revoked {
            None => Ok(false),
            Some(list) => list.contains(key),
        }
    }
}

/// Checks a user certificate offered by `user` from `client` at `now`
/// (seconds since the epoch), against `trust`.
pub(crate) fn check_user_certificate(
    cert: &Certificate,
    user: &str,
    client: Option<IpAddr>,
    now: u64,
    trust: &Trust,
) -> Result<CertificateInfo, CertRefusal> {
    let ca = cert.signature_key();
    let ca_fingerprint = ca.fingerprint(HashAlg::Sha256);
    let key_fingerprint = cert.public_key().fingerprint(HashAlg::Sha256);
    let unreadable = |reason| CertRefusal::RevokedKeysUnreadable { reason };
    if trust.is_revoked(cert.public_key()).map_err(unreadable)? {
        return Err(CertRefusal::KeyRevoked {
            fingerprint: key_fingerprint.to_string(),
        });
    }
    if trust.is_revoked(ca).map_err(unreadable)? {
        return Err(CertRefusal::CaRevoked {
            fingerprint: ca_fingerprint.to_string(),
        });
    }

    // Each way the CA is trusted brings its own principal rule: the
    // certificate must carry one of `wanted`.
    let mut rules: Vec<Vec<String>> = Vec::new();
    if let Some(cas) = &trust.user_cas
        && cas.contains(ca).unwrap_or(false)
    {
        rules.push(vec![user.to_owned()]);
    }
    let mut line_refusal = None;
    if let Some(authorized) = &trust.authorized {
        match authorized.authorities(ca, client) {
            Ok(lines) => rules.extend(lines.iter().map(|line| match line.principals() {
                Some(principals) => principals.to_vec(),
                None => vec![user.to_owned()],
            })),
            Err(authorized::Refusal::Expired) => line_refusal = Some("has expired"),
            Err(authorized::Refusal::FromMismatch) => {
                line_refusal = Some("does not allow the client address (from=)")
            }
            Err(authorized::Refusal::Unknown) => {}
        }
    }
    if rules.is_empty() {
        return Err(match line_refusal {
            Some(reason) => CertRefusal::CaLineRefused {
                fingerprint: ca_fingerprint.to_string(),
                reason,
            },
            None => CertRefusal::UntrustedCa {
                fingerprint: ca_fingerprint.to_string(),
            },
        });
    }

    if cert.cert_type() != CertType::User {
        return Err(CertRefusal::NotUserCertificate);
    }
    if cert.signature().algorithm() == (Algorithm::Rsa { hash: None }) {
        return Err(CertRefusal::Sha1Signature);
    }
    if now < cert.valid_after() {
        return Err(CertRefusal::NotYetValid {
            valid_after: utc_date(cert.valid_after()),
        });
    }
    if now >= cert.valid_before() {
        return Err(CertRefusal::Expired {
            valid_before: utc_date(cert.valid_before()),
        });
    }
    // Signature, CA fingerprint and window together, by ssh-key; the window
    // was checked above, so a failure here is the signature.
    let trusted: [&Fingerprint; 1] = [&ca_fingerprint];
    if cert.validate_at(now, trusted).is_err() {
        return Err(CertRefusal::BadSignature {
            fingerprint: ca_fingerprint.to_string(),
        });
    }

    let carried = cert.valid_principals();
    if carried.is_empty() {
        return Err(CertRefusal::NoPrincipals);
    }
    let satisfied = rules
        .iter()
        .any(|wanted| wanted.iter().any(|w| carried.contains(w)));
    if !satisfied {
        let mut wanted: Vec<String> = rules.into_iter().flatten().collect();
        wanted.dedup();
        return Err(CertRefusal::PrincipalMissing {
            wanted,
            carried: carried.to_vec(),
        });
    }

    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            "source-address" => check_source_address(value, client)?,
            "force-command" => {
                return Err(CertRefusal::ForceCommand {
                    command: value.clone(),
                });
            }
            _ => {
                return Err(CertRefusal::UnknownCriticalOption { name: name.clone() });
            }
        }
    }

    Ok(CertificateInfo::from_certificate(cert))
}

/// `source-address`: a comma-separated list of addresses and CIDR blocks
/// that must contain the client's address.
fn check_source_address(value: &str, client: Option<IpAddr>) -> Result<(), CertRefusal> {
    let mut matched = false;
    for entry in value.split(',') {
        match cidr_contains(entry.trim(), client) {
            Some(hit) => matched |= hit,
            None => {
                return Err(CertRefusal::BadSourceAddress {
                    value: value.to_owned(),
                });
            }
        }
    }
    if matched {
        Ok(())
    } else {
        Err(CertRefusal::SourceAddress {
            allowed: value.to_owned(),
            client: client.map_or_else(|| "(none)".to_owned(), |ip| ip.to_string()),
        })
    }
}

/// Whether `entry` (`addr` or `addr/bits`) contains `client`; `None` when
/// the entry is malformed.
fn cidr_contains(entry: &str, client: Option<IpAddr>) -> Option<bool> {
    let (addr, bits) = match entry.split_once('/') {
        Some((addr, bits)) => (addr, Some(bits.parse::<u32>().ok()?)),
        None => (entry, None),
    };
    let network: IpAddr = addr.parse().ok()?;
    let Some(client) = client.map(|ip| ip.to_canonical()) else {
        return Some(false);
    };
    Some(match (network, client) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let bits = bits.unwrap_or(32);
            if bits > 32 {
                return None;
            }
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let bits = bits.unwrap_or(128);
            if bits > 128 {
                return None;
            }
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    })
}

impl fmt::Display for CertificateInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate {:?} serial {} from CA {}",
            self.key_id, self.serial, self.ca_fingerprint
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use korv_testkit::certs::sign;
    use korv_testkit::keys::{KeyKind, keygen, public_key_path};

    /// 2030-01-15 00:00:00 UTC, inside the `-V 20300101:20300201` window.
    const NOW: u64 = 1_894_665_600;
    const WINDOW: &str = "20300101:20300201";

    struct Keys {
        dir: tempfile::TempDir,
    }

    impl Keys {
        fn new() -> Self {
            Keys {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Generates a key pair `name`, `name.pub`: `ed25519` or `rsa`.
        fn key(&self, name: &str, kind: &str) -> PublicKey {
            let kind = if kind == "rsa" {
                KeyKind::Rsa(2048)
            } else {
                KeyKind::Ed25519
            };
            let private = keygen(self.dir.path(), name, kind);
            PublicKey::read_openssh_file(public_key_path(&private)).unwrap()
        }

        /// Signs `key.pub` with `ca` into a certificate called `name` (the
        /// key id), beside a copy of `key.pub` as `name.pub`.
        fn cert(&self, ca: &str, key: &str, name: &str, args: &[&str]) -> Certificate {
            std::fs::copy(
                self.path(&format!("{key}.pub")),
                self.path(&format!("{name}.pub")),
            )
            .unwrap();
            let path = sign(&self.path(ca), &self.path(name), name, args);
            Certificate::read_file(&path).unwrap()
        }
    }

    fn trust_file_cas(cas: &[&PublicKey]) -> Trust {
        Trust {
            user_cas: Some(KeyList::from_keys(
                cas.iter().map(|k| k.key_data().clone()).collect(),
            )),
            ..Trust::default()
        }
    }

    fn localhost() -> Option<IpAddr> {
        Some("127.0.0.1".parse().unwrap())
    }

    /// A CA, a user key, and a good certificate for `alice`.
    fn setup() -> (Keys, PublicKey, PublicKey) {
        let keys = Keys::new();
        let ca = keys.key("ca", "ed25519");
        let user = keys.key("user", "ed25519");
        (keys, ca, user)
    }

    #[test]
    fn a_good_certificate_is_accepted_with_its_details() {
        let (keys, ca, _) = setup();
        let cert = keys.cert(
            "ca",
            "user",
            "good",
            &["-n", "alice,admin", "-V", WINDOW, "-z", "42"],
        );
        let info =
            check_user_certificate(&cert, "alice", localhost(), NOW, &trust_file_cas(&[&ca]))
                .unwrap();
        assert_eq!(info.key_id, "good");
        assert_eq!(info.serial, 42);
        assert_eq!(info.principals, ["alice", "admin"]);
        assert!(info.has_principal("admin"));
        assert_eq!(
            info.ca_fingerprint,
            ca.fingerprint(HashAlg::Sha256).to_string()
        );
        assert_eq!(
            info.valid_after,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000)
        );
    }

    #[test]
    fn a_certificate_without_a_window_never_expires() {
        let (keys, ca, _) = setup();
        let cert = keys.cert("ca", "user", "forever", &["-n", "alice"]);
        assert_eq!(cert.valid_before(), u64::MAX);
        let info =
            check_user_certificate(&cert, "alice", localhost(), NOW, &trust_file_cas(&[&ca]))
                .unwrap();
        assert_eq!(info.valid_before, None);
        assert_eq!(info.valid_after, SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn the_window_is_enforced_with_dates_in_the_reason() {
        let (keys, ca, _) = setup();
        let trust = trust_file_cas(&[&ca]);
        let cert = keys.cert("ca", "user", "c", &["-n", "alice", "-V", WINDOW]);
        let early = check_user_certificate(&cert, "alice", localhost(), NOW - 30 * 86_400, &trust);
        assert_eq!(
            early,
            Err(CertRefusal::NotYetValid {
                valid_after: "2030-01-01 00:00:00 UTC".into()
            })
        );
        let late = check_user_certificate(&cert, "alice", localhost(), NOW + 30 * 86_400, &trust)
            .unwrap_err();
        assert_eq!(
            late.to_string(),
            "the certificate expired at 2030-02-01 00:00:00 UTC"
        );
    }

    #[test]
    fn the_user_name_must_be_a_principal_for_trusted_ca_keys() {
        let (keys, ca, _) = setup();
        let cert = keys.cert("ca", "user", "c", &["-n", "bob", "-V", WINDOW]);
        let refusal =
            check_user_certificate(&cert, "alice", localhost(), NOW, &trust_file_cas(&[&ca]));
        assert_eq!(
            refusal,
            Err(CertRefusal::PrincipalMissing {
                wanted: vec!["alice".into()],
                carried: vec!["bob".into()]
            })
        );
    }

    #[test]
    fn an_empty_principal_list_is_refused() {
        let (keys, ca, _) = setup();
        let cert = keys.cert("ca", "user", "c", &["-V", WINDOW]);
        let refusal =
            check_user_certificate(&cert, "alice", localhost(), NOW, &trust_file_cas(&[&ca]));
        assert_eq!(refusal, Err(CertRefusal::NoPrincipals));
    }

    #[test]
    fn an_untrusted_ca_is_refused_even_though_the_certificate_carries_it() {
        let (keys, ca, _) = setup();
        let other = keys.key("other", "ed25519");
        let cert = keys.cert("other", "user", "c", &["-n", "alice", "-V", WINDOW]);
        let refusal =
            check_user_certificate(&cert, "alice", localhost(), NOW, &trust_file_cas(&[&ca]));
        assert_eq!(
            refusal,
            Err(CertRefusal::UntrustedCa {
                fingerprint: other.fingerprint(HashAlg::Sha256).to_string()
            })
        );
        // No CA configured at all.
        let refusal = check_user_certificate(&cert, "alice", localhost(), NOW, &Trust::default());
        assert!(matches!(refusal, Err(CertRefusal::UntrustedCa { .. })));
    }

    #[test]
    fn a_host_certificate_is_not_a_user_certificate() {
        let (keys, ca, _) = setup();
        let cert = keys.cert("ca", "user", "c", &["-h", "-n", "alice", "-V", WINDOW]);
        let refusal =
            check_user_certificate(&cert, "alice", localhost(), NOW, &trust_file_cas(&[&ca]));
        assert_eq!(refusal, Err(CertRefusal::NotUserCertificate));
    }

    #[test]
    fn source_address_is_checked_against_the_real_client() {
        let (keys, ca, _) = setup();
        let trust = trust_file_cas(&[&ca]);
        let args = [
            "-n",
            "alice",
            "-V",
            WINDOW,
            "-O",
            "source-address=10.0.0.0/8,::1",
        ];
        let cert = keys.cert("ca", "user", "c", &args);
        let refusal = check_user_certificate(&cert, "alice", localhost(), NOW, &trust).unwrap_err();
        assert_eq!(
            refusal,
            CertRefusal::SourceAddress {
                allowed: "10.0.0.0/8,::1".into(),
                client: "127.0.0.1".into()
            }
        );
        let inside = Some("10.1.2.3".parse().unwrap());
        assert!(check_user_certificate(&cert, "alice", inside, NOW, &trust).is_ok());
        let v6 = Some("::1".parse().unwrap());
        assert!(check_user_certificate(&cert, "alice", v6, NOW, &trust).is_ok());
        let mapped = Some("::ffff:10.9.9.9".parse().unwrap());
        assert!(check_user_certificate(&cert, "alice", mapped, NOW, &trust).is_ok());
        assert!(check_user_certificate(&cert, "alice", None, NOW, &trust).is_err());
    }

    #[test]
    fn force_command_and_unknown_critical_options_are_refused() {
        let (keys, ca, _) = setup();
        let trust = trust_file_cas(&[&ca]);
        let forced = keys.cert(
            "ca",
            "user",
            "f",
            &["-n", "alice", "-V", WINDOW, "-O", "force-command=/bin/date"],
        );
        assert_eq!(
            check_user_certificate(&forced, "alice", localhost(), NOW, &trust),
            Err(CertRefusal::ForceCommand {
                command: "/bin/date".into()
            })
        );
        let unknown = keys.cert(
            "ca",
            "user",
            "u",
            &["-n", "alice", "-V", WINDOW, "-O", "critical:frobnicate=yes"],
        );
        assert_eq!(
            check_user_certificate(&unknown, "alice", localhost(), NOW, &trust),
            Err(CertRefusal::UnknownCriticalOption {
                name: "frobnicate".into()
            })
        );
    }

    #[test]
    fn a_sha1_ssh_rsa_ca_signature_is_refused() {
        let keys = Keys::new();
        let ca = keys.key("rsaca", "rsa");
        keys.key("user", "ed25519");
        let trust = trust_file_cas(&[&ca]);
        let sha1 = keys.cert(
            "rsaca",
            "user",
            "s1",
            &["-t", "ssh-rsa", "-n", "alice", "-V", WINDOW],
        );
        assert_eq!(
            check_user_certificate(&sha1, "alice", localhost(), NOW, &trust),
            Err(CertRefusal::Sha1Signature)
        );
        let sha512 = keys.cert(
            "rsaca",
            "user",
            "s2",
            &["-t", "rsa-sha2-512", "-n", "alice", "-V", WINDOW],
        );
        assert!(check_user_certificate(&sha512, "alice", localhost(), NOW, &trust).is_ok());
    }

    #[test]
    fn revoked_keys_and_revoked_cas_are_refused_and_the_list_is_reread() {
        let (keys, ca, user) = setup();
        let cert = keys.cert("ca", "user", "c", &["-n", "alice", "-V", WINDOW]);
        let revoked = keys.path("revoked");
        std::fs::write(&revoked, "# nothing revoked yet\n").unwrap();
        let mut trust = trust_file_cas(&[&ca]);
        trust.revoked = Some(KeyList::from_file(revoked.clone(), "revoked keys"));
        assert!(check_user_certificate(&cert, "alice", localhost(), NOW, &trust).is_ok());

        std::fs::write(&revoked, user.to_openssh().unwrap() + "\n").unwrap();
        assert_eq!(
            check_user_certificate(&cert, "alice", localhost(), NOW, &trust),
            Err(CertRefusal::KeyRevoked {
                fingerprint: user.fingerprint(HashAlg::Sha256).to_string()
            })
        );

        std::fs::write(
            &revoked,
            format!("\n# the CA\n{}\n", ca.to_openssh().unwrap()),
        )
        .unwrap();
        let refusal = check_user_certificate(&cert, "alice", localhost(), NOW, &trust).unwrap_err();
        assert!(
            matches!(refusal, CertRefusal::CaRevoked { .. }),
            "{refusal}"
        );
        assert!(refusal.to_string().contains("revoked"));
    }

    #[test]
    fn an_unreadable_revoked_list_refuses_every_certificate() {
        let (keys, ca, _) = setup();
        let cert = keys.cert("ca", "user", "c", &["-n", "alice", "-V", WINDOW]);
        let mut trust = trust_file_cas(&[&ca]);
        trust.revoked = Some(KeyList::from_file(keys.path("missing"), "revoked keys"));
        let refusal = check_user_certificate(&cert, "alice", localhost(), NOW, &trust);
        assert!(
            matches!(refusal, Err(CertRefusal::RevokedKeysUnreadable { .. })),
            "{refusal:?}"
        );
        std::fs::write(keys.path("krl"), "SSHKRL\n\0binary").unwrap();
        trust.revoked = Some(KeyList::from_file(keys.path("krl"), "revoked keys"));
        let refusal = check_user_certificate(&cert, "alice", localhost(), NOW, &trust);
        assert!(
            matches!(refusal, Err(CertRefusal::RevokedKeysUnreadable { .. })),
            "{refusal:?}"
        );
    }

    #[test]
    fn trusted_ca_keys_file_is_read_and_reread() {
        let (keys, ca, _) = setup();
        let cert = keys.cert("ca", "user", "c", &["-n", "alice", "-V", WINDOW]);
        let file = keys.path("trusted");
        std::fs::write(&file, "# no CA yet\n").unwrap();
        let trust = Trust {
            user_cas: Some(KeyList::from_file(file.clone(), "trusted user CA keys")),
            ..Trust::default()
        };
        assert!(matches!(
            check_user_certificate(&cert, "alice", localhost(), NOW, &trust),
            Err(CertRefusal::UntrustedCa { .. })
        ));
        std::fs::write(&file, format!("{}\n", ca.to_openssh().unwrap())).unwrap();
        assert!(check_user_certificate(&cert, "alice", localhost(), NOW, &trust).is_ok());
    }

    fn trust_authorized(keys: &Keys, text: &str) -> Trust {
        let path = keys.path("authorized_keys");
        std::fs::write(&path, text).unwrap();
        Trust {
            authorized: Some(Arc::new(AuthorizedKeys::from_file(path))),
            ..Trust::default()
        }
    }

    #[test]
    fn cert_authority_lines_with_principals() {
        let (keys, ca, _) = setup();
        let ca_line = ca.to_openssh().unwrap();
        let trust = trust_authorized(
            &keys,
            &format!("cert-authority,principals=\"admin,ops\" {ca_line}\n"),
        );
        let admin = keys.cert("ca", "user", "a", &["-n", "ops", "-V", WINDOW]);
        assert!(check_user_certificate(&admin, "alice", localhost(), NOW, &trust).is_ok());
        // The principals option replaces the user-name rule.
        let named = keys.cert("ca", "user", "n", &["-n", "alice", "-V", WINDOW]);
        assert_eq!(
            check_user_certificate(&named, "alice", localhost(), NOW, &trust),
            Err(CertRefusal::PrincipalMissing {
                wanted: vec!["admin".into(), "ops".into()],
                carried: vec!["alice".into()]
            })
        );
        // Without principals=, the certificate must name the user.
        let trust = trust_authorized(&keys, &format!("cert-authority {ca_line}\n"));
        assert!(check_user_certificate(&named, "alice", localhost(), NOW, &trust).is_ok());
        assert!(check_user_certificate(&admin, "alice", localhost(), NOW, &trust).is_err());
    }

    #[test]
    fn cert_authority_lines_keep_from_and_expiry_time() {
        let (keys, ca, _) = setup();
        let ca_line = ca.to_openssh().unwrap();
        let cert = keys.cert("ca", "user", "c", &["-n", "alice", "-V", WINDOW]);
        let trust = trust_authorized(&keys, &format!("cert-authority,from=\"10.*\" {ca_line}\n"));
        let refusal = check_user_certificate(&cert, "alice", localhost(), NOW, &trust).unwrap_err();
        assert!(
            matches!(refusal, CertRefusal::CaLineRefused { .. }),
            "{refusal}"
        );
        let trust = trust_authorized(
            &keys,
            &format!("cert-authority,expiry-time=\"20000101\" {ca_line}\n"),
        );
        let refusal = check_user_certificate(&cert, "alice", localhost(), NOW, &trust).unwrap_err();
        assert!(refusal.to_string().contains("expired"), "{refusal}");
    }

    #[test]
    fn a_cert_authority_key_is_not_a_user_key() {
        let (keys, ca, _) = setup();
        let ca_line = ca.to_openssh().unwrap();
        let trust = trust_authorized(&keys, &format!("cert-authority {ca_line}\n"));
        let authorized = trust.authorized.as_ref().unwrap();
        assert_eq!(
            authorized.check(&ca, localhost()).unwrap_err(),
            authorized::Refusal::Unknown
        );
        assert_eq!(
            authorized
                .authorities(ca.key_data(), localhost())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_tampered_signature_is_refused() {
        let (keys, ca, _) = setup();
        let cert = keys.cert("ca", "user", "c", &["-n", "alice", "-V", WINDOW]);
        // The signature is the last field: flipping its last byte keeps the
        // trusted CA as the declared signer but breaks the signature.
        let mut bytes = cert.to_bytes().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let forged = Certificate::from_bytes(&bytes).unwrap();
        let refusal =
            check_user_certificate(&forged, "alice", localhost(), NOW, &trust_file_cas(&[&ca]));
        assert!(
            matches!(refusal, Err(CertRefusal::BadSignature { .. })),
            "{refusal:?}"
        );
    }

    #[test]
    fn cidr_matching() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            cidr_contains("192.168.0.0/16", ip("192.168.4.5")),
            Some(true)
        );
        assert_eq!(
            cidr_contains("192.168.0.0/16", ip("192.169.4.5")),
            Some(false)
        );
        assert_eq!(cidr_contains("0.0.0.0/0", ip("8.8.8.8")), Some(true));
        assert_eq!(cidr_contains("1.2.3.4", ip("1.2.3.4")), Some(true));
        assert_eq!(cidr_contains("1.2.3.4/33", ip("1.2.3.4")), None);
        assert_eq!(cidr_contains("nonsense", ip("1.2.3.4")), None);
        assert_eq!(cidr_contains("fe80::/10", ip("fe80::1")), Some(true));
    }
}
