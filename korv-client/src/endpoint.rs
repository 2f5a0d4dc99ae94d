//! What it takes to reach one SSH server on the route: the settings of the
//! [`ClientConfig`] and of the SSH configuration, merged with the explicit
//! ones first.
//!
//! The builder's settings describe the connection to the Korv server, and
//! win over the configuration there. Jump hosts take their settings from
//! the configuration and their `user@host:port` spec, except four that,
//! when set on the builder, hold for the whole route: the known_hosts file,
//! the host key policy, the agent and the passphrase.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ClientConfig, HostKeyPolicy};
use crate::error::Error;
use crate::route::{self, SSH_PORT, Stop};
use crate::ssh_config::{
    ConfigError, Context, Given, HostSettings, JumpHost, Origin, StrictHostKeyChecking,
};

/// Korv's port, when neither the builder nor the configuration names one.
pub(crate) const KORV_PORT: u16 = 8022;
/// The connect timeout when none is set.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `ServerAliveCountMax`'s default.
const ALIVE_COUNT_MAX: u32 = 3;

/// One SSH server on the route, resolved.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The name asked for (an alias, or the host itself): what errors name.
    pub(crate) name: String,
    /// A jump host, not the Korv server.
    pub(crate) jump: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) identities: Vec<PathBuf>,
    pub(crate) certificates: Vec<PathBuf>,
    pub(crate) identities_only: bool,
    pub(crate) passphrase: Option<String>,
    pub(crate) agent: Option<PathBuf>,
    /// Checked in order; new keys are recorded in the first.
    pub(crate) known_hosts: Vec<PathBuf>,
    /// Checked after `known_hosts`; never written.
    pub(crate) global_known_hosts: Vec<PathBuf>,
    pub(crate) policy: HostKeyPolicy,
    pub(crate) hash_known_hosts: bool,
    pub(crate) connect_timeout: Duration,
    /// `ServerAliveInterval` and `ServerAliveCountMax`.
    pub(crate) keepalive: Option<(Duration, u32)>,
    /// A command whose standard input and output carry the connection.
    pub(crate) proxy_command: Option<String>,
    /// The settings as resolved, for `-v`.
    pub(crate) settings: HostSettings,
}

impl Endpoint {
    /// `host:port`, as errors show it.
    pub(crate) fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One SSH server on the way to the Korv server, as the settings and the SSH
/// configuration resolve it: what `korv -v` shows.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResolvedHost {
    /// The name asked for (an alias, or the host itself).
    pub name: String,
    /// Whether it is a jump host (else the Korv server).
    pub jump: bool,
    /// `host:port` connected to.
    pub address: String,
    /// The SSH user.
    pub user: String,
    /// The identity files offered, in order.
    pub identities: Vec<PathBuf>,
    /// The certificate files offered with their keys.
    pub certificates: Vec<PathBuf>,
    /// The ssh-agent socket, if one is used.
    pub agent: Option<PathBuf>,
    /// The known_hosts files read (new keys go to the first).
    pub known_hosts: Vec<PathBuf>,
    /// The host key policy.
    pub policy: HostKeyPolicy,
    /// The connect timeout.
    pub connect_timeout: Duration,
    /// The `ProxyCommand` that carries the connection, if any.
    pub proxy_command: Option<String>,
    /// Each setting taken from a configuration file, as `file:line: Keyword value`.
    pub config_lines: Vec<String>,
}

impl ClientConfig {
    /// The SSH servers the connection will go through, jump hosts first and
    /// the Korv server last, with the settings each gets (the configuration
    /// files are read now; [`KorvClient::connect`](crate::KorvClient::connect)
    /// reads them again).
    ///
    /// # Errors
    /// [`Error::Config`]: a malformed or unreadable SSH configuration or jump
    /// host list.
    pub fn resolve_route(&self) -> Result<Vec<ResolvedHost>, Error> {
        Ok(route(self)?
            .into_iter()
            .map(|endpoint| ResolvedHost {
                address: endpoint.addr(),
                name: endpoint.name,
                jump: endpoint.jump,
                user: endpoint.user,
                identities: endpoint.identities,
                certificates: endpoint.certificates,
                agent: endpoint.agent,
                known_hosts: endpoint
                    .known_hosts
                    .into_iter()
                    .chain(endpoint.global_known_hosts)
                    .collect(),
                policy: endpoint.policy,
                connect_timeout: endpoint.connect_timeout,
                proxy_command: endpoint.proxy_command,
                config_lines: endpoint.settings.describe(),
            })
            .collect())
    }
}

/// The route to the Korv server: jump hosts in connection order, the server
/// last.
pub(crate) fn route(config: &ClientConfig) -> Result<Vec<Endpoint>, Error> {
    route_in(config, &Context::from_environment())
}

/// [`route`] with the home directory, user and environment of `context`.
fn route_in(config: &ClientConfig, context: &Context) -> Result<Vec<Endpoint>, Error> {
    let jumps = match &config.jumps {
        Some(spec) => Some(JumpHost::parse_list(spec).map_err(|message| {
            Error::Config(ConfigError {
                origin: Origin::CommandLine,
                message,
            })
        })?),
        None => None,
    };
    let given = Given {
        user: config.user.as_deref(),
        port: config.port,
    };
    let stops = route::plan(
        &config.ssh_config,
        context,
        &config.host,
        &given,
        KORV_PORT,
        jumps.as_deref(),
    )
    .map_err(Error::Config)?;
    Ok(stops
        .into_iter()
        .map(|stop| endpoint(config, stop, context))
        .collect())
}

fn endpoint(config: &ClientConfig, stop: Stop, context: &Context) -> Endpoint {
    let Stop {
        settings,
        jump,
        proxy_command,
    } = stop;
    let home = &context.home;
    let name = settings.alias.clone();
    let host = settings
        .host_name
        .as_ref()
        .map_or_else(|| name.clone(), |s| s.value.clone());
    let port = settings
        .port
        .as_ref()
        .map_or(if jump { SSH_PORT } else { KORV_PORT }, |s| s.value);
    let user = settings
        .user
        .as_ref()
        .map_or_else(|| context.local_user.clone(), |s| s.value.clone());
    // Explicit identity files come first, as `ssh -i` does; the defaults
    // only when neither names any.
    let mut identities: Vec<PathBuf> = if jump {
        Vec::new()
    } else {
        config.identities.clone()
    };
    for file in &settings.identity_files {
        if !identities.contains(&file.value) {
            identities.push(file.value.clone());
        }
    }
    if identities.is_empty() && config.default_identities {
        identities = ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|name| home.join(".ssh").join(name))
            .filter(|path| path.exists())
            .collect();
    }
    // Named certificates: the builder's (for the server), then the
    // configuration's that exist (ssh skips a missing CertificateFile).
    let mut certificates: Vec<PathBuf> = if jump {
        Vec::new()
    } else {
        config.certificates.clone()
    };
    for file in &settings.certificate_files {
        if file.value.exists() && !certificates.contains(&file.value) {
            certificates.push(file.value.clone());
        }
    }
    let agent = if config.use_agent == Some(false) {
        None
    } else if let Some(socket) = &config.agent_socket {
        Some(socket.clone())
    } else if let Some(setting) = &settings.identity_agent {
        setting.value.clone()
    } else {
        context.env.get("SSH_AUTH_SOCK").map(PathBuf::from)
    };
    let known_hosts = match (&config.known_hosts, &settings.user_known_hosts) {
        (Some(path), _) => vec![path.clone()],
        (None, Some(setting)) => setting.value.clone(),
        (None, None) => vec![home.join(".ssh").join("known_hosts")],
    };
    let global_known_hosts = match &settings.global_known_hosts {
        Some(setting) => setting.value.clone(),
        None => vec![
            PathBuf::from("/etc/ssh/ssh_known_hosts"),
            PathBuf::from("/etc/ssh/ssh_known_hosts2"),
        ],
    };
    let policy = config.policy.unwrap_or(
        match settings.strict_host_key_checking.as_ref().map(|s| s.value) {
            // `no` records unknown keys like accept-new; a changed key is
            // still refused, where ssh would go on with restrictions.
            Some(StrictHostKeyChecking::AcceptNew | StrictHostKeyChecking::No) => {
                HostKeyPolicy::AcceptNew
            }
            Some(StrictHostKeyChecking::Yes | StrictHostKeyChecking::Ask) | None => {
                HostKeyPolicy::Strict
            }
        },
    );
    let connect_timeout = config.connect_timeout.unwrap_or_else(|| {
        settings
            .connect_timeout
            .as_ref()
            .map(|s| s.value)
            .filter(|limit| !limit.is_zero())
            .unwrap_or(CONNECT_TIMEOUT)
    });
    let keepalive = settings
        .server_alive_interval
        .as_ref()
        .map(|s| s.value)
        .filter(|interval| !interval.is_zero())
        .map(|interval| {
            let count = settings
                .server_alive_count_max
                .as_ref()
                .map_or(ALIVE_COUNT_MAX, |s| s.value);
            (interval, count)
        });
    Endpoint {
        name,
        jump,
        host,
        port,
        user,
        identities,
        certificates,
        identities_only: settings.identities_only.as_ref().is_some_and(|s| s.value),
        passphrase: config.passphrase.clone(),
        agent,
        known_hosts,
        global_known_hosts,
        policy,
        hash_known_hosts: settings.hash_known_hosts.as_ref().is_some_and(|s| s.value),
        connect_timeout,
        keepalive,
        proxy_command,
        settings,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        context: Context,
    }

    impl Fixture {
        fn new(env: &[(&str, &str)]) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let home = dir.path().join("home");
            std::fs::create_dir_all(home.join(".ssh")).unwrap();
            let context = Context {
                home,
                local_user: "me".into(),
                local_host: "desk".into(),
                system_dir: dir.path().join("etc"),
                env: env
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<HashMap<_, _>>(),
            };
            Fixture { dir, context }
        }

        fn config(&self, text: &str) -> PathBuf {
            let path = self.dir.path().join("config");
            std::fs::write(&path, text).unwrap();
            #[cfg(unix)]
            {
                // Owner-only, as configuration files must be whatever the umask.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            path
        }

        fn route(&self, config: &ClientConfig) -> Vec<Endpoint> {
            route_in(config, &self.context).unwrap()
        }

        fn home(&self) -> &Path {
            &self.context.home
        }
    }

    #[test]
    fn without_a_configuration_the_defaults_hold() {
        let f = Fixture::new(&[]);
        let route = f.route(&ClientConfig::new("api.example.com"));
        let [server] = route.as_slice() else {
            panic!("{route:?}")
        };
        assert!(!server.jump);
        assert_eq!(server.addr(), "api.example.com:8022");
        assert_eq!(server.user, "me");
        assert!(server.identities.is_empty(), "no default key exists");
        assert_eq!(server.agent, None, "SSH_AUTH_SOCK is not set");
        assert_eq!(server.known_hosts, [f.home().join(".ssh/known_hosts")]);
        assert_eq!(server.global_known_hosts.len(), 2);
        assert_eq!(server.policy, HostKeyPolicy::Strict);
        assert_eq!(server.connect_timeout, CONNECT_TIMEOUT);
        assert_eq!(server.keepalive, None);
    }

    #[test]
    fn the_default_keys_and_the_agent_of_the_environment() {
        let f = Fixture::new(&[("SSH_AUTH_SOCK", "/run/agent")]);
        std::fs::write(f.home().join(".ssh/id_ecdsa"), "").unwrap();
        let route = f.route(&ClientConfig::new("h"));
        assert_eq!(route[0].identities, [f.home().join(".ssh/id_ecdsa")]);
        assert_eq!(route[0].agent, Some(PathBuf::from("/run/agent")));
        let route = f.route(
            &ClientConfig::new("h")
                .default_identities(false)
                .use_agent(false),
        );
        assert!(route[0].identities.is_empty());
        assert_eq!(route[0].agent, None);
    }

    #[test]
    fn the_configuration_applies_and_the_builder_wins() {
        let f = Fixture::new(&[("SSH_AUTH_SOCK", "/run/agent")]);
        let file = f.config(
            "Host api\n  HostName 10.1.2.3\n  Port 9000\n  User deploy\n  IdentityFile /keys/api\n\
             \x20 IdentityAgent /run/api-agent\n  UserKnownHostsFile /kh/api\n\
             \x20 StrictHostKeyChecking accept-new\n  HashKnownHosts yes\n  ConnectTimeout 3\n\
             \x20 ServerAliveInterval 15\n  ServerAliveCountMax 2\n  IdentitiesOnly yes\n\
             \x20 CertificateFile /keys/api-cert.pub\n",
        );
        let from_file = f.route(&ClientConfig::new("api").ssh_config(&file));
        let server = &from_file[0];
        assert_eq!(server.name, "api");
        assert_eq!(server.addr(), "10.1.2.3:9000");
        assert_eq!(server.user, "deploy");
        assert_eq!(server.identities, [PathBuf::from("/keys/api")]);
        assert!(
            server.certificates.is_empty(),
            "a missing CertificateFile is skipped"
        );
        assert!(server.identities_only);
        assert_eq!(server.agent, Some(PathBuf::from("/run/api-agent")));
        assert_eq!(server.known_hosts, [PathBuf::from("/kh/api")]);
        assert_eq!(server.policy, HostKeyPolicy::AcceptNew);
        assert!(server.hash_known_hosts);
        assert_eq!(server.connect_timeout, Duration::from_secs(3));
        assert_eq!(server.keepalive, Some((Duration::from_secs(15), 2)));
        assert!(!server.settings.describe().is_empty());

        let built = f.route(
            &ClientConfig::new("api")
                .ssh_config(&file)
                .port(1)
                .user("root")
                .identity_file("/keys/mine")
                .agent_socket("/run/mine")
                .known_hosts("/kh/mine")
                .host_key_policy(HostKeyPolicy::Strict)
                .connect_timeout(Duration::from_secs(1)),
        );
        let server = &built[0];
        assert_eq!(server.addr(), "10.1.2.3:1");
        assert_eq!(server.user, "root");
        assert_eq!(
            server.identities,
            [PathBuf::from("/keys/mine"), PathBuf::from("/keys/api")],
            "explicit identities first, then the file's"
        );
        assert_eq!(server.agent, Some(PathBuf::from("/run/mine")));
        assert_eq!(server.known_hosts, [PathBuf::from("/kh/mine")]);
        assert_eq!(server.policy, HostKeyPolicy::Strict);
        assert_eq!(server.connect_timeout, Duration::from_secs(1));
    }

    #[test]
    fn certificates_named_by_the_builder_then_the_file() {
        let f = Fixture::new(&[]);
        let cert = f.home().join("api-cert.pub");
        std::fs::write(&cert, "").unwrap();
        let file = f.config(&format!(
            "CertificateFile {}\nCertificateFile /missing-cert.pub\n",
            cert.display()
        ));
        let route = f.route(
            &ClientConfig::new("h")
                .ssh_config(&file)
                .certificate_file("/mine-cert.pub")
                .jump("b"),
        );
        assert_eq!(
            route[0].certificates.as_slice(),
            std::slice::from_ref(&cert),
            "a hop: the file's only"
        );
        assert_eq!(
            route[1].certificates,
            [PathBuf::from("/mine-cert.pub"), cert]
        );
    }

    #[test]
    fn strict_host_key_checking_maps_to_a_policy() {
        let f = Fixture::new(&[]);
        for (value, policy) in [
            ("yes", HostKeyPolicy::Strict),
            ("ask", HostKeyPolicy::Strict),
            ("accept-new", HostKeyPolicy::AcceptNew),
            ("no", HostKeyPolicy::AcceptNew),
        ] {
            let file = f.config(&format!("StrictHostKeyChecking {value}\n"));
            let route = f.route(&ClientConfig::new("h").ssh_config(&file));
            assert_eq!(route[0].policy, policy, "{value}");
        }
    }

    #[test]
    fn agent_none_and_a_zero_timeout() {
        let f = Fixture::new(&[("SSH_AUTH_SOCK", "/run/agent")]);
        let file = f.config("IdentityAgent none\nConnectTimeout 0\nServerAliveInterval 0\n");
        let route = f.route(&ClientConfig::new("h").ssh_config(&file));
        assert_eq!(route[0].agent, None);
        assert_eq!(route[0].connect_timeout, CONNECT_TIMEOUT);
        assert_eq!(route[0].keepalive, None);
    }

    #[test]
    fn jump_hosts_take_their_own_settings_and_the_route_wide_ones() {
        let f = Fixture::new(&[]);
        let file = f.config(
            "Host bastion\n  HostName 192.0.2.1\n  User ops\n  IdentityFile /keys/ops\n  ConnectTimeout 2\n",
        );
        let route = f.route(
            &ClientConfig::new("10.0.0.9")
                .ssh_config(&file)
                .jump("bastion,admin@inner:2222")
                .identity_file("/keys/server")
                .known_hosts("/kh/all")
                .host_key_policy(HostKeyPolicy::AcceptNew),
        );
        let [bastion, inner, server] = route.as_slice() else {
            panic!("{route:?}")
        };
        assert!(bastion.jump && inner.jump && !server.jump);
        assert_eq!(bastion.addr(), "192.0.2.1:22");
        assert_eq!(bastion.user, "ops");
        assert_eq!(bastion.identities, [PathBuf::from("/keys/ops")]);
        assert_eq!(bastion.connect_timeout, Duration::from_secs(2));
        assert_eq!(inner.addr(), "inner:2222");
        assert_eq!(inner.user, "admin");
        assert!(
            inner.identities.is_empty(),
            "the server's identity is not a hop's"
        );
        for hop in [bastion, inner] {
            assert_eq!(hop.known_hosts, [PathBuf::from("/kh/all")]);
            assert_eq!(hop.policy, HostKeyPolicy::AcceptNew);
        }
        assert_eq!(server.addr(), "10.0.0.9:8022");
        assert_eq!(server.identities, [PathBuf::from("/keys/server")]);
    }

    #[test]
    fn jump_lists_append_and_none_resets() {
        let config = ClientConfig::new("h").jump("a").jump("b,c");
        assert_eq!(config.jumps.as_deref(), Some("a,b,c"));
        let config = config.jump("none");
        assert_eq!(config.jumps.as_deref(), Some("none"));
        let config = config.jump("d");
        assert_eq!(config.jumps.as_deref(), Some("d"));
    }

    #[test]
    fn a_malformed_jump_list_is_a_config_error() {
        let f = Fixture::new(&[]);
        let err = route_in(&ClientConfig::new("h").jump("u@"), &f.context).unwrap_err();
        let Error::Config(config) = &err else {
            panic!("{err}")
        };
        assert_eq!(config.origin, Origin::CommandLine);
        assert!(config.message.contains("empty host"), "{err:?}");
    }

    #[test]
    fn the_resolved_route_is_public() {
        let f = Fixture::new(&[]);
        let file = f.config("Host h\n  HostName 127.0.0.1\n");
        let route = ClientConfig::new("h")
            .ssh_config(&file)
            .jump("b")
            .resolve_route()
            .unwrap();
        assert_eq!(route.len(), 2);
        assert!(route[0].jump);
        assert_eq!(route[1].address, "127.0.0.1:8022");
        assert_eq!(route[1].config_lines.len(), 1);
        assert!(route[1].config_lines[0].ends_with(":2: HostName 127.0.0.1"));
    }
}
