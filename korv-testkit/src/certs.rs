//! OpenSSH certificates made by `ssh-keygen -s`, as a CA would sign them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::keys::public_key_path;

/// Signs the public key of the private key `key` with the CA's private key
/// `ca`, under the key id `id`, passing `args` to `ssh-keygen` (such as
/// `["-n", "alice,admin", "-V", "+1h"]`, or `-h` for a host certificate).
/// Absolute `-V` dates are read as UTC. Returns the certificate's path,
/// `key-cert.pub`, where `ssh` and the Korv client look for it.
///
/// # Panics
/// `ssh-keygen` cannot run or fails.
pub fn sign(ca: &Path, key: &Path, id: &str, args: &[&str]) -> PathBuf {
    let output = Command::new("ssh-keygen")
        .env("TZ", "UTC")
        .arg("-q")
        .arg("-s")
        .arg(ca)
        .args(["-I", id])
        .args(args)
        .arg(public_key_path(key))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run ssh-keygen: {err}"));
    assert!(
        output.status.success(),
        "ssh-keygen -s failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    certificate_path(key)
}

/// `key-cert.pub`: where `ssh-keygen -s` writes the certificate of `key`.
pub fn certificate_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push("-cert.pub");
    PathBuf::from(name)
}
