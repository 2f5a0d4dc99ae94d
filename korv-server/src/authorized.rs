//! OpenSSH authorized_keys: parsing, the `from=`, `expiry-time=`,
//! `cert-authority` and `principals=` options, and re-reading the file when
//! it changes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use russh::keys::ssh_key::authorized_keys::Entry;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{HashAlg, PublicKey};
use tracing::warn;

use crate::reload::ReloadingFile;

/// One authorized key with the options Korv enforces.
#[derive(Debug, Clone)]
pub(crate) struct AuthorizedKey {
    key: PublicKey,
    comment: String,
    /// `from="..."`: patterns the client address must match.
    from: Option<Vec<String>>,
    /// `expiry-time="..."`: seconds since the epoch after which the key is refused.
    expires: Option<i64>,
    /// `cert-authority`: the key signs user certificates and is never
    /// accepted as a user key itself.
    cert_authority: bool,
    /// `principals="..."` on a `cert-authority` line: a certificate must
    /// carry one of these; without it, the certificate must name the user.
    principals: Option<Vec<String>>,
}

/// Why a key was refused, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    Unknown,
    Expired,
    FromMismatch,
}

/// The authorized keys, from memory or from a file re-read on change.
#[derive(Debug)]
pub(crate) enum AuthorizedKeys {
    Memory(Arc<Vec<AuthorizedKey>>),
    File(ReloadingFile<Vec<AuthorizedKey>>),
}

impl AuthorizedKeys {
    pub(crate) fn from_keys(keys: Vec<(PublicKey, String)>) -> Self {
        let keys = keys
            .into_iter()
            .map(|(key, comment)| AuthorizedKey::plain(key, comment))
            .collect();
        AuthorizedKeys::Memory(Arc::new(keys))
    }

    pub(crate) fn from_file(path: PathBuf) -> Self {
        AuthorizedKeys::File(ReloadingFile::new(path, "authorized_keys", parse))
    }

    /// Runs `f` on the current entries; none when the file cannot be read.
    fn with_entries<R>(&self, f: impl FnOnce(&[AuthorizedKey]) -> R) -> R {
        match self {
            AuthorizedKeys::Memory(keys) => f(keys),
            AuthorizedKeys::File(file) => match file.current().as_ref() {
                Ok(keys) => f(keys),
                Err(_) => f(&[]),
            },
        }
    }

    /// Finds `key` among the plain (not `cert-authority`) entries and checks
    /// its options for a client at `peer`.
    pub(crate) fn check(
        &self,
        key: &PublicKey,
        peer: Option<IpAddr>,
    ) -> Result<AuthorizedKey, Refusal> {
        let mut found =
            self.with_entries(|entries| matching(entries, key.key_data(), false, peer))?;
        Ok(found.swap_remove(0))
    }

    /// Whether any entry is a `cert-authority` line.
    pub(crate) fn has_authorities(&self) -> bool {
        self.with_entries(|entries| entries.iter().any(|e| e.cert_authority))
    }

    /// The `cert-authority` entries for the CA key `ca` whose options allow
    /// a client at `peer`.
    pub(crate) fn authorities(
        &self,
        ca: &KeyData,
        peer: Option<IpAddr>,
    ) -> Result<Vec<AuthorizedKey>, Refusal> {
        self.with_entries(|entries| matching(entries, ca, true, peer))
    }
}

/// The entries for `key` of the given kind that allow `peer`, at least one;
/// else the most telling refusal.
fn matching(
    entries: &[AuthorizedKey],
    key: &KeyData,
    cert_authority: bool,
    peer: Option<IpAddr>,
) -> Result<Vec<AuthorizedKey>, Refusal> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(i64::MAX);
    let mut refusal = Refusal::Unknown;
    let mut found = Vec::new();
    for entry in entries
        .iter()
        .filter(|e| e.cert_authority == cert_authority && e.key.key_data() == key)
    {
        if entry.expires.is_some_and(|expires| now >= expires) {
            refusal = Refusal::Expired;
            continue;
        }
        if let Some(patterns) = &entry.from {
            let matched = peer.is_some_and(|ip| match_pattern_list(patterns, &ip.to_string()));
            if !matched {
                refusal = Refusal::FromMismatch;
                continue;
            }
        }
        found.push(entry.clone());
    }
    if found.is_empty() {
        Err(refusal)
    } else {
        Ok(found)
    }
}

impl AuthorizedKey {
    fn plain(key: PublicKey, comment: String) -> Self {
        AuthorizedKey {
            key,
            comment,
            from: None,
            expires: None,
            cert_authority: false,
            principals: None,
        }
    }

    pub(crate) fn comment(&self) -> &str {
        &self.comment
    }

    pub(crate) fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The `principals="..."` list of a `cert-authority` entry.
    pub(crate) fn principals(&self) -> Option<&[String]> {
        self.principals.as_deref()
    }
}

/// Parses authorized_keys text; malformed lines are skipped with a warning
/// naming the file and line.
pub(crate) fn parse(text: &str, path: &Path) -> Vec<AuthorizedKey> {
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let number = index + 1;
        let entry: Entry = match line.parse() {
            Ok(entry) => entry,
            Err(err) => {
                warn!(file = %path.display(), line = number, %err, "skipping a malformed authorized_keys line");
                continue;
            }
        };
        let mut key = AuthorizedKey::plain(
            entry.public_key().clone(),
            entry.public_key().comment().to_string(),
        );
        let mut bad = None;
        for option in entry.config_opts().iter() {
            let (name, value) = option.split_once('=').unwrap_or((option, ""));
            let value = value.trim_matches('"');
            match name.to_ascii_lowercase().as_str() {
                "from" => key.from = Some(value.split(',').map(str::to_owned).collect()),
                "cert-authority" => key.cert_authority = true,
                "principals" => {
                    key.principals = Some(
                        value
                            .split(',')
                            .filter(|p| !p.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    )
                }
                "expiry-time" => match parse_expiry(value) {
                    Some(at) => key.expires = Some(at),
                    None => bad = Some(format!("bad expiry-time {value:?}")),
                },
                "restrict"
                | "no-port-forwarding"
                | "no-pty"
                | "no-x11-forwarding"
                | "no-agent-forwarding"
                | "no-user-rc"
                | "no-touch-required" => {}
                other => {
                    tracing::info!(file = %path.display(), line = number, option = other, "authorized_keys option ignored by Korv");
                }
            }
        }
        if key.principals.is_some() && !key.cert_authority {
            tracing::info!(file = %path.display(), line = number, "principals= ignored on a line without cert-authority");
        }
        if let Some(reason) = bad {
            warn!(file = %path.display(), line = number, %reason, "skipping an authorized_keys line");
            continue;
        }
        keys.push(key);
    }
    keys
}

/// `YYYYMMDD[HHMM[SS]]`, in local time as OpenSSH reads it (here: UTC).
fn parse_expiry(text: &str) -> Option<i64> {
    if !matches!(text.len(), 8 | 12 | 14) || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| text.get(range).and_then(|s| s.parse::<i64>().ok());
    let (year, month, day) = (field(0..4)?, field(4..6)?, field(6..8)?);
    let hour = if text.len() >= 12 { field(8..10)? } else { 0 };
    let minute = if text.len() >= 12 { field(10..12)? } else { 0 };
    let second = if text.len() == 14 { field(12..14)? } else { 0 };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// OpenSSH's pattern-list: comma-separated `*`/`?` wildcards, `!` negates;
/// a negated match refuses outright.
pub(crate) fn match_pattern_list(patterns: &[String], subject: &str) -> bool {
    let mut matched = false;
    for pattern in patterns {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern.as_str()),
        };
        if wildcard(pattern.as_bytes(), subject.as_bytes()) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_times_parse_as_utc() {
        assert_eq!(parse_expiry("19700101"), Some(0));
        assert_eq!(parse_expiry("20000301"), Some(951_868_800));
        assert_eq!(parse_expiry("200003010001"), Some(951_868_860));
        assert_eq!(parse_expiry("2000030100"), None);
        assert_eq!(parse_expiry("20001301"), None);
    }

    #[test]
    fn pattern_lists_match_like_openssh() {
        let list = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
        assert!(match_pattern_list(&list("127.0.0.1"), "127.0.0.1"));
        assert!(match_pattern_list(&list("10.*,127.0.0.?"), "127.0.0.1"));
        assert!(!match_pattern_list(&list("10.0.0.*"), "127.0.0.1"));
        assert!(!match_pattern_list(&list("*,!127.0.0.1"), "127.0.0.1"));
    }

    #[test]
    fn malformed_lines_are_skipped_and_the_rest_kept() {
        let text = "# comment\n\nnot a key\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q alice@x\nexpiry-time=\"bogus\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q b\n";
        let keys = parse(text, Path::new("ak"));
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].comment(), "alice@x");
    }
}
