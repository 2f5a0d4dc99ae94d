//! Exit codes, error messages and hints: the one place that decides them.
//!
//! | code    | when                                                           |
//! |---------|----------------------------------------------------------------|
//! | 0       | a 2xx answer; a command that did what it was asked             |
//! | 3, 4, 5 | a 3xx, 4xx or 5xx answer (as httpie's `--check-status`), a     |
//! |         | watch refused with one, or ended by a 5xx                      |
//! | 1       | no answer: connection, host key, authentication, I/O; failures |
//! |         | counted by `korv bench` or `korv demo`                         |
//! | 2       | a usage error (clap exits with 2 itself for its own)           |

use std::process::ExitCode;

use korv_client::{Error as ClientError, IdentityError};

/// A mistake in the command line: exit code 2.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit code for an answer with `status`.
pub(crate) fn for_status(status: u16) -> ExitCode {
    ExitCode::from(match status {
        200..=299 => 0,
        300..=399 => 3,
        400..=499 => 4,
        500..=599 => 5,
        _ => 1,
    })
}

/// The exit code for a run that counted `failures` (errors of `korv bench`,
/// unexpected answers of `korv demo`).
pub(crate) fn for_failures(failures: u64) -> ExitCode {
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints `err` with its causes (`korv: error: ...`) and a hint when one
/// helps, and returns its exit code.
pub(crate) fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("korv: error: {err:#}");
    if let Some(hint) = hint(err) {
        eprintln!("korv: hint: {hint}");
    }
    ExitCode::from(exit_code(err))
}

/// 2 for a usage error; 1 for everything else: a client error (connection,
/// host key, authentication, a request without an answer), I/O, a server
/// that cannot start.
fn exit_code(err: &anyhow::Error) -> u8 {
    if find::<UsageError>(err).is_some() {
        2
    } else if let Some(ClientError::WatchRefused(response)) = find::<ClientError>(err) {
        match response.code.as_u16() {
            300..=399 => 3,
            400..=499 => 4,
            500..=599 => 5,
            _ => 1,
        }
    } else {
        1
    }
}

/// What to do about `err`, when the message alone does not say.
fn hint(err: &anyhow::Error) -> Option<&'static str> {
    let mut client = find::<ClientError>(err)?;
    // A jump host's failure gets the hint of its cause.
    while let ClientError::JumpHost { source, .. } = client {
        client = source;
    }
    match client {
        ClientError::Forward { .. } => Some(
            "the jump host must allow TCP forwarding (AllowTcpForwarding in its sshd_config) and reach the next host",
        ),
        ClientError::HostKeyUnknown { .. } => {
            Some("if you trust this server, run again with --accept-new to record its key")
        }
        ClientError::AuthRefused { tried, .. }
            if tried.iter().any(|key| key.contains("certificate")) =>
        {
            Some(
                "the server refused the certificate: check that its principals include the user name \
                 (or a principal the server requires) and that the server trusts its CA",
            )
        }
        ClientError::AuthRefused { .. } => Some(
            "add your public key (~/.ssh/id_ed25519.pub) to the server's authorized_keys, or name a key with -i",
        ),
        ClientError::HostCertificate { .. } => Some(
            "trust the host CA with a line `@cert-authority HOSTS CA-PUBLIC-KEY` in known_hosts, or ask for a valid host certificate",
        ),
        ClientError::Identity {
            reason: IdentityError::Encrypted,
            ..
        } => Some("korv takes no passphrase: add the key to your ssh-agent (ssh-add) instead"),
        ClientError::Timeout(_) | ClientError::ConnectTimeout { .. } => {
            Some("allow more time with --timeout SECS")
        }
        ClientError::WatchRefused(response) if response.code.as_u16() == 400 => Some(
            "a server without watches (before protocol 1.1) answers WATCH with 400; check that the server is recent enough",
        ),
        _ => None,
    }
}

/// The first error of type `E` in `err`'s chain.
fn find<E: std::error::Error + Send + Sync + 'static>(err: &anyhow::Error) -> Option<&E> {
    err.chain().find_map(|cause| cause.downcast_ref::<E>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use std::io;

    #[test]
    fn exit_codes_follow_the_status_class() {
        assert_eq!(
            [200, 201, 299, 301, 304, 400, 404, 409, 500, 504, 101].map(for_status),
            [0, 0, 0, 3, 3, 4, 4, 4, 5, 5, 1].map(ExitCode::from)
        );
        assert_eq!(for_failures(0), ExitCode::SUCCESS);
        assert_eq!(for_failures(3), ExitCode::from(1));
    }

    #[test]
    fn a_refused_watch_exits_with_its_status_class_and_a_400_hints_at_old_servers() {
        let refused = |code: u16| {
            let response = korv_client::Response::error(
                korv_proto::RequestId::from(1),
                korv_client::StatusCode::from_u16(code).unwrap(),
                "no",
            );
            anyhow::Error::new(ClientError::WatchRefused(Box::new(response)))
        };
        assert_eq!(exit_code(&refused(400)), 4);
        assert!(hint(&refused(400)).unwrap().contains("without watches"));
        assert_eq!(exit_code(&refused(404)), 4);
        assert_eq!(hint(&refused(404)), None);
        assert_eq!(exit_code(&refused(503)), 5);
    }

    #[test]
    fn usage_errors_exit_2_and_client_errors_1_with_their_hints() {
        let usage = anyhow::Error::new(UsageError("bad".into())).context("reading BODY");
        assert_eq!((exit_code(&usage), hint(&usage)), (2, None));
        let unknown = anyhow::Error::new(ClientError::HostKeyUnknown {
            host: "h".into(),
            fingerprint: "SHA256:x".into(),
            known_hosts: "k".into(),
        });
        assert_eq!(exit_code(&unknown), 1);
        assert!(hint(&unknown).unwrap().contains("--accept-new"));
        let refused = anyhow::Error::new(ClientError::AuthRefused {
            user: "u".into(),
            tried: Vec::new(),
        });
        assert!(hint(&refused).unwrap().contains("authorized_keys"));
        let via = anyhow::Error::new(ClientError::JumpHost {
            host: "bastion".into(),
            source: Box::new(ClientError::HostKeyUnknown {
                host: "bastion".into(),
                fingerprint: "SHA256:x".into(),
                known_hosts: "k".into(),
            }),
        });
        assert!(hint(&via).unwrap().contains("--accept-new"));
        let io: anyhow::Result<()> = Err(io::Error::other("disk")).context("cannot write");
        assert_eq!(exit_code(&io.unwrap_err()), 1);
    }
}
