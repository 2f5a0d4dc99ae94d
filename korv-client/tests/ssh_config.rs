//! The client following an OpenSSH client configuration, against korv-server
//! on 127.0.0.1 and private OpenSSH `sshd`s as jump hosts: host aliases,
//! first-match-wins, `!` patterns, `Include`, one and two jump hosts from the
//! builder and from `ProxyJump`, host keys and refusals per hop, a hop that
//! never answers, the agent through `IdentityAgent`, and the blocking client.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use korv_client::{ClientConfig, Error, KorvClient, StatusCode};
use korv_server::routing::get;
use korv_server::{KorvServer, Request, ShutdownHandle};
use korv_testkit::keys::{KeyKind, keygen, known_hosts_line, public_key};
use korv_testkit::process::{KillOnDrop, spawn_announcing};
use korv_testkit::sshd::{Sshd, current_user};
use serde_json::{Value, json};
use tempfile::TempDir;

/// The bound on a connection attempt that must fail by itself sooner.
const DEAD_HOP_TIMEOUT: Duration = Duration::from_secs(1);

/// korv-server answering `/whoami` with the SSH user, plus one or two
/// `sshd`s as bastions, all trusting `id`; the files a config names.
struct World {
    dir: TempDir,
    korv_port: u16,
    korv_host_pub: String,
    shutdown: ShutdownHandle,
    bastions: Vec<Bastion>,
}

struct Bastion {
    sshd: Sshd,
    host_pub: String,
}

impl World {
    async fn start(bastions: &[&[&str]]) -> Option<World> {
        if !Sshd::installed() {
            eprintln!("skipped: sshd is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let host = keygen(dir.path(), "korv_host", KeyKind::Ed25519);
        let id = keygen(dir.path(), "id", KeyKind::Ed25519);
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, public_key(&id) + "\n").unwrap();
        let bound = KorvServer::new()
            .route(
                "/whoami",
                get(|r: Request| async move { json!({"user": r.client().user}) }),
            )
            .host_key_file(&host)
            .authorized_keys_file(&authorized)
            .listen("127.0.0.1:0".parse().unwrap())
            .bind()
            .await
            .unwrap();
        let korv_port = bound.local_addr().port();
        let shutdown = bound.shutdown_handle();
        tokio::spawn(bound.run());
        let mut started = Vec::new();
        for (index, extra) in bastions.iter().enumerate() {
            let own = dir.path().join(format!("b{}", index + 1));
            std::fs::create_dir_all(&own).unwrap();
            let host_key = keygen(&own, "host", KeyKind::Ed25519);
            let sshd = Sshd::start(&own, &host_key, &authorized, extra).unwrap();
            started.push(Bastion {
                sshd,
                host_pub: public_key(&host_key),
            });
        }
        Some(World {
            korv_host_pub: public_key(&host),
            dir,
            korv_port,
            shutdown,
            bastions: started,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// known_hosts with korv-server's key and every bastion's but `skip`.
    fn trust_all_but(&self, skip: Option<usize>) {
        let mut text = known_hosts_line(self.korv_port, &self.korv_host_pub);
        for (index, bastion) in self.bastions.iter().enumerate() {
            if Some(index + 1) != skip {
                text.push_str(&known_hosts_line(bastion.sshd.port(), &bastion.host_pub));
            }
        }
        std::fs::write(self.path("known_hosts"), text).unwrap();
    }

    /// A config with `first`, `korv` (korv-server as alice) and `b1`, `b2`…
    /// (the bastions as the current user), then `extra`, then the key `id`
    /// for every host but `lonely-*` ones, and known_hosts for all; written
    /// to `config`.
    fn config(&self, first: &str, extra: &str) -> PathBuf {
        let mut text = first.to_owned();
        text.push_str(&format!(
            "Host korv\n  HostName 127.0.0.1\n  Port {}\n  User alice\n",
            self.korv_port
        ));
        for (index, bastion) in self.bastions.iter().enumerate() {
            text.push_str(&format!(
                "Host b{}\n  HostName 127.0.0.1\n  Port {}\n  User {}\n",
                index + 1,
                bastion.sshd.port(),
                current_user()
            ));
        }
        text.push_str(extra);
        // Hosts named `lonely-*` get no shared identity.
        text.push_str(&format!(
            "Host * !lonely-*\n  IdentityFile {}\n\
             Host *\n  UserKnownHostsFile {}\n  IdentityAgent none\n  ConnectTimeout 20\n",
            self.path("id").display(),
            self.path("known_hosts").display()
        ));
        let path = self.path("config");
        write_config_file(&path, &text);
        path
    }

    async fn whoami(&self, config: ClientConfig) -> Result<Value, Error> {
        let client = KorvClient::connect(config).await?;
        let answer = client.get("/whoami").await?;
        assert_eq!(answer.code, StatusCode::OK, "{answer:?}");
        Ok(answer.body)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

/// Writes a configuration file that only its owner may write, as ssh (and
/// korv) require whatever the umask.
fn write_config_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// The jump host an error names, and the error it wraps.
fn hop_of(err: &Error) -> (&str, &Error) {
    match err {
        Error::JumpHost { host, source } => (host.as_str(), source.as_ref()),
        other => panic!("not a jump host error: {other}"),
    }
}

#[tokio::test]
async fn an_alias_with_host_name_port_user_and_identity_file() {
    let Some(world) = World::start(&[]).await else {
        return;
    };
    world.trust_all_but(None);
    let config = world.config("", "");
    let body = world
        .whoami(ClientConfig::new("korv").ssh_config(&config))
        .await
        .unwrap();
    assert_eq!(body, json!({"user": "alice"}));
    // Without the file, `korv` is no host name at all.
    let err = world
        .whoami(
            ClientConfig::new("korv")
                .ssh_config("none")
                .connect_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Connect { .. } | Error::ConnectTimeout { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn builder_calls_win_over_the_file() {
    let Some(world) = World::start(&[]).await else {
        return;
    };
    world.trust_all_but(None);
    let config = world.config("", "");
    let body = world
        .whoami(ClientConfig::new("korv").ssh_config(&config).user("bob"))
        .await
        .unwrap();
    assert_eq!(body, json!({"user": "bob"}));
    // An explicit port beats the file's: nothing listens on port 1.
    let err = world
        .whoami(ClientConfig::new("korv").ssh_config(&config).port(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn the_first_match_wins_and_a_negated_pattern_vetoes() {
    let Some(world) = World::start(&[]).await else {
        return;
    };
    world.trust_all_but(None);
    let first = format!(
        "Host api-* !api-staging\n  User first\n\
         Host api-prod\n  HostName 127.0.0.1\n  Port {}\n  User second\n\
         Host api-*\n  HostName 127.0.0.1\n  Port {}\n  User third\n",
        world.korv_port, world.korv_port
    );
    let config = world.config(&first, "");
    let prod = world
        .whoami(ClientConfig::new("api-prod").ssh_config(&config))
        .await
        .unwrap();
    assert_eq!(prod, json!({"user": "first"}));
    let staging = world
        .whoami(ClientConfig::new("api-staging").ssh_config(&config))
        .await
        .unwrap();
    assert_eq!(staging, json!({"user": "third"}));
}

#[tokio::test]
async fn an_include_with_a_glob() {
    let Some(world) = World::start(&[]).await else {
        return;
    };
    world.trust_all_but(None);
    let included = world.path("conf.d");
    std::fs::create_dir_all(&included).unwrap();
    write_config_file(
        &included.join("10-api.conf"),
        &format!(
            "Host included\n  HostName 127.0.0.1\n  Port {}\n  User from-include\n",
            world.korv_port
        ),
    );
    let config = world.config(&format!("Include {}/*.conf\n", included.display()), "");
    let body = world
        .whoami(ClientConfig::new("included").ssh_config(&config))
        .await
        .unwrap();
    assert_eq!(body, json!({"user": "from-include"}));
}

#[tokio::test]
async fn one_and_two_jump_hosts_from_the_builder() {
    let Some(world) = World::start(&[&[], &[]]).await else {
        return;
    };
    world.trust_all_but(None);
    let config = world.config("", "");
    for hops in ["b1", "b1,b2", "b2,b1"] {
        let body = world
            .whoami(ClientConfig::new("korv").ssh_config(&config).jump(hops))
            .await
            .unwrap_or_else(|err| panic!("{hops}: {err:#}"));
        assert_eq!(body, json!({"user": "alice"}), "{hops}");
    }
}

#[tokio::test]
async fn one_and_two_jump_hosts_from_proxy_jump() {
    let Some(world) = World::start(&[&[], &[]]).await else {
        return;
    };
    world.trust_all_but(None);
    let first = format!(
        "Host via-one\n  HostName 127.0.0.1\n  Port {port}\n  User alice\n  ProxyJump b1\n\
         Host via-two\n  HostName 127.0.0.1\n  Port {port}\n  User alice\n  ProxyJump b1,b2\n",
        port = world.korv_port
    );
    let config = world.config(&first, "");
    for alias in ["via-one", "via-two"] {
        let body = world
            .whoami(ClientConfig::new(alias).ssh_config(&config))
            .await
            .unwrap_or_else(|err| panic!("{alias}: {err:#}"));
        assert_eq!(body, json!({"user": "alice"}));
    }
    // `jump("none")` turns the configured ProxyJump off: korv-server is
    // still reachable directly.
    let body = world
        .whoami(
            ClientConfig::new("via-two")
                .ssh_config(&config)
                .jump("none"),
        )
        .await
        .unwrap();
    assert_eq!(body, json!({"user": "alice"}));
}

#[tokio::test]
async fn an_unknown_bastion_key_is_refused_naming_the_bastion() {
    let Some(world) = World::start(&[&[], &[]]).await else {
        return;
    };
    world.trust_all_but(Some(2));
    let config = world.config("", "");
    let err = world
        .whoami(ClientConfig::new("korv").ssh_config(&config).jump("b1,b2"))
        .await
        .unwrap_err();
    let (hop, cause) = hop_of(&err);
    assert_eq!(hop, "b2");
    let Error::HostKeyUnknown { host, .. } = cause else {
        panic!("{err:#}")
    };
    assert_eq!(
        host,
        &format!("[127.0.0.1]:{}", world.bastions[1].sshd.port())
    );
    assert!(err.to_string().contains("b2"), "{err}");
}

#[tokio::test]
async fn a_bastion_that_refuses_forwarding() {
    let Some(world) = World::start(&[&["AllowTcpForwarding no"]]).await else {
        return;
    };
    world.trust_all_but(None);
    let config = world.config("", "");
    let err = world
        .whoami(ClientConfig::new("korv").ssh_config(&config).jump("b1"))
        .await
        .unwrap_err();
    let (hop, cause) = hop_of(&err);
    assert_eq!(hop, "b1");
    assert!(matches!(cause, Error::Forward { .. }), "{err:#}");
    assert!(
        cause
            .to_string()
            .contains(&format!("127.0.0.1:{}", world.korv_port)),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_dead_second_hop_fails_within_its_own_timeout() {
    let Some(world) = World::start(&[&[]]).await else {
        return;
    };
    world.trust_all_but(None);
    // Accepted by the kernel's backlog, never answered: the SSH handshake
    // with it waits forever unless its timeout ends it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!(
        "Host dead\n  HostName 127.0.0.1\n  Port {}\n  ConnectTimeout {}\n",
        silent.local_addr().unwrap().port(),
        DEAD_HOP_TIMEOUT.as_secs()
    );
    let config = world.config(&dead, "");
    let started = Instant::now();
    let err = world
        .whoami(
            ClientConfig::new("korv")
                .ssh_config(&config)
                .jump("b1,dead"),
        )
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    let (hop, cause) = hop_of(&err);
    assert_eq!(hop, "dead");
    assert!(
        matches!(cause, Error::ConnectTimeout { limit, .. } if *limit == DEAD_HOP_TIMEOUT),
        "{err:#}"
    );
    assert!(elapsed >= DEAD_HOP_TIMEOUT, "{elapsed:?}");
    assert!(
        elapsed < DEAD_HOP_TIMEOUT + Duration::from_secs(15),
        "{elapsed:?}"
    );
}

/// `ssh-agent` in the foreground on a socket of its own, holding `keys`.
fn agent_with(dir: &Path, keys: &[&Path]) -> (KillOnDrop, PathBuf) {
    let socket = dir.join("agent.sock");
    // It prints `SSH_AUTH_SOCK=…` once its socket is bound.
    let (agent, _) = spawn_announcing(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stderr(Stdio::null()),
        "SSH_AUTH_SOCK=",
    )
    .unwrap();
    for key in keys {
        let added = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(added.success(), "ssh-add {}", key.display());
    }
    (agent, socket)
}

#[tokio::test]
async fn the_agent_named_by_identity_agent_authenticates() {
    let Some(world) = World::start(&[&[]]).await else {
        return;
    };
    world.trust_all_but(None);
    // The key lives only in the agent: the files name no identity.
    let id = world.path("id");
    let moved = world.path("agent_only");
    std::fs::rename(&id, &moved).unwrap();
    let (_agent, socket) = agent_with(world.dir.path(), &[&moved]);
    let first = format!(
        "Host korv b1\n  IdentityAgent {}\n  IdentityFile {}\n",
        socket.display(),
        world.path("absent").display()
    );
    let config = world.config(&first, "");
    let body = world
        .whoami(ClientConfig::new("korv").ssh_config(&config).jump("b1"))
        .await
        .unwrap();
    assert_eq!(body, json!({"user": "alice"}));
    // The same without the agent fails: the key was nowhere else.
    let none = world.config(
        &format!(
            "Host korv b1\n  IdentityFile {}\n",
            world.path("absent").display()
        ),
        "",
    );
    let err = world
        .whoami(ClientConfig::new("korv").ssh_config(&none))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::AuthRefused { .. } | Error::Identity { .. }),
        "{err:#}"
    );
}

#[test]
fn the_blocking_client_through_a_jump_host() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(world) = runtime.block_on(World::start(&[&[]])) else {
        return;
    };
    world.trust_all_but(None);
    let config = world.config("", "");
    let client = korv_client::blocking::KorvClient::connect(
        ClientConfig::new("korv").ssh_config(&config).jump("b1"),
    )
    .unwrap();
    for _ in 0..3 {
        let answer = client.get("/whoami").unwrap();
        assert_eq!(answer.body, json!({"user": "alice"}));
    }
    drop(client);
    drop(world);
}

#[tokio::test]
async fn accept_new_and_hashed_names_from_the_file_then_a_global_known_hosts() {
    let Some(world) = World::start(&[]).await else {
        return;
    };
    let learned = world.path("learned_hosts");
    let first = format!(
        "Host korv\n  UserKnownHostsFile {}\n  StrictHostKeyChecking accept-new\n  HashKnownHosts yes\n",
        learned.display()
    );
    let config = world.config(&first, "");
    let body = world
        .whoami(ClientConfig::new("korv").ssh_config(&config))
        .await
        .unwrap();
    assert_eq!(body, json!({"user": "alice"}));
    let text = std::fs::read_to_string(&learned).unwrap();
    assert!(text.trim_start().starts_with("|1|"), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
    // Recorded hashed, the key is found again under the strict policy.
    world
        .whoami(
            ClientConfig::new("korv")
                .ssh_config(&config)
                .host_key_policy(korv_client::HostKeyPolicy::Strict),
        )
        .await
        .unwrap();
    // A key only in the GlobalKnownHostsFile is trusted too.
    let global = world.path("global_hosts");
    std::fs::write(
        &global,
        known_hosts_line(world.korv_port, &world.korv_host_pub),
    )
    .unwrap();
    let first = format!(
        "Host korv\n  UserKnownHostsFile {}\n  GlobalKnownHostsFile {}\n",
        world.path("empty_hosts").display(),
        global.display()
    );
    let config = world.config(&first, "");
    world
        .whoami(ClientConfig::new("korv").ssh_config(&config))
        .await
        .unwrap();
}

#[tokio::test]
async fn identities_only_keeps_other_agent_keys_back() {
    let Some(world) = World::start(&[]).await else {
        return;
    };
    world.trust_all_but(None);
    // The agent holds the authorized key and another; the file lists only
    // the other one (its public half), so with IdentitiesOnly the agent may
    // not offer the authorized key.
    let other = keygen(world.dir.path(), "other", KeyKind::Ed25519);
    let id = world.path("id");
    let (_agent, socket) = agent_with(world.dir.path(), &[&other, &id]);
    std::fs::remove_file(&other).unwrap();
    let first = |only: &str| {
        format!(
            "Host lonely-korv\n  HostName 127.0.0.1\n  Port {}\n  User alice\n  IdentityAgent {}\n  IdentityFile {}\n  IdentitiesOnly {only}\n",
            world.korv_port,
            socket.display(),
            other.display()
        )
    };
    let config = world.config(&first("yes"), "");
    let err = world
        .whoami(ClientConfig::new("lonely-korv").ssh_config(&config))
        .await
        .unwrap_err();
    let Error::AuthRefused { tried, .. } = &err else {
        panic!("{err:#}")
    };
    assert_eq!(tried.len(), 1, "only the listed key was offered: {tried:?}");
    let config = world.config(&first("no"), "");
    let body = world
        .whoami(ClientConfig::new("lonely-korv").ssh_config(&config))
        .await
        .unwrap();
    assert_eq!(body, json!({"user": "alice"}));
}

#[tokio::test]
async fn a_certificate_file_authenticates_at_a_bastion_that_trusts_its_ca() {
    // The bastion knows no user key, only the CA that signs them.
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = keygen(ca_dir.path(), "user_ca", KeyKind::Ed25519);
    let Some(world) = World::start(&[&[&format!("TrustedUserCAKeys {}.pub", ca.display())]]).await
    else {
        return;
    };
    world.trust_all_but(None);
    let certified = keygen(world.dir.path(), "certified", KeyKind::Ed25519);
    let signed = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca)
        .args(["-I", "korv-test", "-n", &current_user(), "-V", "-5m:+1h"])
        .arg(format!("{}.pub", certified.display()))
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(signed.success());
    // Moved away from the name ssh-keygen gives it, so only CertificateFile finds it.
    let cert = world.path("bastion-cert.pub");
    std::fs::rename(format!("{}-cert.pub", certified.display()), &cert).unwrap();
    // The bastion's authorized_keys (the world's) lacks `certified`.
    let bastion = |cert_line: &str| {
        format!(
            "Host lonely-b1\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n{cert_line}",
            world.bastions[0].sshd.port(),
            current_user(),
            certified.display()
        )
    };
    let config = world.config(
        &bastion(&format!("  CertificateFile {}\n", cert.display())),
        "",
    );
    let body = world
        .whoami(
            ClientConfig::new("korv")
                .ssh_config(&config)
                .jump("lonely-b1"),
        )
        .await
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(body, json!({"user": "alice"}));
    // Without the certificate, the same key is refused there.
    let config = world.config(&bastion(""), "");
    let err = world
        .whoami(
            ClientConfig::new("korv")
                .ssh_config(&config)
                .jump("lonely-b1"),
        )
        .await
        .unwrap_err();
    let (hop, cause) = hop_of(&err);
    assert_eq!(hop, "lonely-b1");
    assert!(matches!(cause, Error::AuthRefused { .. }), "{err:#}");
}

#[tokio::test]
async fn a_proxy_command_carries_the_connection() {
    let Some(world) = World::start(&[&[]]).await else {
        return;
    };
    world.trust_all_but(None);
    let config_path = world.path("config");
    // OpenSSH's own client as the proxy, reading this same file for b1.
    let first = format!(
        "Host via-command\n  HostName 127.0.0.1\n  Port {}\n  User alice\n  \
         ProxyCommand ssh -F {} -o BatchMode=yes -W %h:%p b1\n\
         Host broken-command\n  HostName 127.0.0.1\n  Port {}\n  ProxyCommand exit 3\n",
        world.korv_port,
        config_path.display(),
        world.korv_port,
    );
    let config = world.config(&first, "");
    let body = world
        .whoami(ClientConfig::new("via-command").ssh_config(&config))
        .await
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(body, json!({"user": "alice"}));
    let err = world
        .whoami(ClientConfig::new("broken-command").ssh_config(&config))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Ssh { .. }), "{err:#}");
}
