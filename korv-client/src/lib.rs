//! Korv client: call a Korv API over SSH.
//!
//! One [`KorvClient`] holds one SSH connection and one multiplexed Korv stream:
//! many requests run at once, matched to their answers by id. It is cheap to
//! clone and share across tasks. [`blocking::KorvClient`] offers the same
//! methods to synchronous programs.
//!
//! ```no_run
//! use korv_client::{ClientConfig, KorvClient};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), korv_client::Error> {
//! let client = KorvClient::connect(
//!     ClientConfig::new("api.example.com")       // port 8022, user $USER
//!         .identity_file("/home/me/.ssh/id_ed25519")
//!         .known_hosts("/home/me/.ssh/known_hosts"), // strict by default
//! )
//! .await?;
//! let hello = client.get("/hello").await?;
//! assert_eq!(hello.code, 200);
//! let created = client.store("/notes/1", &json!({"text": "hi"})).await?;
//! println!("{} {}", created.code, created.body);
//! # Ok(())
//! # }
//! ```
//!
//! # Watches
//!
//! [`KorvClient::watch`] subscribes to a resource's events (`WATCH`,
//! protocol 1.1) and returns them as a [`Watch`] stream, on the same stream
//! as the client's requests; dropping it cancels the watch.
//!
//! # SSH configuration and jump hosts
//!
//! With [`ClientConfig::user_ssh_config`] (or [`ClientConfig::ssh_config`]
//! for one file), the host may be an alias of `~/.ssh/config`, and the
//! client does what `ssh` would: `HostName`, `Port`, `User`,
//! `IdentityFile`, `IdentityAgent`, `UserKnownHostsFile`,
//! `StrictHostKeyChecking`, `ProxyJump`, `ProxyCommand`, `ConnectTimeout`… (see
//! [`ssh_config`] for the rules). Settings made on the builder win.
//! [`ClientConfig::jump`] goes through jump hosts as `ssh -J` does.
//!
//! ```no_run
//! # async fn run() -> Result<(), korv_client::Error> {
//! use korv_client::{ClientConfig, KorvClient};
//! let client = KorvClient::connect(
//!     ClientConfig::new("prod-api")                 // an alias
//!         .user_ssh_config()                          // ~/.ssh/config, /etc/ssh/ssh_config
//!         .jump("ops@bastion.example.com"),           // as ssh -J
//! )
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Every call returns [`Error`]. Its message says what failed and its
//! [`source`](std::error::Error::source) says why: print the whole chain
//! (anyhow's `{:#}` does) to show both.
//!
//! # Layout
//!
//! Each module uses only the ones listed before it.
//!
//! - [`engine`]: [`engine::Engine`], the runtime of blocking clients,
//!   driven by the thread that waits on it.
//! - [`ssh_config`]: OpenSSH's client configuration, resolved for one host;
//!   jump host lists.
//! - `error`: [`Error`] and its typed causes, [`IdentityError`] and
//!   [`CloseReason`].
//! - `config`: [`ClientConfig`], [`HostKeyPolicy`], [`ChannelKind`].
//! - `known_hosts`: OpenSSH known_hosts: host patterns, hashed names,
//!   `@cert-authority` and `@revoked`, and the verdict on a host key or
//!   host certificate.
//! - `certificate`: user certificates: where a key's certificate is, whether
//!   it can be offered, signing with a key held in memory.
//! - `route`: the jump hosts on the way to a host, in connection order.
//! - `endpoint`: each SSH server's settings, the builder's merged over the
//!   configuration's; [`ResolvedHost`].
//! - `ssh`: connecting through the route, host key checks against
//!   known_hosts, identities with their certificates, and the agent.
//! - `whole`: the channel for korv 0.2.1's format, whose writes each leave
//!   as one channel-data message.
//! - `mux`: the multiplexed stream (ids, in-flight map, reader and writer
//!   tasks), in version 1's format or korv 0.2.1's.
//! - `client`: [`KorvClient`], the async client over `ssh` and `mux`.
//! - [`blocking`]: the synchronous client, over [`KorvClient`] and `engine`.

pub mod blocking;
mod certificate;
mod client;
mod config;
mod endpoint;
pub mod engine;
mod error;
mod known_hosts;
mod mux;
mod route;
mod ssh;
pub mod ssh_config;
mod watch;
mod whole;

pub use client::KorvClient;
pub use config::{ChannelKind, ClientConfig, HostKeyPolicy};
pub use endpoint::ResolvedHost;
pub use error::{CloseReason, Error, IdentityError};
pub use korv_proto::{Headers, ProtoError, Response, StatusCode, Verb};
pub use mux::WATCH_QUEUE;
pub use watch::Watch;
