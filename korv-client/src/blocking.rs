//! The synchronous client: the same methods as the async one, for programs
//! without a runtime (the original Korv client was synchronous).
//!
//! ```no_run
//! use korv_client::{ClientConfig, blocking::KorvClient};
//! let client = KorvClient::connect(ClientConfig::new("localhost"))?;
//! let hello = client.get("/hello")?;
//! println!("{} {}", hello.code, hello.body);
//! # Ok::<(), korv_client::Error>(())
//! ```

use serde::Serialize;

use crate::{ClientConfig, Error, Headers, Response, Verb};

/// A blocking Korv client. It owns a small runtime of its own; do not use it
/// from inside an async runtime.
pub struct KorvClient {
    runtime: tokio::runtime::Runtime,
    inner: crate::KorvClient,
}

impl KorvClient {
    /// Connects; see [`crate::KorvClient::connect`].
    ///
    /// # Errors
    /// As the async client, plus [`Error::Protocol`] if no runtime can start.
    pub fn connect(config: ClientConfig) -> Result<KorvClient, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|err| Error::Protocol(format!("cannot start a runtime: {err}")))?;
        let inner = runtime.block_on(crate::KorvClient::connect(config))?;
        Ok(KorvClient { runtime, inner })
    }

    /// `GET resource`.
    ///
    /// # Errors
    /// As [`crate::KorvClient::request`].
    pub fn get(&self, resource: &str) -> Result<Response, Error> {
        self.runtime.block_on(self.inner.get(resource))
    }

    /// `STORE resource` with `body`.
    ///
    /// # Errors
    /// As [`crate::KorvClient::request`].
    pub fn store<B: Serialize + ?Sized>(
        &self,
        resource: &str,
        body: &B,
    ) -> Result<Response, Error> {
        self.runtime.block_on(self.inner.store(resource, body))
    }

    /// `UPDATE resource` with `body`.
    ///
    /// # Errors
    /// As [`crate::KorvClient::request`].
    pub fn update<B: Serialize + ?Sized>(
        &self,
        resource: &str,
        body: &B,
    ) -> Result<Response, Error> {
        self.runtime.block_on(self.inner.update(resource, body))
    }

    /// `DELETE resource`.
    ///
    /// # Errors
    /// As [`crate::KorvClient::request`].
    pub fn delete(&self, resource: &str) -> Result<Response, Error> {
        self.runtime.block_on(self.inner.delete(resource))
    }

    /// Any request.
    ///
    /// # Errors
    /// As [`crate::KorvClient::request`].
    pub fn request<B: Serialize + ?Sized>(
        &self,
        verb: Verb,
        resource: &str,
        body: Option<&B>,
        headers: Headers,
    ) -> Result<Response, Error> {
        self.runtime
            .block_on(self.inner.request(verb, resource, body, headers))
    }
}
