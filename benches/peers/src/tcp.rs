//! Korv's own framing without SSH: the `tcp` peer's client over a plain TCP
//! connection, and the `stdio` client over a child process's stdin and
//! stdout (`ssh -W host:port ...` to the `tcp` peer, through OpenSSH).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use korv_cli::load::error_message;
use korv_client::{ClientConfig, Error, Headers, KorvClient, Verb};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::load::{Answer, CallError, Caller};

/// What every Korv worker sends.
#[derive(Debug, Clone)]
pub(crate) struct KorvRequest {
    verb: Verb,
    path: String,
    body: Option<Box<RawValue>>,
}

impl KorvRequest {
    /// `GET path`, or `STORE path` with `body` (compact JSON).
    ///
    /// # Errors
    /// `body` is not JSON.
    pub(crate) fn new(path: &str, body: Option<String>) -> anyhow::Result<KorvRequest> {
        let body = body
            .map(RawValue::from_string)
            .transpose()
            .context("the body is not JSON")?;
        Ok(KorvRequest {
            verb: if body.is_some() {
                Verb::Store
            } else {
                Verb::Get
            },
            path: path.to_owned(),
            body,
        })
    }

    /// The verb used, for the report.
    pub(crate) fn verb(&self) -> Verb {
        self.verb
    }
}

/// The client settings: the defaults (8 MiB frames, 30 s per request). The
/// host is never used: these clients run over streams opened here.
fn client_config() -> ClientConfig {
    ClientConfig::new("korv-peers")
}

/// One worker: a request at a time on a (shared) Korv stream.
pub(crate) struct KorvCaller {
    client: KorvClient,
    request: KorvRequest,
    /// Answer sizes by code: the same request gets the same answer, so each
    /// is measured once (as `korv bench` does) rather than re-encoded.
    sizes: std::collections::BTreeMap<u16, u64>,
}

impl KorvCaller {
    fn workers(client: &KorvClient, concurrency: usize, request: &KorvRequest) -> Vec<KorvCaller> {
        (0..concurrency)
            .map(|_| KorvCaller {
                client: client.clone(),
                request: request.clone(),
                sizes: Default::default(),
            })
            .collect()
    }

    /// `connections` TCP connections to `addr` (Nagle off), each carrying
    /// one Korv stream shared by `concurrency` workers.
    ///
    /// # Errors
    /// A connection failed.
    pub(crate) async fn connect_tcp(
        addr: SocketAddr,
        connections: usize,
        concurrency: usize,
        request: &KorvRequest,
    ) -> anyhow::Result<Vec<KorvCaller>> {
        let mut callers = Vec::with_capacity(connections * concurrency);
        for _ in 0..connections {
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("cannot connect to {addr}"))?;
            stream.set_nodelay(true)?;
            let client = KorvClient::over_stream(stream, client_config());
            callers.extend(Self::workers(&client, concurrency, request));
        }
        Ok(callers)
    }

    /// Starts `command` `connections` times; each child's stdin and stdout
    /// carry one Korv stream shared by `concurrency` workers. The children
    /// are returned so that the caller ends them.
    ///
    /// # Errors
    /// A command cannot be started.
    pub(crate) fn spawn_stdio(
        command: &[String],
        connections: usize,
        concurrency: usize,
        request: &KorvRequest,
    ) -> anyhow::Result<(Vec<KorvCaller>, Children)> {
        let (program, args) = command
            .split_first()
            .context("stdio needs a command after `--`")?;
        let mut children = Children(Vec::with_capacity(connections));
        let mut callers = Vec::with_capacity(connections * concurrency);
        for _ in 0..connections {
            let mut child = Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {program}"))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                anyhow::bail!("{program} started without pipes");
            };
            children.0.push(child);
            let client = KorvClient::over_stream(tokio::io::join(stdout, stdin), client_config());
            callers.extend(Self::workers(&client, concurrency, request));
        }
        Ok((callers, children))
    }
}

impl Caller for KorvCaller {
    async fn call(&mut self) -> Result<Answer, CallError> {
        let request = &self.request;
        let result = self
            .client
            .request(
                request.verb,
                &request.path,
                request.body.as_deref(),
                Headers::new(),
            )
            .await;
        match result {
            Ok(response) => {
                let code = response.code.as_u16();
                let bytes = *self
                    .sizes
                    .entry(code)
                    .or_insert_with(|| json_size(&response.body));
                Ok(Answer { code, bytes })
            }
            // The message with its causes: "connection closed: the server
            // closed the stream", not only "connection closed".
            Err(err @ Error::Closed(_)) => Err(CallError::fatal(error_message(&err))),
            Err(err) => Err(CallError::transient(error_message(&err))),
        }
    }
}

/// The size of `value` as compact JSON, as `korv bench` counts it, without
/// building the text. The Korv client hands out the parsed body only, so the
/// size is found by serializing it once more into a counter (once per code).
fn json_size(value: &serde_json::Value) -> u64 {
    struct Count(u64);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => 0,
    }
}

/// The `stdio` children. Dropping them kills them too (`kill_on_drop`);
/// [`Children::end`] does it and waits for them.
#[derive(Debug)]
pub(crate) struct Children(Vec<Child>);

impl Children {
    /// Kills every child and reaps it, waiting at most a second for each.
    pub(crate) async fn end(mut self) {
        for child in &mut self.0 {
            // An error means it already exited: nothing left to kill.
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_size_is_the_compact_length() {
        for value in [
            json!(null),
            json!({"msg": "Hello World!"}),
            json!({"a": [1, 2.5, "é\n"], "b": {}}),
        ] {
            assert_eq!(json_size(&value), value.to_string().len() as u64);
        }
    }
}
