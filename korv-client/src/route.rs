//! The route to a host: the jump hosts in the order they are connected,
//! each with its own settings from the SSH configuration, then the host.
//!
//! `ProxyJump a,b` (or `-J a,b`) for `target` means what it means to ssh:
//! `target` is reached through `b`, `b` is reached through `a` (the explicit
//! list wins over `b`'s own `ProxyJump`), and `a` is reached the way its own
//! configuration says, through its `ProxyJump` or `ProxyCommand` if it has
//! one. The `user@` and `:port` of a hop win over its configuration, as the
//! command line does.

use crate::ssh_config::{self, ConfigError, Context, Files, Given, HostSettings, JumpHost, Origin};

/// A jump host's port, when neither its spec nor the configuration names one.
pub(crate) const SSH_PORT: u16 = 22;

/// Routes longer than this are refused: a `ProxyJump` that leads back to a
/// host already on the way would otherwise never end.
pub(crate) const MAX_HOPS: usize = 16;

/// One host on the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stop {
    /// The settings that apply to it (the jump spec's user and port seeded).
    pub(crate) settings: HostSettings,
    /// Whether it is a jump host (port 22 by default) or the target.
    pub(crate) jump: bool,
    /// The `ProxyCommand` that carries its connection, when no jump host
    /// does (only ever the first stop).
    pub(crate) proxy_command: Option<String>,
}

/// Plans the route to `target`: jump hosts first, the target last.
/// `jumps` is an explicit list (`-J`, [`ClientConfig::jump`]); `None` lets
/// the configuration's `ProxyJump` decide, and an empty list means none.
///
/// [`ClientConfig::jump`]: crate::ClientConfig
pub(crate) fn plan(
    files: &Files,
    context: &Context,
    target: &str,
    given: &Given<'_>,
    target_port: u16,
    jumps: Option<&[JumpHost]>,
) -> Result<Vec<Stop>, ConfigError> {
    let mut route = Vec::new();
    let mut planner = Planner {
        files,
        context,
        target,
        route: &mut route,
        on_the_way: Vec::new(),
        why: Origin::CommandLine,
    };
    planner.reach(target, given, target_port, false, jumps)?;
    Ok(route)
}

struct Planner<'a> {
    files: &'a Files,
    context: &'a Context,
    target: &'a str,
    route: &'a mut Vec<Stop>,
    /// The hosts whose routes are being planned, the target first.
    on_the_way: Vec<String>,
    /// Where the jump host list being followed comes from.
    why: Origin,
}

impl Planner<'_> {
    /// Appends the stops that reach `host`, then `host` itself.
    fn reach(
        &mut self,
        host: &str,
        given: &Given<'_>,
        default_port: u16,
        jump: bool,
        jumps: Option<&[JumpHost]>,
    ) -> Result<(), ConfigError> {
        if self.on_the_way.len() > MAX_HOPS {
            let path = self
                .on_the_way
                .iter()
                .map(String::as_str)
                .chain([host])
                .collect::<Vec<_>>()
                .join(" <- ");
            return Err(ConfigError {
                origin: self.why.clone(),
                message: format!(
                    "the route to {} needs more than {MAX_HOPS} jump hosts: does a ProxyJump lead back to a host already on the way? {path}",
                    self.target
                ),
            });
        }
        let settings = ssh_config::resolve(self.files, host, given, default_port, self.context)?;
        let jumps_given = jumps.is_some();
        let configured;
        let (jumps, why) = match (jumps, &settings.proxy_jump) {
            (Some(jumps), _) => (jumps, Origin::CommandLine),
            (None, Some(setting)) => {
                configured = setting.value.clone();
                (configured.as_slice(), setting.origin.clone())
            }
            (None, None) => (&[][..], Origin::CommandLine),
        };
        if let Some((last, before)) = jumps.split_last() {
            let before = if before.is_empty() {
                None
            } else {
                Some(before)
            };
            let hop = Given {
                user: last.user.as_deref(),
                port: last.port,
            };
            self.on_the_way.push(host.to_owned());
            let outer = std::mem::replace(&mut self.why, why);
            self.reach(&last.host, &hop, SSH_PORT, true, before)?;
            self.why = outer;
            self.on_the_way.pop();
        }
        let proxy_command = match jumps_given {
            // An explicit list, even `none`, takes ProxyCommand's place.
            true => None,
            false => settings
                .proxy_command
                .as_ref()
                .and_then(|setting| setting.value.clone()),
        };
        self.route.push(Stop {
            settings,
            jump,
            proxy_command,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Owner-only, as configuration files must be whatever the umask.
    fn private(path: &std::path::Path) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = path;
    }

    fn context(dir: &std::path::Path) -> Context {
        Context {
            home: dir.to_owned(),
            local_user: "me".into(),
            local_host: "desk".into(),
            system_dir: dir.join("etc"),
            env: HashMap::new(),
        }
    }

    fn route(config: &str, target: &str, jumps: Option<&str>) -> Result<Vec<String>, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, config).unwrap();
        private(&path);
        let jumps = jumps.map(|spec| JumpHost::parse_list(spec).unwrap());
        let stops = plan(
            &Files::Path(path),
            &context(dir.path()),
            target,
            &Given::default(),
            8022,
            jumps.as_deref(),
        )?;
        Ok(stops
            .iter()
            .map(|stop| {
                let s = &stop.settings;
                let mut shown = s.alias.clone();
                if let Some(user) = &s.user {
                    shown = format!("{}@{shown}", user.value);
                }
                if let Some(port) = &s.port {
                    shown = format!("{shown}:{}", port.value);
                }
                if stop.jump {
                    shown = format!("jump {shown}");
                }
                shown
            })
            .collect())
    }

    #[test]
    fn no_jump() {
        assert_eq!(route("", "t", None).unwrap(), ["t"]);
    }

    #[test]
    fn one_and_two_jumps_from_the_flag() {
        assert_eq!(route("", "t", Some("b")).unwrap(), ["jump b", "t"]);
        assert_eq!(
            route("", "t", Some("u@b1:2,b2")).unwrap(),
            ["jump u@b1:2", "jump b2", "t"]
        );
    }

    #[test]
    fn jumps_from_the_config_and_the_hop_s_own_settings() {
        let config = "Host t\n  ProxyJump b1,b2\nHost b2\n  User two\n  Port 2222\n";
        assert_eq!(
            route(config, "t", None).unwrap(),
            ["jump b1", "jump two@b2:2222", "t"]
        );
    }

    #[test]
    fn the_spec_s_user_and_port_win_over_the_hop_s_config() {
        let config = "Host b\n  User cfg\n  Port 1\n";
        assert_eq!(
            route(config, "t", Some("flag@b:9")).unwrap(),
            ["jump flag@b:9", "t"]
        );
    }

    #[test]
    fn the_flag_wins_over_the_config_and_none_disables_it() {
        let config = "Host t\n  ProxyJump cfg\n";
        assert_eq!(
            route(config, "t", Some("flag")).unwrap(),
            ["jump flag", "t"]
        );
        assert_eq!(route(config, "t", Some("none")).unwrap(), ["t"]);
    }

    #[test]
    fn a_hop_reached_through_its_own_proxy_jump() {
        let config = "Host inner\n  ProxyJump outer\n";
        assert_eq!(
            route(config, "t", Some("inner")).unwrap(),
            ["jump outer", "jump inner", "t"]
        );
        // In an explicit list, the hop before wins over a hop's ProxyJump.
        assert_eq!(
            route(config, "t", Some("first,inner")).unwrap(),
            ["jump first", "jump inner", "t"]
        );
    }

    #[test]
    fn a_loop_is_refused_with_the_path() {
        let config = "Host *.corp\n  ProxyJump bastion.corp\n";
        let err = route(config, "db.corp", None).unwrap_err();
        assert!(
            err.message
                .contains("? db.corp <- bastion.corp <- bastion.corp"),
            "{err}"
        );
        assert!(
            err.to_string().contains(":2: the route to db.corp"),
            "{err}"
        );
        let fixed = "Host *.corp !bastion.corp\n  ProxyJump bastion.corp\n";
        assert_eq!(
            route(fixed, "db.corp", None).unwrap(),
            ["jump bastion.corp", "db.corp"]
        );
    }

    #[test]
    fn proxy_command_for_the_first_stop_unless_a_list_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "Host t b\n  ProxyCommand ssh -W %h:%p gate\nHost pj\n  ProxyJump b\n  ProxyCommand never\n",
        )
        .unwrap();
        private(&path);
        let plan_for = |target: &str, jumps: Option<&str>| {
            let jumps = jumps.map(|spec| JumpHost::parse_list(spec).unwrap());
            plan(
                &Files::Path(path.clone()),
                &context(dir.path()),
                target,
                &Given::default(),
                8022,
                jumps.as_deref(),
            )
            .unwrap()
            .into_iter()
            .map(|stop| (stop.settings.alias, stop.proxy_command))
            .collect::<Vec<_>>()
        };
        assert_eq!(
            plan_for("t", None),
            [("t".to_owned(), Some("ssh -W t:8022 gate".to_owned()))]
        );
        assert_eq!(plan_for("t", Some("none")), [("t".to_owned(), None)]);
        assert_eq!(
            plan_for("pj", None),
            [
                ("b".to_owned(), Some("ssh -W b:22 gate".to_owned())),
                ("pj".to_owned(), None)
            ],
            "ProxyJump came first for pj; b is reached by its ProxyCommand"
        );
    }

    #[test]
    fn config_errors_pass_through() {
        let err = route("Host b\n  Port x\n", "t", Some("b")).unwrap_err();
        assert!(err.message.contains("invalid port"), "{err}");
    }
}
