//! The synchronous client: the same methods as the async one, for programs
//! without a runtime of their own.
//!
//! ```no_run
//! use korv_client::{ClientConfig, blocking::KorvClient};
//! let client = KorvClient::connect(ClientConfig::new("localhost"))?;
//! let hello = client.get("/hello")?;
//! println!("{} {}", hello.code, hello.body);
//! # Ok::<(), korv_client::Error>(())
//! ```

use serde::Serialize;

use korv_proto::{Headers, Response, Verb};

use crate::config::ClientConfig;
use crate::engine::Engine;
use crate::error::Error;

/// A blocking Korv client. It owns a small runtime of its own, an
/// [`Engine`]: the thread that calls a method runs the connection while it
/// waits, so a request costs no thread switch. Do not use it from inside
/// an async runtime.
pub struct KorvClient {
    runtime: Engine,
    inner: crate::client::KorvClient,
}

impl KorvClient {
    /// Connects; see [`crate::KorvClient::connect`].
    ///
    /// # Errors
    /// As the async client, plus [`Error::Runtime`] if no runtime can start.
    pub fn connect(config: ClientConfig) -> Result<KorvClient, Error> {
        let runtime = Engine::new("korv-client").map_err(Error::Runtime)?;
        let inner = runtime.block_on(crate::client::KorvClient::connect(config))?;
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

    /// `WATCH resource`: once the server confirms it, the watch's events as
    /// an iterator; see [`crate::KorvClient::watch`].
    ///
    /// ```no_run
    /// use korv_client::{ClientConfig, blocking::KorvClient};
    /// let client = KorvClient::connect(ClientConfig::new("localhost"))?;
    /// for event in client.watch("/notes/", None::<&()>)?.take(10) {
    ///     println!("{}", event?);
    /// }
    /// # Ok::<(), korv_client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`crate::KorvClient::watch`].
    pub fn watch<B: Serialize + ?Sized>(
        &self,
        resource: &str,
        body: Option<&B>,
    ) -> Result<Watch<'_>, Error> {
        let inner = self.runtime.block_on(self.inner.watch(resource, body))?;
        Ok(Watch {
            runtime: &self.runtime,
            inner,
        })
    }
}

/// The events of one watch, as an iterator: see [`crate::Watch`]. It ends
/// at the watch's final frame ([`Watch::end`]); dropping it before then
/// cancels the watch.
pub struct Watch<'a> {
    runtime: &'a Engine,
    inner: crate::watch::Watch,
}

impl Watch<'_> {
    /// The watch's final frame, once the iterator has ended with it.
    pub fn end(&self) -> Option<&Response> {
        self.inner.end()
    }

    /// Sends `UNWATCH` and waits for the final frame.
    ///
    /// # Errors
    /// [`Error::Closed`] when the connection closes first.
    pub fn cancel(self) -> Result<Response, Error> {
        self.runtime.block_on(self.inner.cancel())
    }
}

impl Iterator for Watch<'_> {
    type Item = Result<serde_json::Value, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        use futures_util::StreamExt;
        self.runtime.block_on(self.inner.next())
    }
}
