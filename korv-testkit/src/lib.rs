//! Fixtures shared by Korv's test crates, `xtask` and the benches, so that
//! each exists once:
//!
//! - [`keys`]: SSH keys made by `ssh-keygen`, their public lines, and
//!   `known_hosts` entries;
//! - [`certs`]: OpenSSH certificates signed by `ssh-keygen -s`;
//! - [`net`]: a free port on 127.0.0.1;
//! - [`frame`]: Korv frames (a 4-byte big-endian length, then the payload);
//! - [`process`]: child processes that are killed when dropped, and waiting
//!   until one listens;
//! - [`sshd`]: a private OpenSSH `sshd` on 127.0.0.1 with its own config;
//! - `pipe` (feature `pipe`): an in-memory stream served by a
//!   `korv_server::StreamService`, read through the frame codec.
//!
//! The functions meant for tests panic with a message on failure; those that
//! `xtask` uses return a `Result` (their names start with `try_` where both
//! exist).
//!
//! This crate is not published: the crates that use it take it as a
//! path-only dev-dependency, which `cargo publish` leaves out.

pub mod certs;
pub mod frame;
pub mod keys;
pub mod net;
#[cfg(feature = "pipe")]
pub mod pipe;
pub mod process;
pub mod sshd;
