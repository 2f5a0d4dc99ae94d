//! `korv completions SHELL` and `korv man`: shell completions and the man
//! page, generated from the same argument definitions that parse the command
//! line (the caller hands over that `clap::Command`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use clap_complete::Shell;
use clap_mangen::Man;

/// The arguments of `korv completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    pub(crate) shell: Shell,
}

/// The arguments of `korv man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Write korv.1 and one page per subcommand (korv-get.1 and so on) into this
    /// directory instead of the whole manual on stdout.
    #[arg(long, value_name = "DIR")]
    pub(crate) out_dir: Option<PathBuf>,
}

/// Writes the completion script for `args.shell` to stdout.
pub(crate) fn completions(
    mut command: clap::Command,
    args: &CompletionsArgs,
) -> anyhow::Result<ExitCode> {
    // Generated in memory first: the generator panics on a write error (a
    // closed pipe), where this reports it.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "korv", &mut script);
    write_out(&script).context("cannot write the completions")?;
    Ok(ExitCode::SUCCESS)
}

/// Writes korv(1) with every subcommand to stdout, or one page per command
/// into `args.out_dir`.
pub(crate) fn man(command: clap::Command, args: &ManArgs) -> anyhow::Result<ExitCode> {
    match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
        }
        None => {
            let page = manual(command).context("cannot render the man page")?;
            write_out(&page).context("cannot write the man page")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_out(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// What the generated sections cannot say: the SSH configuration and the
/// exit status (roff).
const MORE: &str = r#".SH "SSH CONFIGURATION"
korv reads OpenSSH's client configuration as ssh does: ~/.ssh/config, then /etc/ssh/ssh_config, or only the file named by \fB\-F\fR (\fB\-F none\fR reads none). A host in a korv:// URL or \fB\-\-host\fR may be an alias; HostName, Port, User, IdentityFile, CertificateFile, IdentitiesOnly, IdentityAgent, UserKnownHostsFile, GlobalKnownHostsFile, StrictHostKeyChecking, HashKnownHosts, ProxyJump, ProxyCommand, ConnectTimeout, ServerAliveInterval and ServerAliveCountMax apply, with Host and Match blocks, Include, %\-tokens and ~ as ssh_config(5) describes. Options on the command line win; the port stays 8022 when the file names none. \fB\-J\fR and ProxyJump go through jump hosts (OpenSSH servers that forward TCP), each with its own configuration. \fB\-v\fR shows the configuration lines and identities used.
.SH "EXIT STATUS"
0 for a 2xx answer; 3, 4 or 5 for a 3xx, 4xx or 5xx answer; 1 when no answer came (connection, host key, authentication); 2 for a usage error.
.SH "SEE ALSO"
ssh(1), ssh_config(5), sshd(8)
"#;

/// korv(1): the command's sections, then each subcommand's synopsis and
/// options under its own heading, then [`MORE`].
fn manual(command: clap::Command) -> std::io::Result<Vec<u8>> {
    let mut command = command;
    command.build();
    let top = Man::new(command.clone());
    let mut page = Vec::new();
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    top.render_subcommands_section(&mut page)?;
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let name = format!("korv {}", sub.get_name());
        let man = Man::new(sub.clone().bin_name(&name));
        let mut part = Vec::new();
        man.render_synopsis_section(&mut part)?;
        man.render_description_section(&mut part)?;
        man.render_options_section(&mut part)?;
        let part = String::from_utf8_lossy(&part)
            .replacen(
                ".SH SYNOPSIS",
                &format!(".SH \"{}\"", name.to_uppercase()),
                1,
            )
            .replacen(".SH DESCRIPTION\n", ".PP\n", 1)
            .replacen(".SH OPTIONS", ".SS Options", 1);
        page.extend_from_slice(part.as_bytes());
    }
    page.extend_from_slice(MORE.as_bytes());
    if command.get_version().is_some() {
        top.render_version_section(&mut page)?;
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("korv")
            .about("Call Korv APIs")
            .subcommand(
                clap::Command::new("get")
                    .about("GET a resource")
                    .arg(clap::Arg::new("jump").short('J').long("jump")),
            )
    }

    #[test]
    fn the_manual_has_each_subcommand_s_options_and_the_ssh_section() {
        let page = String::from_utf8(manual(command()).unwrap()).unwrap();
        assert!(page.contains(".TH korv 1"), "{page}");
        assert!(page.contains(".SH \"KORV GET\""), "{page}");
        assert!(page.contains(".SS Options"), "{page}");
        assert!(page.contains("\\-\\-jump"), "{page}");
        assert!(page.contains(".SH \"SSH CONFIGURATION\""), "{page}");
        assert_eq!(page.matches(".SH DESCRIPTION").count(), 1, "{page}");
    }
}
