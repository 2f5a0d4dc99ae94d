//! Host and client keys for `korv serve` and `korv demo`: make an ed25519
//! key, write it as OpenSSH does, and the default host key of `korv serve`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey};

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
