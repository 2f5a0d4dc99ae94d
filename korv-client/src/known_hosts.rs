//! known_hosts as OpenSSH reads it: host patterns (`*`, `?`, `!`, comma
//! lists, `[host]:port`, hashed `|1|` names), plain entries, and the
//! `@cert-authority` and `@revoked` markers. [`KnownHosts::check`] turns an
//! offered host key or host certificate into a [`HostVerdict`].

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use korv_proto::utc_date;
use russh::keys::HashAlg;
use russh::keys::PublicKeyOrCertificate;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::known_hosts::{HostPatterns, Marker};
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Algorithm, Certificate, Fingerprint, PublicKey};
use sha1::Sha1;

/// One parsed line of known_hosts.
#[derive(Debug, Clone)]
struct HostLine {
    /// 1-based line number in the file.
    number: usize,
    marker: Option<Marker>,
    hosts: HostPatterns,
    key: PublicKey,
}

/// The entries of a known_hosts file.
#[derive(Debug, Clone, Default)]
pub(crate) struct KnownHosts {
    lines: Vec<HostLine>,
    /// Lines that are neither comments nor valid entries.
    skipped: Vec<usize>,
}

/// What known_hosts says about the key a server offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostVerdict {
    /// A plain entry for the host records this key (for a certificate: its key).
    Trusted { line: usize },
    /// A host certificate signed by the CA of an `@cert-authority` line for
    /// the host, valid for the host and for now.
    TrustedByCa { line: usize, ca_fingerprint: String },
    /// The key, or the CA that signed the certificate, is marked `@revoked`.
    Revoked {
        /// `key` or `CA`.
        what: &'static str,
        fingerprint: String,
        line: usize,
    },
    /// An `@cert-authority` line for the host names the certificate's CA,
    /// but the certificate itself fails a check.
    CertificateRefused(HostCertRefusal),
    /// The host has `@cert-authority` lines, none for this certificate's CA,
    /// and no plain entry records its key.
    UntrustedCa { ca_fingerprint: String },
    /// Nothing is recorded for the host (a certificate's key included).
    Unknown,
    /// A different key of the same algorithm is recorded for the host.
    Changed { line: usize, recorded: String },
}

/// Why a host certificate from a trusted CA was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostCertRefusal {
    #[error("it is a user certificate, not a host certificate")]
    NotHostCertificate,
    #[error("its CA signed it with SHA-1 ssh-rsa, which is refused")]
    Sha1Signature,
    #[error("its signature does not verify against the CA")]
    BadSignature,
    #[error("it is not valid before {valid_after}")]
    NotYetValid { valid_after: String },
    #[error("it expired at {valid_before}")]
    Expired { valid_before: String },
    #[error("its principals {principals:?} do not include {host:?}")]
    PrincipalMissing {
        host: String,
        principals: Vec<String>,
    },
    #[error("it has the critical option {name:?}, which host certificates do not take")]
    CriticalOption { name: String },
}

impl KnownHosts {
    /// Parses known_hosts text; lines that are neither comments nor valid
    /// entries are skipped, as OpenSSH does.
    pub(crate) fn parse(text: &str) -> Self {
        let mut known = KnownHosts::default();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            match parse_line(index + 1, trimmed) {
                Some(line) => known.lines.push(line),
                None => known.skipped.push(index + 1),
            }
        }
        known
    }

    /// The 1-based numbers of the lines skipped because they do not parse.
    pub(crate) fn skipped(&self) -> &[usize] {
        &self.skipped
    }

    /// Whether an `@cert-authority` line covers `host` on `port`.
    pub(crate) fn has_authority_for(&self, host: &str, port: u16) -> bool {
        let name = host_port(host, port);
        self.lines.iter().any(|line| {
            line.marker == Some(Marker::CertAuthority) && hosts_match(&line.hosts, &name)
        })
    }

    /// Reads `path`; a missing file is an empty list.
    pub(crate) fn read(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(err),
        }
    }

    /// Judges the key or certificate offered by `host` on `port` at `now`
    /// (seconds since the epoch).
    ///
    /// A certificate that no `@cert-authority` line vouches for is judged by
    /// its key against the plain entries, as OpenSSH does.
    pub(crate) fn check(
        &self,
        host: &str,
        port: u16,
        offered: &PublicKeyOrCertificate,
        now: u64,
    ) -> HostVerdict {
        let name = host_port(host, port);
        let for_host: Vec<&HostLine> = self
            .lines
            .iter()
            .filter(|line| hosts_match(&line.hosts, &name))
            .collect();
        let (key, cert) = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => (key.key_data(), None),
            PublicKeyOrCertificate::Certificate(cert) => (cert.public_key(), Some(cert)),
        };

        let revoked = for_host
            .iter()
            .filter(|line| line.marker == Some(Marker::Revoked));
        for line in revoked {
            if line.key.key_data() == key {
                return HostVerdict::Revoked {
                    what: "key",
                    fingerprint: fingerprint(key),
                    line: line.number,
                };
            }
            if let Some(cert) = cert
                && line.key.key_data() == cert.signature_key()
            {
                return HostVerdict::Revoked {
                    what: "CA",
                    fingerprint: fingerprint(cert.signature_key()),
                    line: line.number,
                };
            }
        }

        let mut refusal = None;
        let mut untrusted_ca = None;
        if let Some(cert) = cert {
            let mut authorities = for_host
                .iter()
                .filter(|line| line.marker == Some(Marker::CertAuthority))
                .peekable();
            let has_authorities = authorities.peek().is_some();
            let ca = cert.signature_key();
            match authorities.find(|line| line.key.key_data() == ca) {
                Some(line) => match check_host_certificate(cert, host, now) {
                    Ok(()) => {
                        return HostVerdict::TrustedByCa {
                            line: line.number,
                            ca_fingerprint: fingerprint(ca),
                        };
                    }
                    Err(err) => refusal = Some(err),
                },
                None if has_authorities => untrusted_ca = Some(fingerprint(ca)),
                None => {}
            }
        }

        let plain: Vec<&&HostLine> = for_host.iter().filter(|l| l.marker.is_none()).collect();
        if let Some(line) = plain.iter().find(|line| line.key.key_data() == key) {
            return HostVerdict::Trusted { line: line.number };
        }
        if let Some(refusal) = refusal {
            return HostVerdict::CertificateRefused(refusal);
        }
        if let Some(ca_fingerprint) = untrusted_ca {
            return HostVerdict::UntrustedCa { ca_fingerprint };
        }
        if let Some(line) = plain
            .iter()
            .find(|line| line.key.algorithm() == key.algorithm())
        {
            return HostVerdict::Changed {
                line: line.number,
                recorded: line.key.fingerprint(HashAlg::Sha256).to_string(),
            };
        }
        HostVerdict::Unknown
    }
}

fn parse_line(number: usize, line: &str) -> Option<HostLine> {
    let (marker, rest) = if line.starts_with('@') {
        let (marker, rest) = line.split_once(char::is_whitespace)?;
        (Some(marker.parse::<Marker>().ok()?), rest.trim_start())
    } else {
        (None, line)
    };
    let (hosts, key) = rest.split_once(char::is_whitespace)?;
    let hosts: HostPatterns = hosts.parse().ok()?;
    let key = PublicKey::from_openssh(key.trim()).ok()?;
    Some(HostLine {
        number,
        marker,
        hosts,
        key,
    })
}

/// `host`, or `[host]:port` when the port is not 22: the name known_hosts
/// records.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// OpenSSH's host matching: a hashed name by HMAC-SHA1, else a pattern list
/// compared without regard to case, where a matching `!` pattern excludes
/// the host whatever else matches.
fn hosts_match(hosts: &HostPatterns, name: &str) -> bool {
    match hosts {
        HostPatterns::HashedName { salt, hash } => Hmac::<Sha1>::new_from_slice(salt)
            .map(|mac| mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok())
            .unwrap_or(false),
        HostPatterns::Patterns(patterns) => {
            let name = name.to_ascii_lowercase();
            let mut matched = false;
            for pattern in patterns {
                let (negated, pattern) = match pattern.strip_prefix('!') {
                    Some(rest) => (true, rest),
                    None => (false, pattern.as_str()),
                };
                if wildcard(pattern.to_ascii_lowercase().as_bytes(), name.as_bytes()) {
                    if negated {
                        return false;
                    }
                    matched = true;
                }
            }
            matched
        }
    }
}

/// `*` matches any run of characters, `?` any one.
fn wildcard(pattern: &[u8], subject: &[u8]) -> bool {
    match (pattern.split_first(), subject.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            wildcard(rest, subject)
                || subject
                    .split_first()
                    .is_some_and(|(_, s)| wildcard(pattern, s))
        }
        (Some((b'?', rest)), Some((_, s))) => wildcard(rest, s),
        (Some((p, rest)), Some((c, s))) if p == c => wildcard(rest, s),
        _ => false,
    }
}

/// The checks on a host certificate whose CA is trusted for the host: type,
/// signature algorithm, window, signature, principals, critical options.
/// Principals may be wildcard patterns, as OpenSSH allows for hosts.
fn check_host_certificate(cert: &Certificate, host: &str, now: u64) -> Result<(), HostCertRefusal> {
    if cert.cert_type() != CertType::Host {
        return Err(HostCertRefusal::NotHostCertificate);
    }
    if cert.signature().algorithm() == (Algorithm::Rsa { hash: None }) {
        return Err(HostCertRefusal::Sha1Signature);
    }
    if now < cert.valid_after() {
        return Err(HostCertRefusal::NotYetValid {
            valid_after: utc_date(cert.valid_after()),
        });
    }
    if now >= cert.valid_before() {
        return Err(HostCertRefusal::Expired {
            valid_before: utc_date(cert.valid_before()),
        });
    }
    let ca: Fingerprint = cert.signature_key().fingerprint(HashAlg::Sha256);
    if cert.validate_at(now, [&ca]).is_err() {
        return Err(HostCertRefusal::BadSignature);
    }
    let host_lower = host.to_ascii_lowercase();
    let named = cert
        .valid_principals()
        .iter()
        .any(|p| wildcard(p.to_ascii_lowercase().as_bytes(), host_lower.as_bytes()));
    if !named {
        return Err(HostCertRefusal::PrincipalMissing {
            host: host.to_owned(),
            principals: cert.valid_principals().to_vec(),
        });
    }
    if let Some((name, _)) = cert.critical_options().iter().next() {
        return Err(HostCertRefusal::CriticalOption { name: name.clone() });
    }
    Ok(())
}

fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use korv_testkit::certs::sign;
    use korv_testkit::keys::{KeyKind, keygen, public_key_path};
    use std::path::PathBuf;
    use std::process::Command;

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

        fn key(&self, name: &str) -> PublicKey {
            let private = keygen(self.dir.path(), name, KeyKind::Ed25519);
            PublicKey::read_openssh_file(public_key_path(&private)).unwrap()
        }

        /// Signs `key.pub` with `ca` into a certificate called `name` (the
        /// key id), beside a copy of `key.pub` as `name.pub`.
        fn cert(&self, ca: &str, key: &str, name: &str, args: &[&str]) -> PublicKeyOrCertificate {
            std::fs::copy(
                self.path(&format!("{key}.pub")),
                self.path(&format!("{name}.pub")),
            )
            .unwrap();
            let path = sign(&self.path(ca), &self.path(name), name, args);
            PublicKeyOrCertificate::Certificate(Certificate::read_file(&path).unwrap())
        }
    }

    fn plain(key: &PublicKey) -> PublicKeyOrCertificate {
        PublicKeyOrCertificate::PublicKey {
            key: key.clone(),
            hash_alg: None,
        }
    }

    fn openssh(key: &PublicKey) -> String {
        key.to_openssh().unwrap()
    }

    #[test]
    fn patterns_follow_openssh() {
        let hosts = |s: &str| s.parse::<HostPatterns>().unwrap();
        assert!(hosts_match(&hosts("example.com"), "example.com"));
        assert!(hosts_match(&hosts("Example.COM"), "example.com"));
        assert!(hosts_match(&hosts("*.example.com"), "a.example.com"));
        assert!(!hosts_match(&hosts("*.example.com"), "example.com"));
        assert!(hosts_match(&hosts("host?"), "host1"));
        assert!(!hosts_match(&hosts("host?"), "host12"));
        assert!(hosts_match(&hosts("a,b,c"), "b"));
        assert!(!hosts_match(
            &hosts("*.example.com,!bad.example.com"),
            "bad.example.com"
        ));
        assert!(hosts_match(
            &hosts("*.example.com,!bad.example.com"),
            "ok.example.com"
        ));
        assert!(hosts_match(&hosts("[localhost]:2222"), "[localhost]:2222"));
        assert!(!hosts_match(&hosts("[localhost]:2222"), "localhost"));
        assert!(hosts_match(
            &hosts("[*.example.com]:*"),
            "[a.example.com]:8022"
        ));
        assert!(!hosts_match(&hosts("localhost"), "[localhost]:8022"));
    }

    #[test]
    fn hashed_names_match_by_hmac() {
        let keys = Keys::new();
        let key = keys.key("host");
        let file = keys.path("known_hosts");
        std::fs::write(&file, format!("[example.org]:8022 {}\n", openssh(&key))).unwrap();
        let status = Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap();
        assert!(status.status.success());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("|1|"), "{text}");
        let known = KnownHosts::parse(&text);
        assert_eq!(
            known.check("example.org", 8022, &plain(&key), NOW),
            HostVerdict::Trusted { line: 1 }
        );
        assert_eq!(
            known.check("example.org", 22, &plain(&key), NOW),
            HostVerdict::Unknown
        );
    }

    #[test]
    fn plain_entries_trust_change_and_unknown() {
        let keys = Keys::new();
        let key = keys.key("host");
        let other = keys.key("other");
        let text = format!(
            "# comment\n\ngarbage line\n*.example.com,!evil.example.com {}\n",
            openssh(&key)
        );
        let known = KnownHosts::parse(&text);
        assert_eq!(known.skipped(), [3]);
        assert_eq!(
            known.check("a.example.com", 22, &plain(&key), NOW),
            HostVerdict::Trusted { line: 4 }
        );
        assert_eq!(
            known.check("a.example.com", 22, &plain(&other), NOW),
            HostVerdict::Changed {
                line: 4,
                recorded: key.fingerprint(HashAlg::Sha256).to_string()
            }
        );
        assert_eq!(
            known.check("evil.example.com", 22, &plain(&key), NOW),
            HostVerdict::Unknown
        );
    }

    fn ca_setup() -> (Keys, PublicKey, PublicKey) {
        let keys = Keys::new();
        let ca = keys.key("ca");
        let host = keys.key("host");
        (keys, ca, host)
    }

    #[test]
    fn a_host_certificate_from_a_trusted_ca_is_trusted() {
        let (keys, ca, _) = ca_setup();
        let known = KnownHosts::parse(&format!("@cert-authority *.example.com {}\n", openssh(&ca)));
        assert!(known.has_authority_for("db.example.com", 22));
        assert!(!known.has_authority_for("example.com", 22));
        let cert = keys.cert(
            "ca",
            "host",
            "c",
            &["-h", "-n", "db.example.com", "-V", WINDOW],
        );
        assert_eq!(
            known.check("db.example.com", 22, &cert, NOW),
            HostVerdict::TrustedByCa {
                line: 1,
                ca_fingerprint: ca.fingerprint(HashAlg::Sha256).to_string()
            }
        );
        // The same line does not cover another domain.
        assert_eq!(
            known.check("db.example.org", 22, &cert, NOW),
            HostVerdict::Unknown
        );
    }

    #[test]
    fn host_certificate_refusals() {
        let (keys, ca, _) = ca_setup();
        let known = KnownHosts::parse(&format!("@cert-authority * {}\n", openssh(&ca)));
        let refused = |cert: &PublicKeyOrCertificate, host: &str, now: u64| match known
            .check(host, 22, cert, now)
        {
            HostVerdict::CertificateRefused(refusal) => refusal,
            other => panic!("not refused: {other:?}"),
        };
        let good = keys.cert("ca", "host", "good", &["-h", "-n", "db", "-V", WINDOW]);
        assert_eq!(
            refused(&good, "db", NOW + 30 * 86_400).to_string(),
            "it expired at 2030-02-01 00:00:00 UTC"
        );
        assert!(matches!(
            refused(&good, "db", NOW - 30 * 86_400),
            HostCertRefusal::NotYetValid { .. }
        ));
        assert_eq!(
            refused(&good, "web", NOW),
            HostCertRefusal::PrincipalMissing {
                host: "web".into(),
                principals: vec!["db".into()]
            }
        );
        let user = keys.cert("ca", "host", "user", &["-n", "db", "-V", WINDOW]);
        assert_eq!(
            refused(&user, "db", NOW),
            HostCertRefusal::NotHostCertificate
        );
        let empty = keys.cert("ca", "host", "empty", &["-h", "-V", WINDOW]);
        assert!(matches!(
            refused(&empty, "db", NOW),
            HostCertRefusal::PrincipalMissing { .. }
        ));
        let wild = keys.cert(
            "ca",
            "host",
            "wild",
            &["-h", "-n", "*.example.com", "-V", WINDOW],
        );
        assert!(matches!(
            known.check("db.example.com", 22, &wild, NOW),
            HostVerdict::TrustedByCa { .. }
        ));
    }

    #[test]
    fn a_certificate_from_another_ca_is_untrusted_or_falls_back_to_its_key() {
        let (keys, ca, host) = ca_setup();
        let rogue = keys.key("rogue");
        let cert = keys.cert("rogue", "host", "c", &["-h", "-n", "db", "-V", WINDOW]);
        let rogue_fp = rogue.fingerprint(HashAlg::Sha256).to_string();
        let known = KnownHosts::parse(&format!("@cert-authority db {}\n", openssh(&ca)));
        assert_eq!(
            known.check("db", 22, &cert, NOW),
            HostVerdict::UntrustedCa {
                ca_fingerprint: rogue_fp
            }
        );
        // A plain entry for the certificate's key still trusts it.
        let known = KnownHosts::parse(&format!(
            "@cert-authority db {}\ndb {}\n",
            openssh(&ca),
            openssh(&host)
        ));
        assert_eq!(
            known.check("db", 22, &cert, NOW),
            HostVerdict::Trusted { line: 2 }
        );
        // No CA line at all: an unknown host.
        assert_eq!(
            KnownHosts::default().check("db", 22, &cert, NOW),
            HostVerdict::Unknown
        );
    }

    #[test]
    fn revoked_keys_and_cas_are_refused_even_when_trusted() {
        let (keys, ca, host) = ca_setup();
        let cert = keys.cert("ca", "host", "c", &["-h", "-n", "db", "-V", WINDOW]);
        let trusting = format!(
            "@cert-authority db {}\ndb {}\n",
            openssh(&ca),
            openssh(&host)
        );
        let known = KnownHosts::parse(&format!("{trusting}@revoked * {}\n", openssh(&host)));
        let expected = HostVerdict::Revoked {
            what: "key",
            fingerprint: host.fingerprint(HashAlg::Sha256).to_string(),
            line: 3,
        };
        assert_eq!(known.check("db", 22, &cert, NOW), expected);
        assert_eq!(known.check("db", 22, &plain(&host), NOW), expected);
        let known = KnownHosts::parse(&format!("{trusting}@revoked db {}\n", openssh(&ca)));
        assert!(matches!(
            known.check("db", 22, &cert, NOW),
            HostVerdict::Revoked {
                what: "CA",
                line: 3,
                ..
            }
        ));
        // The plain key alone is not signed by the revoked CA.
        assert_eq!(
            known.check("db", 22, &plain(&host), NOW),
            HostVerdict::Trusted { line: 2 }
        );
    }

    #[test]
    fn reading_a_missing_file_is_empty() {
        let keys = Keys::new();
        let known = KnownHosts::read(&keys.path("none")).unwrap();
        assert!(known.lines.is_empty());
    }
}
