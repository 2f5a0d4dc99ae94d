//! Where and how to connect: the connection options every client command
//! shares ([`ConnectArgs`]), where a RESOURCE points ([`Target`]), and the
//! client settings made of both, over the user's SSH configuration
//! (`~/.ssh/config`, or `-F FILE`): options given on the command line win
//! over it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use korv_client::ssh_config::JumpHost;
use korv_client::{ChannelKind, ClientConfig, HostKeyPolicy};

use crate::error_reporting::UsageError;

/// Where and how to connect.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectArgs {
    /// Server host (when RESOURCE is a path).
    #[arg(long, env = "KORV_HOST", default_value = "localhost")]
    pub(crate) host: String,
    /// Server port (default: the SSH configuration's Port, else 8022).
    #[arg(long, env = "KORV_PORT")]
    pub(crate) port: Option<u16>,
    /// SSH user (default: the SSH configuration's User, else the current user).
    #[arg(long, short = 'l')]
    pub(crate) user: Option<String>,
    /// A private key file; repeatable, tried before the SSH configuration's
    /// IdentityFile (default: ~/.ssh keys and the ssh-agent).
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    pub(crate) identities: Vec<PathBuf>,
    /// An OpenSSH user certificate to offer with its key; repeatable, tried
    /// before the SSH configuration's CertificateFile (default: `KEY-cert.pub`
    /// beside each key, and those in the ssh-agent).
    #[arg(long = "cert", value_name = "FILE")]
    pub(crate) certificates: Vec<PathBuf>,
    /// The known_hosts file (default: the SSH configuration's
    /// UserKnownHostsFile, else ~/.ssh/known_hosts).
    #[arg(long, value_name = "FILE")]
    pub(crate) known_hosts: Option<PathBuf>,
    /// Trust an unknown host key and record it (a changed key is still refused).
    #[arg(long)]
    pub(crate) accept_new: bool,
    /// Use the `korv` subsystem instead of a direct-tcpip channel.
    #[arg(long)]
    pub(crate) subsystem: bool,
    /// Seconds to wait for each connection and for the answer (default: the
    /// SSH configuration's ConnectTimeout, else 10, to connect; 30 for the
    /// answer).
    #[arg(long, value_name = "SECS")]
    pub(crate) timeout: Option<f64>,
    /// The OpenSSH client configuration to read, as `ssh -F`; `none` reads
    /// none (default: ~/.ssh/config, then /etc/ssh/ssh_config).
    #[arg(short = 'F', long = "ssh-config", value_name = "FILE")]
    pub(crate) ssh_config: Option<PathBuf>,
    /// Jump hosts to go through, as `ssh -J`: `[user@]host[:port][,...]`;
    /// `none` ignores the SSH configuration's ProxyJump.
    #[arg(short = 'J', long = "jump", value_name = "HOSTS", value_parser = jump_hosts)]
    pub(crate) jump: Option<String>,
}

/// Checks a `-J` list (it is handed on as written).
fn jump_hosts(spec: &str) -> Result<String, String> {
    JumpHost::parse_list(spec)?;
    Ok(spec.to_owned())
}

/// Host, port, optional user and path from RESOURCE and the options.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
    pub(crate) user: Option<String>,
    pub(crate) path: String,
}

impl ConnectArgs {
    /// Where `resource` (a path, or a `korv://[user@]host[:port]/path` URL)
    /// points; a path goes to `--host` and `--port`.
    pub(crate) fn target(&self, resource: &str) -> Result<Target, UsageError> {
        let Some(rest) = resource.strip_prefix("korv://") else {
            if !resource.starts_with('/') {
                return Err(UsageError(format!(
                    "RESOURCE {resource:?} must be a path starting with '/' or a korv://host/path URL"
                )));
            }
            return Ok(Target {
                host: self.host.clone(),
                port: self.port,
                user: self.user.clone(),
                path: resource.to_owned(),
            });
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        };
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((user, host)) => (Some(user.to_owned()), host),
            None => (self.user.clone(), authority),
        };
        let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| UsageError(format!("unclosed '[' in {resource:?}")))?;
            (host, after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        let port = match port {
            Some(port) => Some(
                port.parse()
                    .map_err(|_| UsageError(format!("bad port {port:?} in {resource:?}")))?,
            ),
            None => self.port,
        };
        if host.is_empty() {
            return Err(UsageError(format!("no host in {resource:?}")));
        }
        Ok(Target {
            host: host.to_owned(),
            port,
            user,
            path: path.to_owned(),
        })
    }

    /// The client settings for `target` with these options, over the SSH
    /// configuration.
    pub(crate) fn client_config(&self, target: &Target) -> ClientConfig {
        let mut config = ClientConfig::new(&target.host);
        config = match &self.ssh_config {
            Some(path) => config.ssh_config(path),
            None => config.user_ssh_config(),
        };
        if let Some(port) = target.port {
            config = config.port(port);
        }
        if let Some(timeout) = self.timeout {
            let timeout = Duration::from_secs_f64(timeout.max(0.001));
            config = config
                .connect_timeout(timeout)
                .request_timeout(Some(timeout));
        }
        if let Some(jump) = &self.jump {
            config = config.jump(jump);
        }
        if let Some(user) = &target.user {
            config = config.user(user);
        }
        for identity in &self.identities {
            config = config.identity_file(identity);
        }
        for certificate in &self.certificates {
            config = config.certificate_file(certificate);
        }
        if let Some(known_hosts) = &self.known_hosts {
            config = config.known_hosts(known_hosts);
        }
        if self.accept_new {
            config = config.host_key_policy(HostKeyPolicy::AcceptNew);
        }
        if self.subsystem {
            config = config.channel(ChannelKind::Subsystem);
        }
        config
    }
}

/// Prints on stderr the SSH servers on the way and what each uses: the
/// configuration lines that applied, the identities, the agent, the
/// known_hosts files (what `-v` adds, as `ssh -v` does in spirit).
pub(crate) fn show_route(config: &ClientConfig) {
    let route = match config.resolve_route() {
        Ok(route) => route,
        // Connecting reports the same error.
        Err(_) => return,
    };
    for host in route {
        let role = if host.jump { "jump host" } else { "server" };
        eprintln!(
            "korv: {role} {} at {} as {}",
            host.name, host.address, host.user
        );
        for line in &host.config_lines {
            eprintln!("korv:   {line}");
        }
        for identity in &host.identities {
            eprintln!("korv:   identity {}", identity.display());
        }
        for certificate in &host.certificates {
            eprintln!("korv:   certificate {}", certificate.display());
        }
        if let Some(command) = &host.proxy_command {
            eprintln!("korv:   proxy command {command}");
        }
        if let Some(agent) = &host.agent {
            eprintln!("korv:   agent {}", agent.display());
        }
        let known_hosts: Vec<String> = host
            .known_hosts
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        eprintln!(
            "korv:   known_hosts {} ({:?}), connect timeout {:?}",
            known_hosts.join(" "),
            host.policy,
            host.connect_timeout
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Options {
        #[command(flatten)]
        connect: ConnectArgs,
    }

    fn defaults() -> ConnectArgs {
        Options::try_parse_from(["korv"]).unwrap().connect
    }

    #[test]
    fn paths_use_the_host_options_and_urls_carry_their_own() {
        let c = defaults();
        assert_eq!(
            c.target("/a").unwrap(),
            Target {
                host: "localhost".into(),
                port: None,
                user: None,
                path: "/a".into()
            }
        );
        assert_eq!(
            c.target("korv://bob@example.com:9000/x/y").unwrap(),
            Target {
                host: "example.com".into(),
                port: Some(9000),
                user: Some("bob".into()),
                path: "/x/y".into()
            }
        );
        assert_eq!(c.target("korv://[::1]:7/z").unwrap().host, "::1");
        assert_eq!(c.target("korv://h").unwrap().path, "/");
        assert!(c.target("notes").is_err());
        assert!(c.target("korv://h:x/a").is_err());
    }
}
