//! User certificates on the client side: where a key's certificate is found,
//! what is wrong with one before it is offered, and signing a certificate
//! authentication with a key held in memory.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use russh::keys::agent::AgentIdentity;
use russh::keys::signature::Signer as _;
use russh::keys::ssh_encoding::Encode;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::private::KeypairData;
use russh::keys::ssh_key::{Signature, public::KeyData};
use russh::keys::{Certificate, HashAlg, PrivateKey};

use korv_proto::utc_date;

/// `<identity>-cert.pub`: where `ssh-keygen -s` writes a key's certificate
/// and where `ssh` looks for it.
pub(crate) fn beside(identity: &Path) -> PathBuf {
    let mut name = identity.as_os_str().to_owned();
    name.push("-cert.pub");
    PathBuf::from(name)
}

/// Reads an OpenSSH certificate file (`…-cert.pub`).
pub(crate) fn read(path: &Path) -> Result<Certificate, String> {
    let text = std::fs::read_to_string(path).map_err(|err| err.to_string())?;
    Certificate::from_openssh(text.trim())
        .map_err(|err| format!("not an OpenSSH certificate: {err}"))
}

/// Whether `cert` certifies `key`.
pub(crate) fn certifies(cert: &Certificate, key: &KeyData) -> bool {
    cert.public_key() == key
}

/// Why the certificate cannot authenticate at `now`, when that is known on
/// this side: a host certificate, or outside its validity window.
pub(crate) fn unusable(cert: &Certificate, now: SystemTime) -> Option<String> {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if cert.cert_type() != CertType::User {
        return Some("it is a host certificate, not a user certificate".into());
    }
    if now < cert.valid_after() {
        return Some(format!(
            "it is not valid before {}",
            utc_date(cert.valid_after())
        ));
    }
    if now >= cert.valid_before() {
        return Some(format!("it expired at {}", utc_date(cert.valid_before())));
    }
    None
}

/// A short description for error messages: key id and principals.
pub(crate) fn describe(cert: &Certificate) -> String {
    format!(
        "certificate {:?} for principals [{}], CA {}",
        cert.key_id(),
        cert.valid_principals().join(", "),
        cert.signature_key().fingerprint(HashAlg::Sha256)
    )
}

/// Signs a certificate authentication with a private key held in memory,
/// through the same path russh uses for ssh-agent keys, so that RSA keys
/// sign with the negotiated SHA-2 hash.
pub(crate) struct LocalSigner {
    key: Arc<PrivateKey>,
}

impl LocalSigner {
    pub(crate) fn new(key: Arc<PrivateKey>) -> Self {
        LocalSigner { key }
    }
}

impl russh::Signer for LocalSigner {
    type Error = russh::AgentAuthError;

    fn auth_sign(
        &mut self,
        _identity: &AgentIdentity,
        hash_alg: Option<HashAlg>,
        mut to_sign: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, Self::Error>> + Send {
        let signed = sign(&self.key, hash_alg, &to_sign).and_then(|blob| {
            blob.encode(&mut to_sign)?;
            Ok(to_sign)
        });
        async move { signed.map_err(|err| russh::AgentAuthError::Key(err.into())) }
    }
}

/// The signature blob of `data`: RSA with SHA-256 or SHA-512 (never SHA-1),
/// other keys with their only algorithm.
fn sign(
    key: &PrivateKey,
    hash_alg: Option<HashAlg>,
    data: &[u8],
) -> Result<Vec<u8>, russh::keys::ssh_key::Error> {
    let signature: Signature = match key.key_data() {
        KeypairData::Rsa(rsa) => (rsa, Some(hash_alg.unwrap_or(HashAlg::Sha512))).try_sign(data)?,
        keypair => keypair.try_sign(data)?,
    };
    Ok(signature.encode_vec()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use korv_testkit::certs::sign as ca_sign;
    use korv_testkit::keys::{KeyKind, keygen};
    use std::time::Duration;

    #[test]
    fn the_certificate_sits_beside_the_key() {
        assert_eq!(
            beside(Path::new("/home/a/.ssh/id_ed25519")),
            Path::new("/home/a/.ssh/id_ed25519-cert.pub")
        );
    }

    #[test]
    fn an_expired_or_host_certificate_is_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let key = keygen(dir.path(), "id", KeyKind::Ed25519);
        let ca = keygen(dir.path(), "ca", KeyKind::Ed25519);
        let path = ca_sign(&ca, &key, "me", &["-n", "alice", "-V", "20300101:20300201"]);
        assert_eq!(path, beside(&key));
        let cert = read(&path).unwrap();
        let private = PrivateKey::read_openssh_file(&key).unwrap();
        assert!(certifies(&cert, private.public_key().key_data()));
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(unusable(&cert, at(1_894_665_600)), None);
        assert_eq!(
            unusable(&cert, at(1_900_000_000)).as_deref(),
            Some("it expired at 2030-02-01 00:00:00 UTC")
        );
        assert!(describe(&cert).contains("\"me\" for principals [alice]"));
        let host = read(&ca_sign(&ca, &key, "host", &["-h", "-n", "alice"])).unwrap();
        assert!(
            unusable(&host, SystemTime::now())
                .unwrap()
                .contains("host certificate")
        );
    }

    #[test]
    fn local_signatures_verify() {
        use russh::keys::signature::Verifier as _;
        let dir = tempfile::tempdir().unwrap();
        let path = keygen(dir.path(), "id", KeyKind::Ed25519);
        let key = PrivateKey::read_openssh_file(&path).unwrap();
        let blob = sign(&key, None, b"data").unwrap();
        let signature = Signature::try_from(&blob[..]).unwrap();
        assert!(
            key.public_key()
                .key_data()
                .verify(b"data", &signature)
                .is_ok()
        );
    }
}
