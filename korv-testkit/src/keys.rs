//! SSH keys made by OpenSSH's `ssh-keygen`, in the files that servers and
//! clients under test read: `NAME` (the private key) and `NAME.pub`.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The kind of key pair to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Ed25519.
    Ed25519,
    /// ECDSA on NIST P-256.
    Ecdsa256,
    /// RSA with this many bits.
    Rsa(u32),
}

impl KeyKind {
    /// The `ssh-keygen` arguments that choose this kind.
    fn args(self) -> Vec<String> {
        match self {
            KeyKind::Ed25519 => vec!["-t".into(), "ed25519".into()],
            KeyKind::Ecdsa256 => vec!["-t".into(), "ecdsa".into(), "-b".into(), "256".into()],
            KeyKind::Rsa(bits) => vec!["-t".into(), "rsa".into(), "-b".into(), bits.to_string()],
        }
    }
}

/// Makes an unencrypted key pair `dir/name` and `dir/name.pub`, with `name`
/// as its comment, and returns the private key's path.
///
/// # Panics
/// `ssh-keygen` cannot run or fails.
pub fn keygen(dir: &Path, name: &str, kind: KeyKind) -> PathBuf {
    try_keygen(dir, name, kind, "").unwrap_or_else(|err| panic!("{err}"))
}

/// Like [`keygen`], with the private key encrypted under `passphrase`.
///
/// # Panics
/// `ssh-keygen` cannot run or fails.
pub fn keygen_with_passphrase(dir: &Path, name: &str, kind: KeyKind, passphrase: &str) -> PathBuf {
    try_keygen(dir, name, kind, passphrase).unwrap_or_else(|err| panic!("{err}"))
}

/// Makes a key pair `dir/name` and `dir/name.pub`, with `name` as its
/// comment, encrypted under `passphrase` unless it is empty; returns the
/// private key's path.
///
/// # Errors
/// `ssh-keygen` cannot run (OpenSSH's client is not installed) or fails, for
/// example because `dir/name` exists already.
pub fn try_keygen(dir: &Path, name: &str, kind: KeyKind, passphrase: &str) -> io::Result<PathBuf> {
    let path = dir.join(name);
    let output = Command::new("ssh-keygen")
        .args(kind.args())
        .args(["-q", "-N", passphrase, "-C", name, "-f"])
        .arg(&path)
        // Without a terminal, a question (such as "Overwrite?") fails at once.
        .stdin(Stdio::null())
        .output()
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot run ssh-keygen (install openssh-client): {err}"),
            )
        })?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "ssh-keygen failed ({}) for {}: {}{}",
            output.status,
            path.display(),
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim(),
        )));
    }
    Ok(path)
}

/// The path of the public key beside the private key `private`: the same
/// name with `.pub` appended, as `ssh-keygen` writes it.
pub fn public_key_path(private: &Path) -> PathBuf {
    let mut name = OsString::from(private.as_os_str());
    name.push(".pub");
    PathBuf::from(name)
}

/// The public key line (`TYPE BASE64 COMMENT`) of the private key `private`,
/// without its line break.
///
/// # Panics
/// The `.pub` file cannot be read.
pub fn public_key(private: &Path) -> String {
    try_public_key(private).unwrap_or_else(|err| panic!("{err}"))
}

/// The public key line of the private key `private`, without its line break.
///
/// # Errors
/// The `.pub` file cannot be read.
pub fn try_public_key(private: &Path) -> io::Result<String> {
    let path = public_key_path(private);
    std::fs::read_to_string(&path)
        .map(|text| text.trim().to_owned())
        .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", path.display())))
}

/// A `known_hosts` line that vouches for `host_public` (a public key line) on
/// 127.0.0.1 port `port`, with its line break.
pub fn known_hosts_line(port: u16, host_public: &str) -> String {
    format!("[127.0.0.1]:{port} {}\n", host_public.trim())
}
