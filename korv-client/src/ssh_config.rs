//! OpenSSH's client configuration (ssh_config(5)): reading the files and
//! resolving the settings of one host, each with the file and line it came
//! from; and the `[user@]host[:port]` lists of `ProxyJump` and `-J`.
//!
//! # Rules
//!
//! - The first obtained value of a keyword wins; `IdentityFile` and
//!   `CertificateFile` accumulate every value, in order, without duplicates.
//!   Values given on the command line are seeded first, so they win.
//! - `Host` applies its block when the name given (lower-cased) matches one of
//!   its patterns (`*`, `?`) and none of its `!` patterns.
//! - `Match` criteria: `all`, `host`, `originalhost`, `user`, `localuser`,
//!   `exec`, `tagged`, `canonical` and `final` (both true in a second, final
//!   pass, which runs when one of them is used and then matches `Host` against
//!   the resolved host name, as ssh does), each negatable with `!`.
//!   `localnetwork`, `version`, `sessiontype` and `command` never match.
//! - `Include` takes several paths with glob wildcards, read in lexical
//!   order; relative paths are taken from `~/.ssh` (the system file's from
//!   `/etc/ssh`); an include inside an inactive block is checked but applies
//!   nothing; 16 levels at most.
//! - Arguments: `Keyword value` or `Keyword=value`, double or single quotes,
//!   `\` before a quote, a backslash or a space, and `#` starting a comment.
//! - Paths: `~`, `${VAR}` and the tokens `%% %d %h %n %p %r %u %l %L %i %j %k`;
//!   `HostName` takes `%h` and `%%`. An unknown token is an error.
//! - Keywords other than the honoured ones (below) are ignored, as ssh ignores
//!   what a connection does not use. A malformed line of any honoured keyword,
//!   `Host`, `Match` or `Include` is an error naming the file and line, even in
//!   a block that does not apply.
//!
//! Honoured: `HostName`, `Port`, `User`, `IdentityFile`, `CertificateFile`,
//! `IdentitiesOnly`, `IdentityAgent`, `UserKnownHostsFile`,
//! `GlobalKnownHostsFile`, `StrictHostKeyChecking`, `HashKnownHosts`,
//! `ProxyJump`, `ProxyCommand` (whichever comes first), `ConnectTimeout`,
//! `ServerAliveInterval`, `ServerAliveCountMax` (and `Tag`, for
//! `Match tagged`).
//!
//! # Where it differs from OpenSSH
//!
//! - Keywords it does not honour are ignored, where ssh rejects one it does
//!   not know; a typo in a keyword therefore passes silently.
//! - `Host` and `Match host` patterns ignore case (ssh lower-cases the name
//!   but not the patterns).
//! - No `~user` in paths and no `%C` token: both are errors naming the line.
//! - `Match localnetwork`, `version`, `sessiontype` and `command` never
//!   match; `canonical` matches in the final pass only, since host names are
//!   not canonicalized.
//! - `StrictHostKeyChecking no` records unknown keys but, unlike ssh, still
//!   refuses a changed one; `ask` is `yes`, as there is no prompt.
//!
//! # Why not a crate
//!
//! Three were tried against the rules above. `ssh2-config` 0.9 does not know
//! `Match` (a strict parse fails on it; a lenient one applies the lines under
//! it to the `Host` block before), expands no `%` tokens, keeps no file and
//! line per value, and drops `IdentityAgent`, `IdentitiesOnly`,
//! `StrictHostKeyChecking`, `UserKnownHostsFile`, `GlobalKnownHostsFile`,
//! `HashKnownHosts` and `ServerAliveCountMax` as unsupported. `russh-config`
//! 0.58 reads `Host` blocks only (no `Match`, no `Include`). `ssh_config` 0.1
//! has neither and is unmaintained.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Include nesting deeper than this is an error (ssh's limit too).
const MAX_INCLUDE_DEPTH: usize = 16;

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of a configuration file.
    File {
        /// The file.
        path: PathBuf,
        /// Its 1-based line.
        line: usize,
    },
    /// The command line or the library caller.
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::CommandLine => f.write_str("command line"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    /// The value.
    pub value: T,
    /// Its origin.
    pub origin: Origin,
}

/// A malformed configuration, or one that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    /// The file and line at fault (for a file that cannot be read, line 0).
    pub origin: Origin,
    /// What is wrong.
    pub message: String,
}

/// `StrictHostKeyChecking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictHostKeyChecking {
    /// `yes`: only keys already in known_hosts.
    Yes,
    /// `ask` (ssh's default, which prompts): without a prompt, as `yes`.
    Ask,
    /// `accept-new`: record unknown keys, refuse changed ones.
    AcceptNew,
    /// `no` / `off`: record unknown keys.
    No,
}

/// One hop of `ProxyJump` or `-J`: `[user@]host[:port]` or
/// `ssh://[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    /// The user, when named.
    pub user: Option<String>,
    /// The host (an alias, resolved through the configuration in its turn).
    pub host: String,
    /// The port, when named.
    pub port: Option<u16>,
}

impl JumpHost {
    /// Parses a comma-separated list; `none` is the empty list.
    ///
    /// # Errors
    /// A message saying which hop is malformed.
    pub fn parse_list(spec: &str) -> Result<Vec<JumpHost>, String> {
        if spec.eq_ignore_ascii_case("none") {
            return Ok(Vec::new());
        }
        spec.split(',').map(JumpHost::parse).collect()
    }

    /// Parses one hop.
    ///
    /// # Errors
    /// A message naming the malformed part.
    pub fn parse(spec: &str) -> Result<JumpHost, String> {
        let bad = |why: &str| format!("jump host {spec:?}: {why}");
        let rest = spec.strip_prefix("ssh://").unwrap_or(spec);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (user, rest) = match rest.rsplit_once('@') {
            Some(("", _)) => return Err(bad("empty user")),
            Some((user, rest)) => (Some(user.to_owned()), rest),
            None => (None, rest),
        };
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(bad("text after ']'")),
                },
            }
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
            return Err(bad("invalid host"));
        }
        let port = match port {
            Some(port) => Some(parse_port(port).ok_or_else(|| bad("invalid port"))?),
            None => None,
        };
        Ok(JumpHost {
            user,
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for JumpHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|port| *port != 0)
}

/// Which configuration files to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Files {
    /// None (`-F none`).
    None,
    /// `~/.ssh/config`, then `/etc/ssh/ssh_config` (as ssh does without `-F`).
    Default,
    /// This file only (`-F FILE`).
    Path(PathBuf),
}

impl Files {
    /// The settings for `host` (the name given), with `user` and `port` from
    /// the command line seeded first so that they win; `default_port` stands
    /// for `%p` when no port is set. Reads the files each time, with this
    /// process's home directory, user name and environment.
    ///
    /// # Errors
    /// A file named by [`Files::Path`] that cannot be read, a user file that
    /// others may write, or a malformed line, each naming the file and line.
    pub fn resolve(
        &self,
        host: &str,
        user: Option<&str>,
        port: Option<u16>,
        default_port: u16,
    ) -> Result<HostSettings, ConfigError> {
        resolve(
            self,
            host,
            &Given { user, port },
            default_port,
            &Context::from_environment(),
        )
    }
}

/// What the resolver needs of the local machine: home directory, user and
/// host names, environment. Tests build their own.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) home: PathBuf,
    pub(crate) local_user: String,
    pub(crate) local_host: String,
    pub(crate) system_dir: PathBuf,
    pub(crate) env: HashMap<String, String>,
}

impl Context {
    /// The running process's.
    pub(crate) fn from_environment() -> Context {
        let env: HashMap<String, String> = std::env::vars().collect();
        let local_user = env
            .get("USER")
            .or_else(|| env.get("USERNAME"))
            .or_else(|| env.get("LOGNAME"))
            .cloned()
            .filter(|user| !user.is_empty())
            .or_else(|| passwd_entry(&uid()).map(|(name, _)| name))
            .unwrap_or_else(|| "korv".into());
        let local_host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|name| name.trim().to_owned())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "localhost".into());
        Context {
            // As ssh: the password database's home when HOME is not set.
            home: env
                .get("HOME")
                .filter(|home| !home.is_empty())
                .map(PathBuf::from)
                .or_else(|| passwd_entry(&uid()).map(|(_, home)| home))
                .unwrap_or_else(|| PathBuf::from("/")),
            local_user,
            local_host,
            system_dir: PathBuf::from("/etc/ssh"),
            env,
        }
    }
}

/// This process's user id (`%i`), from the owner of `/proc/self`; empty
/// where there is none.
fn uid() -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata("/proc/self") {
            return meta.uid().to_string();
        }
    }
    String::new()
}

/// The name and home directory `/etc/passwd` gives the user id `uid`.
fn passwd_entry(uid: &str) -> Option<(String, PathBuf)> {
    if uid.is_empty() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, id, _, _, home, ..] if *id == uid => {
                Some(((*name).to_owned(), PathBuf::from(home)))
            }
            _ => None,
        }
    })
}

/// The settings that apply to one host. Every field is `None` (or empty)
/// when neither the command line nor any file set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSettings {
    /// The name given (the alias), as given; matched against `Host`
    /// patterns lower-cased.
    pub alias: String,
    /// `HostName`, `%h` expanded.
    pub host_name: Option<Setting<String>>,
    /// `Port`.
    pub port: Option<Setting<u16>>,
    /// `User`.
    pub user: Option<Setting<String>>,
    /// `IdentityFile`, every one, expanded.
    pub identity_files: Vec<Setting<PathBuf>>,
    /// `CertificateFile`, every one, expanded.
    pub certificate_files: Vec<Setting<PathBuf>>,
    /// `IdentitiesOnly`.
    pub identities_only: Option<Setting<bool>>,
    /// `IdentityAgent`: `None` inside for `none` (or an unset variable).
    pub identity_agent: Option<Setting<Option<PathBuf>>>,
    /// `UserKnownHostsFile` (empty for `none`).
    pub user_known_hosts: Option<Setting<Vec<PathBuf>>>,
    /// `GlobalKnownHostsFile` (empty for `none`).
    pub global_known_hosts: Option<Setting<Vec<PathBuf>>>,
    /// `StrictHostKeyChecking`.
    pub strict_host_key_checking: Option<Setting<StrictHostKeyChecking>>,
    /// `HashKnownHosts`.
    pub hash_known_hosts: Option<Setting<bool>>,
    /// `ProxyJump` (empty for `none`).
    pub proxy_jump: Option<Setting<Vec<JumpHost>>>,
    /// `ProxyCommand`, its tokens expanded (`None` inside for `none`): the
    /// command whose standard input and output carry the connection.
    pub proxy_command: Option<Setting<Option<String>>>,
    /// `ConnectTimeout`.
    pub connect_timeout: Option<Setting<Duration>>,
    /// `ServerAliveInterval`.
    pub server_alive_interval: Option<Setting<Duration>>,
    /// `ServerAliveCountMax`.
    pub server_alive_count_max: Option<Setting<u32>>,
}

impl HostSettings {
    /// One `origin: Keyword value` line per setting taken from a file, in
    /// keyword order (what `korv -v` prints).
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut push = |keyword: &str, value: String, origin: &Origin| {
            if let Origin::File { .. } = origin {
                lines.push(format!("{origin}: {keyword} {value}"));
            }
        };
        let paths = |list: &[PathBuf]| {
            if list.is_empty() {
                "none".to_owned()
            } else {
                list.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        if let Some(s) = &self.host_name {
            push("HostName", s.value.clone(), &s.origin);
        }
        if let Some(s) = &self.port {
            push("Port", s.value.to_string(), &s.origin);
        }
        if let Some(s) = &self.user {
            push("User", s.value.clone(), &s.origin);
        }
        for s in &self.identity_files {
            push("IdentityFile", s.value.display().to_string(), &s.origin);
        }
        for s in &self.certificate_files {
            push("CertificateFile", s.value.display().to_string(), &s.origin);
        }
        if let Some(s) = &self.identities_only {
            push("IdentitiesOnly", yes_no(s.value), &s.origin);
        }
        if let Some(s) = &self.identity_agent {
            let value = s
                .value
                .as_ref()
                .map_or_else(|| "none".to_owned(), |p| p.display().to_string());
            push("IdentityAgent", value, &s.origin);
        }
        if let Some(s) = &self.user_known_hosts {
            push("UserKnownHostsFile", paths(&s.value), &s.origin);
        }
        if let Some(s) = &self.global_known_hosts {
            push("GlobalKnownHostsFile", paths(&s.value), &s.origin);
        }
        if let Some(s) = &self.strict_host_key_checking {
            let value = match s.value {
                StrictHostKeyChecking::Yes => "yes",
                StrictHostKeyChecking::Ask => "ask",
                StrictHostKeyChecking::AcceptNew => "accept-new",
                StrictHostKeyChecking::No => "no",
            };
            push("StrictHostKeyChecking", value.into(), &s.origin);
        }
        if let Some(s) = &self.hash_known_hosts {
            push("HashKnownHosts", yes_no(s.value), &s.origin);
        }
        if let Some(s) = &self.proxy_jump {
            let value = if s.value.is_empty() {
                "none".to_owned()
            } else {
                s.value
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            push("ProxyJump", value, &s.origin);
        }
        if let Some(s) = &self.proxy_command {
            let value = s.value.clone().unwrap_or_else(|| "none".to_owned());
            push("ProxyCommand", value, &s.origin);
        }
        if let Some(s) = &self.connect_timeout {
            push("ConnectTimeout", format!("{:?}", s.value), &s.origin);
        }
        if let Some(s) = &self.server_alive_interval {
            push("ServerAliveInterval", format!("{:?}", s.value), &s.origin);
        }
        if let Some(s) = &self.server_alive_count_max {
            push("ServerAliveCountMax", s.value.to_string(), &s.origin);
        }
        lines
    }
}

fn yes_no(on: bool) -> String {
    if on { "yes" } else { "no" }.into()
}

/// What the command line fixes before any file is read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Given<'a> {
    pub(crate) user: Option<&'a str>,
    pub(crate) port: Option<u16>,
}

/// Resolves `host` through `files`. `default_port` stands for `%p` when no
/// port is set.
pub(crate) fn resolve(
    files: &Files,
    host: &str,
    given: &Given<'_>,
    default_port: u16,
    context: &Context,
) -> Result<HostSettings, ConfigError> {
    let mut resolver = Resolver::new(host, given, default_port, context);
    resolver.pass(files)?;
    if resolver.want_final {
        resolver.final_pass = true;
        resolver.host = resolver.current_host_name();
        resolver.pass(files)?;
    }
    resolver.finish()
}

/// A value as read, before tokens are expanded.
type Raw<T> = Option<Setting<T>>;

#[derive(Default)]
struct Collected {
    host_name: Raw<String>,
    port: Raw<u16>,
    user: Raw<String>,
    identity_files: Vec<Setting<String>>,
    certificate_files: Vec<Setting<String>>,
    identities_only: Raw<bool>,
    identity_agent: Raw<String>,
    user_known_hosts: Raw<Vec<String>>,
    global_known_hosts: Raw<Vec<String>>,
    strict: Raw<StrictHostKeyChecking>,
    hash_known_hosts: Raw<bool>,
    proxy_jump: Raw<Vec<JumpHost>>,
    proxy_command: Raw<String>,
    connect_timeout: Raw<Duration>,
    server_alive_interval: Raw<Duration>,
    server_alive_count_max: Raw<u32>,
    tag: Raw<String>,
}

struct Resolver<'a> {
    context: &'a Context,
    /// The name given, as given.
    given: String,
    /// The port `%p` stands for when none is set.
    default_port: u16,
    /// The name given, lower-cased.
    original: String,
    /// What `Host` lines match: the name given, then in the final pass the
    /// resolved host name.
    host: String,
    final_pass: bool,
    want_final: bool,
    values: Collected,
}

/// One line, split.
struct Line {
    keyword: String,
    args: Vec<String>,
    /// The arguments as written (for `ProxyCommand`, a shell command).
    raw: String,
    origin: Origin,
}

impl Line {
    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.clone(),
            message: message.into(),
        }
    }

    /// The single argument of a one-value keyword.
    fn one(&self) -> Result<&str, ConfigError> {
        match self.args.as_slice() {
            [] => Err(self.error(format!("{} needs an argument", self.keyword))),
            [one] => Ok(one),
            [_, extra, ..] => Err(self.error(format!(
                "{}: unexpected argument {extra:?} at the end of the line",
                self.keyword
            ))),
        }
    }

    fn list(&self) -> Result<&[String], ConfigError> {
        if self.args.is_empty() {
            return Err(self.error(format!("{} needs an argument", self.keyword)));
        }
        Ok(&self.args)
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        match self.one()?.to_ascii_lowercase().as_str() {
            "yes" | "true" => Ok(true),
            "no" | "false" => Ok(false),
            other => Err(self.error(format!(
                "{}: expected yes or no, not {other:?}",
                self.keyword
            ))),
        }
    }

    fn seconds(&self) -> Result<Duration, ConfigError> {
        let text = self.one()?;
        parse_time(text)
            .ok_or_else(|| self.error(format!("{}: invalid time {text:?}", self.keyword)))
    }

    fn setting<T>(&self, value: T) -> Setting<T> {
        Setting {
            value,
            origin: self.origin.clone(),
        }
    }
}

/// ssh's time format: `90`, `90s`, `1m30s`, `2h`, `1d`, `1w`.
fn parse_time(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
    }
    if !digits.is_empty() {
        total = total.checked_add(digits.parse().ok()?)?;
    }
    Some(Duration::from_secs(total))
}

/// Splits a line as ssh does: keyword, then `=` or whitespace, then
/// arguments with quotes and backslashes; `#` at the start of a word ends the
/// line. `None` for a blank or comment line.
fn split_line(text: &str) -> Result<Option<(String, Vec<String>, String)>, String> {
    let text = text.trim_start();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let end = text
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(text.len());
    let keyword = text[..end].to_ascii_lowercase();
    let mut rest = text[end..].trim_start();
    if let Some(after) = rest.strip_prefix('=') {
        rest = after.trim_start();
    }
    let raw = rest.trim_end().to_owned();
    let mut args = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.peek() {
            None | Some('#') => break,
            Some(_) => {}
        }
        let mut arg = String::new();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (c, quote) {
                ('\\', _) => match chars.peek() {
                    Some(&next)
                        if next == '\\'
                            || next == '"'
                            || next == '\''
                            || (quote.is_none() && next == ' ') =>
                    {
                        arg.push(next);
                        chars.next();
                    }
                    _ => arg.push('\\'),
                },
                ('"' | '\'', None) => quote = Some(c),
                (c, Some(q)) if c == q => quote = None,
                (c, None) if c.is_whitespace() => break,
                (c, _) => arg.push(c),
            }
        }
        if quote.is_some() {
            return Err("unterminated quote".into());
        }
        args.push(arg);
    }
    Ok(Some((keyword, args, raw)))
}

/// `*` and `?` wildcards, plus `[...]` classes when `classes` (globs).
fn wildcard(pattern: &[char], text: &[char], classes: bool) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                '*' => {
                    backtrack = Some((p, t));
                    p += 1;
                    continue;
                }
                '?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                '[' if classes => {
                    if let Some((matched, next)) = class(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == '[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match backtrack {
            Some((star, from)) => {
                p = star + 1;
                t = from + 1;
                backtrack = Some((star, from + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class at the start of `pattern`; the class's
/// length, or `None` when the `[` opens no class.
fn class(pattern: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        if pattern[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&'-') && pattern.get(i + 2).is_some_and(|e| *e != ']') {
            if pattern[i] <= c && c <= pattern[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if pattern[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// A host name against one `*`/`?` pattern, ignoring case.
fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern: Vec<char> = pattern.to_lowercase().chars().collect();
    let host: Vec<char> = host.to_lowercase().chars().collect();
    wildcard(&pattern, &host, false)
}

/// ssh's pattern lists (`a,b,!c`): no `!` pattern may match, one plain one must.
fn list_matches(list: &str, name: &str) -> bool {
    let mut any = false;
    for pattern in list.split(',') {
        match pattern.strip_prefix('!') {
            Some(negated) if host_matches(negated, name) => return false,
            Some(_) => {}
            None => any |= host_matches(pattern, name),
        }
    }
    any
}

impl<'a> Resolver<'a> {
    fn new(host: &str, given: &Given<'_>, default_port: u16, context: &'a Context) -> Resolver<'a> {
        let original = host.to_lowercase();
        let values = Collected {
            user: given.user.map(|user| Setting {
                value: user.to_owned(),
                origin: Origin::CommandLine,
            }),
            port: given.port.map(|port| Setting {
                value: port,
                origin: Origin::CommandLine,
            }),
            ..Collected::default()
        };
        Resolver {
            context,
            given: host.to_owned(),
            default_port,
            host: original.clone(),
            original,
            final_pass: false,
            want_final: false,
            values,
        }
    }

    fn pass(&mut self, files: &Files) -> Result<(), ConfigError> {
        match files {
            Files::None => Ok(()),
            Files::Path(path) => self.read_top(path, true, true),
            Files::Default => {
                let user = self.context.home.join(".ssh").join("config");
                self.read_top(&user, true, false)?;
                let system = self.context.system_dir.join("ssh_config");
                self.read_top(&system, false, false)
            }
        }
    }

    /// A top-level file; one that is not there is an error only when named.
    fn read_top(&mut self, path: &Path, user: bool, required: bool) -> Result<(), ConfigError> {
        if !required && !path.exists() {
            return Ok(());
        }
        let mut active = true;
        self.read_file(path, user, false, &mut active, 0)
    }

    fn read_file(
        &mut self,
        path: &Path,
        user: bool,
        never_match: bool,
        active: &mut bool,
        depth: usize,
    ) -> Result<(), ConfigError> {
        let file_error = |message: String| ConfigError {
            origin: Origin::File {
                path: path.to_owned(),
                line: 0,
            },
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|err| file_error(format!("cannot read: {err}")))?;
        if user {
            check_permissions(path).map_err(file_error)?;
        }
        for (index, text) in text.lines().enumerate() {
            let origin = Origin::File {
                path: path.to_owned(),
                line: index + 1,
            };
            let (keyword, args, raw) = match split_line(text) {
                Ok(Some(split)) => split,
                Ok(None) => continue,
                Err(message) => return Err(ConfigError { origin, message }),
            };
            let line = Line {
                keyword,
                args,
                raw,
                origin,
            };
            self.line(&line, user, never_match, active, depth)?;
        }
        Ok(())
    }

    fn line(
        &mut self,
        line: &Line,
        user: bool,
        never_match: bool,
        active: &mut bool,
        depth: usize,
    ) -> Result<(), ConfigError> {
        let on = *active;
        let v = &mut self.values;
        match line.keyword.as_str() {
            "host" => {
                let patterns = line.list()?;
                *active = !never_match && self.host_line(patterns);
            }
            "match" => {
                let result = self.match_line(line)?;
                *active = !never_match && result;
            }
            "include" => {
                for pattern in line.list()? {
                    let files = self.include_paths(pattern, user, line)?;
                    if depth + 1 > MAX_INCLUDE_DEPTH {
                        return Err(line.error("Include nested too deeply"));
                    }
                    for file in files {
                        let saved = *active;
                        self.read_file(&file, user, never_match || !saved, active, depth + 1)?;
                        *active = saved;
                    }
                }
            }
            "hostname" => first(&mut v.host_name, on, line.setting(line.one()?.to_owned())),
            "port" => {
                let text = line.one()?;
                let port = parse_port(text)
                    .ok_or_else(|| line.error(format!("Port: invalid port {text:?}")))?;
                first(&mut v.port, on, line.setting(port));
            }
            "user" => first(&mut v.user, on, line.setting(line.one()?.to_owned())),
            "identityfile" => {
                let path = line.one()?.to_owned();
                if on {
                    v.identity_files.push(line.setting(path));
                }
            }
            "certificatefile" => {
                let path = line.one()?.to_owned();
                if on {
                    v.certificate_files.push(line.setting(path));
                }
            }
            "identitiesonly" => first(&mut v.identities_only, on, line.setting(line.boolean()?)),
            "identityagent" => first(
                &mut v.identity_agent,
                on,
                line.setting(line.one()?.to_owned()),
            ),
            "userknownhostsfile" => {
                first(
                    &mut v.user_known_hosts,
                    on,
                    line.setting(line.list()?.to_vec()),
                );
            }
            "globalknownhostsfile" => {
                first(
                    &mut v.global_known_hosts,
                    on,
                    line.setting(line.list()?.to_vec()),
                );
            }
            "stricthostkeychecking" => {
                let value = match line.one()?.to_ascii_lowercase().as_str() {
                    "yes" | "true" => StrictHostKeyChecking::Yes,
                    "ask" => StrictHostKeyChecking::Ask,
                    "accept-new" => StrictHostKeyChecking::AcceptNew,
                    "no" | "false" | "off" => StrictHostKeyChecking::No,
                    other => {
                        return Err(line.error(format!(
                            "StrictHostKeyChecking: expected yes, accept-new, no or ask, not {other:?}"
                        )));
                    }
                };
                first(&mut v.strict, on, line.setting(value));
            }
            "hashknownhosts" => first(&mut v.hash_known_hosts, on, line.setting(line.boolean()?)),
            // ProxyJump and ProxyCommand compete: the first of either wins.
            "proxyjump" => {
                let hops = JumpHost::parse_list(line.one()?)
                    .map_err(|message| line.error(format!("ProxyJump: {message}")))?;
                let on = on && v.proxy_command.is_none();
                first(&mut v.proxy_jump, on, line.setting(hops));
            }
            "proxycommand" => {
                line.list()?;
                let on = on && v.proxy_jump.is_none();
                first(&mut v.proxy_command, on, line.setting(line.raw.clone()));
            }
            "connecttimeout" => first(&mut v.connect_timeout, on, line.setting(line.seconds()?)),
            "serveraliveinterval" => {
                first(
                    &mut v.server_alive_interval,
                    on,
                    line.setting(line.seconds()?),
                );
            }
            "serveralivecountmax" => {
                let text = line.one()?;
                let count = text.parse::<u32>().map_err(|_| {
                    line.error(format!("ServerAliveCountMax: invalid number {text:?}"))
                })?;
                first(&mut v.server_alive_count_max, on, line.setting(count));
            }
            "tag" => first(&mut v.tag, on, line.setting(line.one()?.to_owned())),
            _ => {}
        }
        Ok(())
    }

    fn host_line(&self, patterns: &[String]) -> bool {
        let mut any = false;
        for pattern in patterns {
            match pattern.strip_prefix('!') {
                Some(negated) if host_matches(negated, &self.host) => return false,
                Some(_) => {}
                None => any |= host_matches(pattern, &self.host),
            }
        }
        any
    }

    /// The host name as resolved so far: `HostName` with `%h` expanded, or
    /// the name given.
    fn current_host_name(&self) -> String {
        match &self.values.host_name {
            Some(setting) => expand_host_name(&setting.value, &self.original)
                .unwrap_or_else(|_| setting.value.clone()),
            None => self.original.clone(),
        }
    }

    fn current_user(&self) -> String {
        self.values
            .user
            .as_ref()
            .map_or_else(|| self.context.local_user.clone(), |s| s.value.clone())
    }

    fn match_line(&mut self, line: &Line) -> Result<bool, ConfigError> {
        let args = line.list()?;
        let mut result = true;
        let mut index = 0;
        while index < args.len() {
            let word = &args[index];
            index += 1;
            let (negate, attribute) = match word.strip_prefix('!') {
                Some(rest) => (true, rest.to_ascii_lowercase()),
                None => (false, word.to_ascii_lowercase()),
            };
            let matched = match attribute.as_str() {
                "all" => {
                    let others = args
                        .iter()
                        .filter(|w| {
                            let w = w.trim_start_matches('!').to_ascii_lowercase();
                            w != "canonical" && w != "final"
                        })
                        .count();
                    if others > 1 || index != args.len() {
                        return Err(line.error(
                            "Match all cannot be combined with other criteria (but canonical or final)",
                        ));
                    }
                    true
                }
                "canonical" | "final" => {
                    self.want_final = true;
                    self.final_pass
                }
                "host" | "originalhost" | "user" | "localuser" | "exec" | "tagged"
                | "localnetwork" | "version" | "sessiontype" | "command" => {
                    let Some(value) = args.get(index) else {
                        return Err(line.error(format!("Match {attribute} needs an argument")));
                    };
                    index += 1;
                    match attribute.as_str() {
                        "host" => list_matches(value, &self.current_host_name()),
                        "originalhost" => list_matches(value, &self.original),
                        "user" => list_matches(value, &self.current_user()),
                        "localuser" => list_matches(value, &self.context.local_user),
                        "tagged" => {
                            let tag = self.values.tag.as_ref().map_or("", |t| t.value.as_str());
                            list_matches(value, tag)
                        }
                        // ssh skips the command once the line cannot match.
                        "exec" if result => self.exec(value, line)?,
                        _ => false,
                    }
                }
                other => {
                    return Err(line.error(format!("Match: unsupported criterion {other:?}")));
                }
            };
            result &= matched != negate;
        }
        Ok(result)
    }

    /// `Match exec`: true when the command, run by `sh -c`, exits 0.
    fn exec(&self, command: &str, line: &Line) -> Result<bool, ConfigError> {
        let tokens = self.tokens();
        let command = expand_tokens(command, &tokens)
            .map_err(|message| line.error(format!("Match exec: {message}")))?;
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status();
        Ok(status.is_ok_and(|status| status.success()))
    }

    fn include_paths(
        &self,
        pattern: &str,
        user: bool,
        line: &Line,
    ) -> Result<Vec<PathBuf>, ConfigError> {
        let tokens = self.tokens();
        let expanded = expand_path(pattern, &tokens, self.context)
            .map_err(|message| line.error(format!("Include: {message}")))?;
        let path = if expanded.is_absolute() {
            expanded
        } else if user {
            self.context.home.join(".ssh").join(expanded)
        } else {
            self.context.system_dir.join(expanded)
        };
        Ok(glob(&path))
    }

    /// Token values as known now.
    fn tokens(&self) -> Vec<(char, String)> {
        let port = self
            .values
            .port
            .as_ref()
            .map_or(self.default_port, |s| s.value);
        let short = self
            .context
            .local_host
            .split('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let jump = self
            .values
            .proxy_jump
            .as_ref()
            .map_or_else(String::new, |s| {
                s.value
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            });
        vec![
            ('%', "%".to_owned()),
            ('d', self.context.home.display().to_string()),
            ('h', self.current_host_name()),
            ('n', self.original.clone()),
            ('k', self.original.clone()),
            ('p', port.to_string()),
            ('r', self.current_user()),
            ('u', self.context.local_user.clone()),
            ('l', self.context.local_host.clone()),
            ('L', short),
            ('i', uid()),
            ('j', jump),
        ]
    }

    fn finish(self) -> Result<HostSettings, ConfigError> {
        let tokens = self.tokens();
        let context = self.context;
        let v = &self.values;
        let path = |setting: &Setting<String>| -> Result<Setting<PathBuf>, ConfigError> {
            let value =
                expand_path(&setting.value, &tokens, context).map_err(|message| ConfigError {
                    origin: setting.origin.clone(),
                    message,
                })?;
            Ok(Setting {
                value,
                origin: setting.origin.clone(),
            })
        };
        let paths = |setting: &Setting<Vec<String>>| -> Result<Setting<Vec<PathBuf>>, ConfigError> {
            let mut value = Vec::new();
            if !(setting.value.len() == 1 && setting.value[0].eq_ignore_ascii_case("none")) {
                for one in &setting.value {
                    value.push(
                        path(&Setting {
                            value: one.clone(),
                            origin: setting.origin.clone(),
                        })?
                        .value,
                    );
                }
            }
            Ok(Setting {
                value,
                origin: setting.origin.clone(),
            })
        };
        let unique = |list: &[Setting<String>]| -> Result<Vec<Setting<PathBuf>>, ConfigError> {
            let mut out: Vec<Setting<PathBuf>> = Vec::new();
            for setting in list {
                let expanded = path(setting)?;
                if !out.iter().any(|s| s.value == expanded.value) {
                    out.push(expanded);
                }
            }
            Ok(out)
        };
        let host_name = match &v.host_name {
            Some(setting) => Some(Setting {
                value: expand_host_name(&setting.value, &self.original).map_err(|message| {
                    ConfigError {
                        origin: setting.origin.clone(),
                        message: format!("HostName: {message}"),
                    }
                })?,
                origin: setting.origin.clone(),
            }),
            None => None,
        };
        let identity_agent = match &v.identity_agent {
            Some(setting) => {
                let value = setting.value.as_str();
                let socket = if value.eq_ignore_ascii_case("none") {
                    None
                } else if value == "SSH_AUTH_SOCK" {
                    context.env.get("SSH_AUTH_SOCK").map(PathBuf::from)
                } else if let Some(name) = value.strip_prefix('$').filter(|n| !n.starts_with('{')) {
                    context.env.get(name).map(PathBuf::from)
                } else {
                    Some(path(setting)?.value)
                };
                Some(Setting {
                    value: socket,
                    origin: setting.origin.clone(),
                })
            }
            None => None,
        };
        let proxy_command = match &v.proxy_command {
            Some(setting) if setting.value.eq_ignore_ascii_case("none") => Some(Setting {
                value: None,
                origin: setting.origin.clone(),
            }),
            Some(setting) => Some(Setting {
                value: Some(expand_tokens(&setting.value, &tokens).map_err(|message| {
                    ConfigError {
                        origin: setting.origin.clone(),
                        message: format!("ProxyCommand: {message}"),
                    }
                })?),
                origin: setting.origin.clone(),
            }),
            None => None,
        };
        Ok(HostSettings {
            alias: self.given.clone(),
            host_name,
            port: v.port.clone(),
            user: v.user.clone(),
            identity_files: unique(&v.identity_files)?,
            certificate_files: unique(&v.certificate_files)?,
            identities_only: v.identities_only.clone(),
            identity_agent,
            user_known_hosts: v.user_known_hosts.as_ref().map(paths).transpose()?,
            global_known_hosts: v.global_known_hosts.as_ref().map(paths).transpose()?,
            strict_host_key_checking: v.strict.clone(),
            hash_known_hosts: v.hash_known_hosts.clone(),
            proxy_jump: v.proxy_jump.clone(),
            proxy_command,
            connect_timeout: v.connect_timeout.clone(),
            server_alive_interval: v.server_alive_interval.clone(),
            server_alive_count_max: v.server_alive_count_max.clone(),
        })
    }
}

/// Keeps the first value of a keyword.
fn first<T>(slot: &mut Option<Setting<T>>, active: bool, value: Setting<T>) {
    if active && slot.is_none() {
        *slot = Some(value);
    }
}

/// ssh refuses a user configuration that others may write.
fn check_permissions(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|err| format!("cannot read: {err}"))?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            return Err(format!(
                "bad permissions {:o}: group or others may write it (chmod go-w)",
                mode & 0o777
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn expand_host_name(value: &str, original: &str) -> Result<String, String> {
    expand_tokens(value, &[('%', "%".into()), ('h', original.into())])
}

fn expand_tokens(text: &str, tokens: &[(char, String)]) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(key) = chars.next() else {
            return Err("a lone % at the end (write %% for a percent sign)".into());
        };
        match tokens.iter().find(|(k, _)| *k == key) {
            Some((_, value)) => out.push_str(value),
            None => return Err(format!("unknown token %{key}")),
        }
    }
    Ok(out)
}

/// `~`, `${VAR}` and `%` tokens, in that order (as ssh expands paths).
fn expand_path(
    text: &str,
    tokens: &[(char, String)],
    context: &Context,
) -> Result<PathBuf, String> {
    let text = if text == "~" {
        context.home.display().to_string()
    } else if let Some(rest) = text.strip_prefix("~/") {
        format!("{}/{rest}", context.home.display())
    } else if text.starts_with('~') {
        return Err(format!("{text:?}: only ~ and ~/ are understood, not ~user"));
    } else {
        text.to_owned()
    };
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{text:?}: unclosed ${{"))?;
        let name = &after[..end];
        let value = context
            .env
            .get(name)
            .ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    expand_tokens(&out, tokens).map(PathBuf::from)
}

/// The files `pattern` names, in lexical order; a component with `*`, `?` or
/// `[` is matched against its directory's entries (hidden ones only by a
/// pattern that starts with `.`).
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for component in pattern.components() {
        let part = component.as_os_str().to_string_lossy();
        let wild = part.contains(['*', '?', '[']);
        let mut next = Vec::new();
        for base in &found {
            if !wild {
                next.push(base.join(component));
                continue;
            }
            let dir = if base.as_os_str().is_empty() {
                Path::new(".")
            } else {
                base.as_path()
            };
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let pattern: Vec<char> = part.chars().collect();
            let mut names: Vec<String> = entries
                .filter_map(|entry| entry.ok())
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|name| !name.starts_with('.') || part.starts_with('.'))
                .filter(|name| wildcard(&pattern, &name.chars().collect::<Vec<_>>(), true))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|name| base.join(name)));
        }
        found = next;
    }
    found.retain(|path| path.is_file());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        context: Context,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let home = dir.path().join("home");
            std::fs::create_dir_all(home.join(".ssh")).unwrap();
            std::fs::create_dir_all(dir.path().join("etc")).unwrap();
            let env = HashMap::from([
                ("HOME".to_owned(), home.display().to_string()),
                ("KORV_TEST_DIR".to_owned(), "/srv/keys".to_owned()),
                ("SSH_AUTH_SOCK".to_owned(), "/run/agent.sock".to_owned()),
                ("OTHER_AGENT".to_owned(), "/run/other.sock".to_owned()),
            ]);
            let context = Context {
                home,
                local_user: "me".into(),
                local_host: "desk.example.org".into(),
                system_dir: dir.path().join("etc"),
                env,
            };
            Fixture { dir, context }
        }

        fn home(&self) -> &Path {
            &self.context.home
        }

        /// Writes `~/.ssh/<name>` (0600) and returns its path.
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.home().join(".ssh").join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            set_mode(&path, 0o600);
            path
        }

        fn config(&self, text: &str) -> PathBuf {
            self.write("config", text)
        }

        fn resolve(&self, host: &str) -> HostSettings {
            self.try_resolve(host, &Given::default()).unwrap()
        }

        fn try_resolve(&self, host: &str, given: &Given<'_>) -> Result<HostSettings, ConfigError> {
            resolve(&Files::Default, host, given, 8022, &self.context)
        }

        fn error(&self, text: &str) -> ConfigError {
            let path = self.config(text);
            let err = self.try_resolve("anything", &Given::default()).unwrap_err();
            match &err.origin {
                Origin::File { path: p, .. } => assert_eq!(p, &path, "{err}"),
                Origin::CommandLine => panic!("{err}"),
            }
            err
        }
    }

    fn set_mode(path: &Path, mode: u32) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = (path, mode);
    }

    fn value<T: Clone>(setting: &Option<Setting<T>>) -> T {
        setting.as_ref().expect("set").value.clone()
    }

    fn line_of<T>(setting: &Option<Setting<T>>) -> usize {
        match &setting.as_ref().expect("set").origin {
            Origin::File { line, .. } => *line,
            Origin::CommandLine => 0,
        }
    }

    #[test]
    fn an_alias_gets_its_block_with_file_and_line() {
        let f = Fixture::new();
        let path = f.config(
            "# comment\n\nHost prod-api\n  HostName 10.0.0.5\n  Port 2222\n  User deploy\n  IdentityFile ~/.ssh/prod\n",
        );
        let s = f.resolve("prod-api");
        assert_eq!(value(&s.host_name), "10.0.0.5");
        assert_eq!(value(&s.port), 2222);
        assert_eq!(value(&s.user), "deploy");
        assert_eq!(s.identity_files[0].value, f.home().join(".ssh/prod"));
        assert_eq!(
            s.host_name.as_ref().unwrap().origin,
            Origin::File {
                path: path.clone(),
                line: 4
            }
        );
        assert_eq!(
            s.describe()[0],
            format!("{}:4: HostName 10.0.0.5", path.display())
        );
        let other = f.resolve("staging");
        assert_eq!(other.host_name, None);
        assert_eq!(other.port, None);
    }

    #[test]
    fn the_first_obtained_value_wins() {
        let f = Fixture::new();
        f.config("Host prod\n  Port 1111\n  User a\nHost *\n  Port 2222\n  User b\n  ConnectTimeout 7\nHost prod\n  Port 3333\n");
        let s = f.resolve("prod");
        assert_eq!(value(&s.port), 1111);
        assert_eq!(value(&s.user), "a");
        assert_eq!(value(&s.connect_timeout), Duration::from_secs(7));
        assert_eq!(line_of(&s.connect_timeout), 7);
        assert_eq!(value(&f.resolve("other").port), 2222);
    }

    #[test]
    fn lines_before_any_host_apply_to_every_host_and_win() {
        let f = Fixture::new();
        f.config("Port 4000\nHost prod\n  Port 5000\n  User x\n");
        let s = f.resolve("prod");
        assert_eq!(value(&s.port), 4000);
        assert_eq!(value(&s.user), "x");
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let f = Fixture::new();
        f.config("Host prod\n  Port 1111\n  User deploy\n");
        let s = f
            .try_resolve(
                "prod",
                &Given {
                    user: Some("root"),
                    port: Some(9),
                },
            )
            .unwrap();
        assert_eq!(value(&s.port), 9);
        assert_eq!(value(&s.user), "root");
        assert_eq!(s.port.as_ref().unwrap().origin, Origin::CommandLine);
        assert!(s.describe().is_empty(), "{:?}", s.describe());
    }

    #[test]
    fn wildcards_and_several_patterns() {
        let f = Fixture::new();
        f.config("Host db? web-*\n  User ops\nHost *.example.com\n  Port 7\n");
        assert_eq!(value(&f.resolve("db1").user), "ops");
        assert_eq!(f.resolve("db12").user, None);
        assert_eq!(value(&f.resolve("web-eu-1").user), "ops");
        assert_eq!(value(&f.resolve("api.example.com").port), 7);
        assert_eq!(f.resolve("example.com").port, None);
        assert_eq!(value(&f.resolve("WEB-1").user), "ops", "names ignore case");
        assert_eq!(
            f.resolve("WEB-1").alias,
            "WEB-1",
            "the name is kept as given"
        );
    }

    #[test]
    fn a_negated_pattern_vetoes_the_block() {
        let f = Fixture::new();
        f.config(
            "Host *.corp !bastion.corp\n  ProxyJump bastion.corp\nHost !nothing\n  User never\n",
        );
        let s = f.resolve("db.corp");
        assert_eq!(value(&s.proxy_jump)[0].host, "bastion.corp");
        assert_eq!(f.resolve("bastion.corp").proxy_jump, None);
        assert_eq!(
            f.resolve("db.corp").user,
            None,
            "a lone negation matches nothing"
        );
    }

    #[test]
    fn match_host_user_originalhost_localuser_and_all() {
        let f = Fixture::new();
        f.config(
            "Host short\n  HostName long.example.com\n\
             Match host long.example.com\n  Port 1\n\
             Match originalhost short user me\n  User matched-original\n\
             Match localuser me,!root\n  ConnectTimeout 3\n\
             Match host *.example.com !user matched-original\n  ServerAliveInterval 9\n\
             Match all\n  ServerAliveCountMax 5\n",
        );
        let s = f.resolve("short");
        assert_eq!(value(&s.port), 1, "Match host sees the HostName");
        assert_eq!(value(&s.user), "matched-original");
        assert_eq!(value(&s.connect_timeout), Duration::from_secs(3));
        assert_eq!(
            s.server_alive_interval, None,
            "the User set above is the user matched"
        );
        assert_eq!(value(&s.server_alive_count_max), 5);
        let given = Given {
            user: Some("other"),
            port: None,
        };
        let s = f.try_resolve("short", &given).unwrap();
        assert_eq!(value(&s.user), "other");
        assert_eq!(value(&s.server_alive_interval), Duration::from_secs(9));
    }

    #[test]
    fn match_user_sees_a_user_set_earlier_in_the_file() {
        let f = Fixture::new();
        f.config("Host a\n  User deploy\nMatch user deploy\n  Port 42\n");
        assert_eq!(value(&f.resolve("a").port), 42);
        assert_eq!(f.resolve("b").port, None);
    }

    #[test]
    fn match_exec_runs_the_command_with_tokens() {
        let f = Fixture::new();
        f.config("Match exec \"test %h = yes-host\"\n  Port 10\nMatch exec false\n  User never\nMatch !exec false\n  User negated\n");
        assert_eq!(value(&f.resolve("yes-host").port), 10);
        assert_eq!(f.resolve("no-host").port, None);
        assert_eq!(value(&f.resolve("no-host").user), "negated");
    }

    #[test]
    fn match_final_runs_a_second_pass_on_the_resolved_name() {
        let f = Fixture::new();
        f.config(
            "Host alias\n  HostName real.example.com\n\
             Match final host real.example.com\n  User final-user\n\
             Host real.example.com\n  Port 77\n\
             Match canonical\n  ConnectTimeout 4\n",
        );
        let s = f.resolve("alias");
        assert_eq!(value(&s.user), "final-user");
        assert_eq!(
            value(&s.port),
            77,
            "the final pass matches Host against HostName"
        );
        assert_eq!(value(&s.connect_timeout), Duration::from_secs(4));
        assert_eq!(f.resolve("other").user, None);
    }

    #[test]
    fn match_tagged_and_unsupported_criteria() {
        let f = Fixture::new();
        f.config(
            "Tag blue\nMatch tagged blue\n  Port 3\nMatch localnetwork 10.0.0.0/8\n  User never\n",
        );
        let s = f.resolve("x");
        assert_eq!(value(&s.port), 3);
        assert_eq!(s.user, None);
    }

    #[test]
    fn malformed_match_lines_are_errors() {
        let f = Fixture::new();
        let err = f.error("Match host\n");
        assert!(err.message.contains("needs an argument"), "{err}");
        let err = f.error("Match all host x\n");
        assert!(err.message.contains("cannot be combined"), "{err}");
        let err = f.error("Port 1\nMatch colour blue\n");
        assert!(err.message.contains("colour"), "{err}");
        assert!(err.to_string().contains(":2:"), "{err}");
        let err = f.error("Match\n");
        assert!(err.message.contains("needs an argument"), "{err}");
    }

    #[test]
    fn include_with_globs_in_lexical_order_relative_to_dot_ssh() {
        let f = Fixture::new();
        f.write("conf.d/20-b.conf", "Host prod\n  Port 20\n  User from-b\n");
        let a = f.write("conf.d/10-a.conf", "Host prod\n  Port 10\n");
        f.write("conf.d/.hidden.conf", "Host prod\n  User hidden\n");
        f.write("conf.d/notes.txt", "Host prod\n  User txt\n");
        f.config("Include conf.d/*.conf\nHost *\n  User last\n");
        let s = f.resolve("prod");
        assert_eq!(value(&s.port), 10);
        assert_eq!(
            s.port.as_ref().unwrap().origin,
            Origin::File { path: a, line: 2 }
        );
        assert_eq!(value(&s.user), "from-b");
        assert_eq!(value(&f.resolve("other").user), "last");
    }

    #[test]
    fn include_with_tilde_several_paths_and_no_match() {
        let f = Fixture::new();
        f.write("one", "Port 1\n");
        f.write("two", "User two\n");
        f.config("Include ~/.ssh/one two /nonexistent/*.conf missing\n");
        let s = f.resolve("x");
        assert_eq!(value(&s.port), 1);
        assert_eq!(value(&s.user), "two");
    }

    #[test]
    fn include_inside_a_block_applies_only_when_the_block_does() {
        let f = Fixture::new();
        f.write("prod.conf", "User prod-user\nHost *\n  Port 99\n");
        f.config("Host prod\n  Include prod.conf\n  IdentityFile ~/after\nHost other\n  User other-user\n");
        let s = f.resolve("prod");
        assert_eq!(value(&s.user), "prod-user");
        assert_eq!(value(&s.port), 99);
        assert_eq!(
            s.identity_files.len(),
            1,
            "the block resumes after the include"
        );
        let s = f.resolve("other");
        assert_eq!(value(&s.user), "other-user");
        assert_eq!(
            s.port, None,
            "Host * inside an inactive include never matches"
        );
    }

    #[test]
    fn errors_inside_an_inactive_include_are_still_reported() {
        let f = Fixture::new();
        let bad = f.write("bad.conf", "Port many\n");
        f.config("Host nothing\n  Include bad.conf\n");
        let err = f.try_resolve("x", &Given::default()).unwrap_err();
        assert_eq!(err.origin, Origin::File { path: bad, line: 1 });
    }

    #[test]
    fn include_loops_are_stopped() {
        let f = Fixture::new();
        f.config("Include config\n");
        let err = f.try_resolve("x", &Given::default()).unwrap_err();
        assert!(err.message.contains("nested too deeply"), "{err}");
    }

    #[test]
    fn tokens_tilde_and_environment_in_paths() {
        let f = Fixture::new();
        f.config(
            "Host prod\n  HostName %h.internal\n  User deploy\n\
             IdentityFile ~/.ssh/%h_%p_%r\n\
             IdentityFile %d/keys/%u@%n\n\
             IdentityFile ${KORV_TEST_DIR}/%L/%l/100%%\n\
             CertificateFile ~/.ssh/%n-cert.pub\n\
             UserKnownHostsFile ~/.ssh/kh1 /abs/kh2\n",
        );
        let s = f.resolve("prod");
        let home = f.home().display().to_string();
        assert_eq!(value(&s.host_name), "prod.internal");
        let files: Vec<String> = s
            .identity_files
            .iter()
            .map(|s| s.value.display().to_string())
            .collect();
        assert_eq!(
            files,
            [
                format!("{home}/.ssh/prod.internal_8022_deploy"),
                format!("{home}/keys/me@prod"),
                "/srv/keys/desk/desk.example.org/100%".to_owned(),
            ]
        );
        assert_eq!(
            s.certificate_files[0].value,
            f.home().join(".ssh/prod-cert.pub")
        );
        assert_eq!(
            value(&s.user_known_hosts),
            [f.home().join(".ssh/kh1"), PathBuf::from("/abs/kh2")]
        );
    }

    #[test]
    fn percent_p_is_the_port_in_force() {
        let f = Fixture::new();
        f.config("IdentityFile /k/%p\nHost b\n  Port 2200\n");
        assert_eq!(
            f.resolve("a").identity_files[0].value,
            PathBuf::from("/k/8022")
        );
        assert_eq!(
            f.resolve("b").identity_files[0].value,
            PathBuf::from("/k/2200")
        );
    }

    #[test]
    fn bad_tokens_and_variables_name_the_line() {
        let f = Fixture::new();
        let err = f.error("\nIdentityFile ~/%Z\n");
        assert!(err.message.contains("%Z"), "{err}");
        assert!(err.to_string().contains(":2:"), "{err}");
        let err = f.error("IdentityFile ${NOT_SET_ANYWHERE}/k\n");
        assert!(err.message.contains("NOT_SET_ANYWHERE"), "{err}");
        let err = f.error("HostName %p.example\n");
        assert!(err.message.contains("%p"), "{err}");
        let err = f.error("IdentityFile ~bob/key\n");
        assert!(err.message.contains("~user"), "{err}");
    }

    #[test]
    fn several_identity_files_accumulate_in_order_without_duplicates() {
        let f = Fixture::new();
        f.config("Host prod\n  IdentityFile ~/.ssh/a\n  IdentityFile ~/.ssh/b\nHost *\n  IdentityFile ~/.ssh/a\n  IdentityFile ~/.ssh/c\n");
        let s = f.resolve("prod");
        let names: Vec<_> = s
            .identity_files
            .iter()
            .map(|s| s.value.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(s.describe().len(), 3);
    }

    #[test]
    fn every_honoured_keyword_is_read() {
        let f = Fixture::new();
        f.config(
            "Host all\n\
             IdentitiesOnly yes\n\
             IdentityAgent ~/agent.sock\n\
             GlobalKnownHostsFile /etc/kh\n\
             StrictHostKeyChecking accept-new\n\
             HashKnownHosts no\n\
             ProxyJump alice@b1:2222,b2\n\
             ConnectTimeout 1m30s\n\
             ServerAliveInterval 15\n\
             ServerAliveCountMax 4\n\
             SendEnv LANG LC_*\n\
             ControlPath ~/.ssh/cm-%C\n\
             NoSuchKeyword at all\n",
        );
        let s = f.resolve("all");
        assert!(value(&s.identities_only));
        assert_eq!(value(&s.identity_agent), Some(f.home().join("agent.sock")));
        assert_eq!(value(&s.global_known_hosts), [PathBuf::from("/etc/kh")]);
        assert_eq!(
            value(&s.strict_host_key_checking),
            StrictHostKeyChecking::AcceptNew
        );
        assert!(!value(&s.hash_known_hosts));
        assert_eq!(
            value(&s.proxy_jump),
            [
                JumpHost {
                    user: Some("alice".into()),
                    host: "b1".into(),
                    port: Some(2222)
                },
                JumpHost {
                    user: None,
                    host: "b2".into(),
                    port: None
                }
            ]
        );
        assert_eq!(value(&s.connect_timeout), Duration::from_secs(90));
        assert_eq!(value(&s.server_alive_interval), Duration::from_secs(15));
        assert_eq!(value(&s.server_alive_count_max), 4);
        assert_eq!(s.describe().len(), 9);
    }

    #[test]
    fn proxy_command_raw_with_tokens_and_competing_with_proxy_jump() {
        let f = Fixture::new();
        f.config(
            "Host cmd\n  ProxyCommand=ssh -W '%h:%p' gate   # comment kept by ssh too\n\
             Host jump-first\n  ProxyJump gate\n  ProxyCommand never\n\
             Host cmd-first\n  ProxyCommand nc %h %p\n  ProxyJump never\n\
             Host off\n  ProxyCommand none\n",
        );
        let s = f.resolve("cmd");
        assert_eq!(
            value(&s.proxy_command).as_deref(),
            Some(
                "ssh -W '%h:%p' gate   # comment kept by ssh too"
                    .replace("%h:%p", "cmd:8022")
                    .as_str()
            )
        );
        let s = f.resolve("jump-first");
        assert_eq!(s.proxy_command, None);
        assert_eq!(value(&s.proxy_jump)[0].host, "gate");
        let s = f.resolve("cmd-first");
        assert_eq!(s.proxy_jump, None);
        assert_eq!(
            value(&s.proxy_command).as_deref(),
            Some("nc cmd-first 8022")
        );
        assert_eq!(value(&f.resolve("off").proxy_command), None);
        let err = f.error("ProxyCommand\n");
        assert!(err.message.contains("needs an argument"), "{err}");
    }

    #[test]
    fn strict_host_key_checking_values() {
        let f = Fixture::new();
        for (text, expected) in [
            ("yes", StrictHostKeyChecking::Yes),
            ("ask", StrictHostKeyChecking::Ask),
            ("accept-new", StrictHostKeyChecking::AcceptNew),
            ("no", StrictHostKeyChecking::No),
            ("off", StrictHostKeyChecking::No),
        ] {
            f.config(&format!("StrictHostKeyChecking {text}\n"));
            assert_eq!(value(&f.resolve("x").strict_host_key_checking), expected);
        }
        let err = f.error("StrictHostKeyChecking maybe\n");
        assert!(err.message.contains("maybe"), "{err}");
    }

    #[test]
    fn identity_agent_none_and_variables() {
        let f = Fixture::new();
        for (text, expected) in [
            ("none", None),
            ("SSH_AUTH_SOCK", Some("/run/agent.sock")),
            ("$OTHER_AGENT", Some("/run/other.sock")),
            ("$UNSET_AGENT_VARIABLE", None),
            ("${OTHER_AGENT}.2", Some("/run/other.sock.2")),
        ] {
            f.config(&format!("IdentityAgent {text}\n"));
            assert_eq!(
                value(&f.resolve("x").identity_agent),
                expected.map(PathBuf::from),
                "{text}"
            );
        }
    }

    #[test]
    fn known_hosts_none_is_an_empty_list() {
        let f = Fixture::new();
        f.config("UserKnownHostsFile none\nGlobalKnownHostsFile none\nProxyJump none\n");
        let s = f.resolve("x");
        assert!(value(&s.user_known_hosts).is_empty());
        assert!(value(&s.global_known_hosts).is_empty());
        assert!(value(&s.proxy_jump).is_empty());
    }

    #[test]
    fn equals_quotes_comments_and_keyword_case() {
        let f = Fixture::new();
        f.config(
            "HOSTNAME=a.example # trailing comment\n\
             port = 5\n\
             User=\"x y\"\n\
             IdentityFile \"/with space/k\"\n\
             IdentityFile '/single quoted/k'\n\
             IdentityFile /back\\ slash/k\n\
             \t  # indented comment\n",
        );
        let s = f.resolve("x");
        assert_eq!(value(&s.host_name), "a.example");
        assert_eq!(value(&s.port), 5);
        assert_eq!(value(&s.user), "x y");
        let files: Vec<_> = s.identity_files.iter().map(|s| s.value.clone()).collect();
        assert_eq!(
            files,
            [
                PathBuf::from("/with space/k"),
                PathBuf::from("/single quoted/k"),
                PathBuf::from("/back slash/k")
            ]
        );
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let f = Fixture::new();
        for (text, needle, line) in [
            ("Host\n", "needs an argument", 1),
            ("Port 0\n", "invalid port", 1),
            ("\n\nPort 70000\n", "invalid port", 3),
            ("Port 22 23\n", "unexpected argument", 1),
            ("User \"unterminated\n", "unterminated quote", 1),
            ("IdentitiesOnly maybe\n", "yes or no", 1),
            ("ConnectTimeout soon\n", "invalid time", 1),
            ("ServerAliveCountMax -1\n", "invalid number", 1),
            ("ProxyJump user@\n", "empty host", 1),
            ("Host nothing\n  Port abc\n", "invalid port", 2),
            ("HostName\n", "needs an argument", 1),
            ("Include\n", "needs an argument", 1),
        ] {
            let err = f.error(text);
            assert!(err.message.contains(needle), "{text:?}: {err}");
            assert_eq!(
                match err.origin {
                    Origin::File { line, .. } => line,
                    Origin::CommandLine => 0,
                },
                line,
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn a_config_others_may_write_is_refused() {
        let f = Fixture::new();
        let path = f.config("Port 1\n");
        set_mode(&path, 0o666);
        let err = f.try_resolve("x", &Given::default());
        #[cfg(unix)]
        assert!(err.unwrap_err().message.contains("permissions"));
        #[cfg(not(unix))]
        assert!(err.is_ok());
    }

    #[test]
    fn the_system_file_comes_after_the_user_file() {
        let f = Fixture::new();
        f.config("Host x\n  Port 1\n");
        std::fs::write(
            f.dir.path().join("etc/ssh_config"),
            "Include ssh_config.d/*.conf\nHost *\n  Port 2\n  User sys\n",
        )
        .unwrap();
        std::fs::create_dir_all(f.dir.path().join("etc/ssh_config.d")).unwrap();
        std::fs::write(
            f.dir.path().join("etc/ssh_config.d/a.conf"),
            "ConnectTimeout 8\n",
        )
        .unwrap();
        let s = f.resolve("x");
        assert_eq!(value(&s.port), 1);
        assert_eq!(value(&s.user), "sys");
        assert_eq!(value(&s.connect_timeout), Duration::from_secs(8));
    }

    #[test]
    fn a_named_file_only_and_none() {
        let f = Fixture::new();
        f.config("Port 1\n");
        let named = f.dir.path().join("named");
        std::fs::write(&named, "Port 2\n").unwrap();
        set_mode(&named, 0o600);
        let s = resolve(
            &Files::Path(named),
            "x",
            &Given::default(),
            8022,
            &f.context,
        )
        .unwrap();
        assert_eq!(value(&s.port), 2);
        let s = resolve(&Files::None, "x", &Given::default(), 8022, &f.context).unwrap();
        assert_eq!(s.port, None);
        let missing = f.dir.path().join("missing");
        let err = resolve(
            &Files::Path(missing),
            "x",
            &Given::default(),
            8022,
            &f.context,
        )
        .unwrap_err();
        assert!(err.message.contains("cannot read"), "{err}");
        assert!(
            f.resolve("x").port.is_some(),
            "a missing default file is fine"
        );
    }

    #[test]
    fn jump_specs() {
        let parse = |s: &str| JumpHost::parse_list(s).unwrap();
        assert_eq!(
            parse("host"),
            [JumpHost {
                user: None,
                host: "host".into(),
                port: None
            }]
        );
        assert_eq!(
            parse("u@h:2,ssh://v@g:3,[::1]:4,w@[fe80::1]"),
            [
                JumpHost {
                    user: Some("u".into()),
                    host: "h".into(),
                    port: Some(2)
                },
                JumpHost {
                    user: Some("v".into()),
                    host: "g".into(),
                    port: Some(3)
                },
                JumpHost {
                    user: None,
                    host: "::1".into(),
                    port: Some(4)
                },
                JumpHost {
                    user: Some("w".into()),
                    host: "fe80::1".into(),
                    port: None
                },
            ]
        );
        assert!(parse("none").is_empty());
        assert!(parse("NONE").is_empty());
        assert_eq!(parse("a@b@c")[0].user.as_deref(), Some("a@b"));
        for bad in [
            "", "h:", "h:0", "h:99999", "@h", "u@", "a,,b", "[::1", "[::1]x", "h/x",
        ] {
            assert!(JumpHost::parse_list(bad).is_err(), "{bad:?}");
        }
        let shown: Vec<String> = parse("u@h:2,[::1]:4,plain")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["u@h:2", "[::1]:4", "plain"]);
    }

    #[test]
    fn the_password_database_names_this_process_s_user() {
        // A user without an entry (some containers) has nothing to check.
        if let Some((name, home)) = passwd_entry(&uid()) {
            assert!(!name.is_empty());
            assert!(home.is_absolute(), "{}", home.display());
        }
        assert_eq!(passwd_entry(""), None);
    }

    #[test]
    fn time_values() {
        for (text, secs) in [
            ("0", 0),
            ("10", 10),
            ("10s", 10),
            ("2m", 120),
            ("1h1m1s", 3661),
            ("1d", 86_400),
            ("1w", 604_800),
        ] {
            assert_eq!(parse_time(text), Some(Duration::from_secs(secs)), "{text}");
        }
        for bad in ["", "x", "1x", "s", "-1"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn glob_classes_and_wildcards() {
        let m = |p: &str, t: &str| {
            wildcard(
                &p.chars().collect::<Vec<_>>(),
                &t.chars().collect::<Vec<_>>(),
                true,
            )
        };
        assert!(m("*.conf", "a.conf"));
        assert!(!m("*.conf", "a.conf.bak"));
        assert!(m("[0-9]*", "10-x"));
        assert!(!m("[!0-9]*", "10-x"));
        assert!(m("a?c", "abc"));
        assert!(m("*a*b*", "xxaxxbxx"));
        assert!(!m("*a*b*", "xxbxxaxx"));
        assert!(m("[", "["));
        assert!(host_matches("*", ""));
        assert!(list_matches("a,b", "b"));
        assert!(!list_matches("*,!b", "b"));
        assert!(!list_matches("!b", "a"));
    }
}
