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
//! - `error`: [`Error`] and its typed causes, [`IdentityError`] and
//!   [`CloseReason`].
//! - `config`: [`ClientConfig`], [`HostKeyPolicy`], [`ChannelKind`].
//! - `known_hosts`: OpenSSH known_hosts: host patterns, hashed names,
//!   `@cert-authority` and `@revoked`, and the verdict on a host key or
//!   host certificate.
//! - `certificate`: user certificates: where a key's certificate is, whether
//!   it can be offered, signing with a key held in memory.
//! - `ssh`: connecting, host key checks against known_hosts, identities and
//!   their certificates.
//! - `mux`: the multiplexed stream (ids, in-flight map, reader and writer tasks).
//! - `client`: [`KorvClient`], the async client over `ssh` and `mux`.
//! - [`blocking`]: the synchronous client, over [`KorvClient`].

pub mod blocking;
mod certificate;
mod client;
mod config;
mod error;
mod known_hosts;
mod mux;
mod ssh;

pub use client::KorvClient;
pub use config::{ChannelKind, ClientConfig, HostKeyPolicy};
pub use error::{CloseReason, Error, IdentityError};
pub use korv_proto::{Headers, ProtoError, Response, StatusCode, Verb};
