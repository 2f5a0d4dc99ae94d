//! The HTTP peers with hyper: HTTP/1.1 (plain or over TLS) and HTTP/2 over
//! TLS, server and load-generating client.
//!
//! HTTP/2 settings, the same on both sides, chosen so that a 1 MiB echo is
//! never held back by flow control or buffer sizes:
//! - stream window 8 MiB ([`H2_STREAM_WINDOW`]): a whole body of Korv's
//!   largest frame size flows without waiting for a WINDOW_UPDATE;
//! - connection window 64 MiB ([`H2_CONNECTION_WINDOW`]): 64 streams of
//!   1 MiB each in flight at once;
//! - adaptive window off (hyper turns it off when windows are set);
//! - largest frame 256 KiB ([`H2_MAX_FRAME`]) instead of 16 KiB: fewer DATA
//!   frames per body, while a frame is still small next to a 1 MiB body so
//!   reading and writing overlap;
//! - send buffer 8 MiB per stream ([`H2_SEND_BUFFER`]): a whole body can be
//!   queued at once;
//! - up to 1024 concurrent streams ([`H2_MAX_STREAMS`]), above any
//!   concurrency we run.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::load::{Answer, CallError, Caller};
use crate::routes;

/// HTTP/2 initial stream window.
const H2_STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 initial connection window.
const H2_CONNECTION_WINDOW: u32 = 64 << 20;
/// HTTP/2 SETTINGS_MAX_FRAME_SIZE.
const H2_MAX_FRAME: u32 = 256 << 10;
/// HTTP/2 send buffer per stream.
const H2_SEND_BUFFER: usize = 8 << 20;
/// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS of the server.
const H2_MAX_STREAMS: u32 = 1024;

/// Time a request gets to be answered, like the Korv client's default.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const JSON: HeaderValue = HeaderValue::from_static("application/json");

// ---------------------------------------------------------------- server

/// Serves HTTP/1.1 with keep-alive on `io` until the client closes it.
///
/// # Errors
/// The connection failed (a reset, a malformed request, a TLS error).
pub(crate) async fn serve_http1<IO>(io: IO) -> hyper::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service_fn(handle))
        .await
}

/// Serves HTTP/2 on `io` until the client closes it.
///
/// # Errors
/// The connection failed.
pub(crate) async fn serve_http2<IO>(io: IO) -> hyper::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_send_buf_size(H2_SEND_BUFFER)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .serve_connection(TokioIo::new(io), service_fn(handle))
        .await
}

/// One request: the whole body (at most [`routes::MAX_BODY`]), the route,
/// a JSON answer.
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let (code, value) = match Limited::new(body, routes::MAX_BODY).collect().await {
        Ok(body) => routes::http_answer(&parts.method, parts.uri.path(), &body.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => (
            413,
            serde_json::json!({
                "message": "the body is above the largest accepted",
                "max_frame_bytes": routes::MAX_BODY,
            }),
        ),
        Err(err) => (
            400,
            serde_json::json!({"message": format!("cannot read the body: {err}")}),
        ),
    };
    Ok(json_response(code, &value))
}

fn json_response(code: u16, value: &Value) -> Response<Full<Bytes>> {
    let (status, bytes) = match serde_json::to_vec(value) {
        Ok(bytes) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            bytes,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"message":"the answer does not serialize"}"#.to_vec(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}

// ---------------------------------------------------------------- client

/// The request every worker repeats: built once, cloned cheaply per send.
#[derive(Debug, Clone)]
pub(crate) struct RequestTemplate {
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    body: Option<Bytes>,
}

impl RequestTemplate {
    /// `GET path`, or `POST path` with `body` (compact JSON). For HTTP/1.1
    /// the target is the path with a Host header; for HTTP/2 an absolute URI
    /// (hyper takes `:scheme` and `:authority` from it).
    ///
    /// # Errors
    /// `path` is not a valid request target.
    pub(crate) fn new(
        addr: SocketAddr,
        path: &str,
        body: Option<Bytes>,
        http2: bool,
    ) -> anyhow::Result<RequestTemplate> {
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let (uri, host) = if http2 {
            (format!("https://{addr}{path}"), None)
        } else {
            let host = HeaderValue::from_str(&addr.to_string())?;
            (path.to_owned(), Some(host))
        };
        let uri: Uri = uri
            .parse()
            .with_context(|| format!("{path} is not a valid request path"))?;
        Ok(RequestTemplate {
            method,
            uri,
            host,
            body,
        })
    }

    /// The method used, for the report.
    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    fn build(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone().unwrap_or_default()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        if let Some(host) = &self.host {
            headers.insert(HOST, host.clone());
        }
        if self.body.is_some() {
            headers.insert(CONTENT_TYPE, JSON);
        }
        request
    }
}

/// Reads a whole response and parses its body as JSON, the work the Korv
/// client does on every answer, so both kinds of client do the same. A body
/// that cannot be read is an error that is `fatal` as told; a body that is
/// not JSON leaves the connection usable.
async fn read_answer(response: Response<Incoming>, fatal: bool) -> Result<Answer, CallError> {
    let code = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| CallError {
            message: format!("cannot read the response body: {err}"),
            fatal,
        })?
        .to_bytes();
    serde_json::from_slice::<Value>(&body)
        .map_err(|err| CallError::transient(format!("the response is not JSON: {err}")))?;
    Ok(Answer {
        code,
        bytes: body.len() as u64,
    })
}

/// A TCP connection to `addr` with Nagle off.
async fn connect_tcp(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TLS 1.3 with `alpn` over a fresh TCP connection, certificate unchecked.
async fn connect_tls(
    addr: SocketAddr,
    alpn: &[u8],
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = TlsConnector::from(crate::tls::client_config(alpn)?);
    let tcp = connect_tcp(addr).await?;
    connector
        .connect(crate::tls::server_name(addr), tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr} failed"))
}

type Http1Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type Http2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn handshake_http1<IO>(io: IO) -> anyhow::Result<Http1Sender>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .context("HTTP/1.1 handshake failed")?;
    // The connection's own error, if any, reaches the workers as failed
    // requests; nothing more to do with it here.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn handshake_http2<IO>(io: IO) -> anyhow::Result<Http2Sender>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_send_buf_size(H2_SEND_BUFFER)
        .handshake(TokioIo::new(io))
        .await
        .context("HTTP/2 handshake failed")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One HTTP/1.1 connection, one request at a time.
pub(crate) struct Http1Caller {
    sender: Http1Sender,
    request: Arc<RequestTemplate>,
}

impl Http1Caller {
    /// `count` connections to `addr`, over TLS 1.3 (ALPN http/1.1) when `tls`.
    ///
    /// # Errors
    /// A connection or handshake failed.
    pub(crate) async fn connect(
        addr: SocketAddr,
        tls: bool,
        count: usize,
        request: Arc<RequestTemplate>,
    ) -> anyhow::Result<Vec<Http1Caller>> {
        let mut callers = Vec::with_capacity(count);
        for _ in 0..count {
            let sender = if tls {
                handshake_http1(connect_tls(addr, crate::tls::ALPN_HTTP1).await?).await?
            } else {
                handshake_http1(connect_tcp(addr).await?).await?
            };
            callers.push(Http1Caller {
                sender,
                request: Arc::clone(&request),
            });
        }
        Ok(callers)
    }
}

impl Caller for Http1Caller {
    async fn call(&mut self) -> Result<Answer, CallError> {
        let exchange = async {
            // HTTP/1.1 cannot recover a connection whose exchange failed
            // half-way: every transport error is fatal to this worker.
            self.sender.ready().await.map_err(CallError::fatal)?;
            let response = self
                .sender
                .send_request(self.request.build())
                .await
                .map_err(CallError::fatal)?;
            read_answer(response, true).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(CallError::fatal(format!(
                    "no answer within {REQUEST_TIMEOUT:?}"
                )))
            })
    }
}

/// One stream of a shared HTTP/2 connection.
pub(crate) struct Http2Caller {
    sender: Http2Sender,
    request: Arc<RequestTemplate>,
}

impl Http2Caller {
    /// `connections` HTTP/2 connections over TLS 1.3 (ALPN h2) to `addr`,
    /// each shared by `concurrency` workers.
    ///
    /// # Errors
    /// A connection or handshake failed.
    pub(crate) async fn connect(
        addr: SocketAddr,
        connections: usize,
        concurrency: usize,
        request: Arc<RequestTemplate>,
    ) -> anyhow::Result<Vec<Http2Caller>> {
        let mut callers = Vec::with_capacity(connections * concurrency);
        for _ in 0..connections {
            let tls = connect_tls(addr, crate::tls::ALPN_H2).await?;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            anyhow::ensure!(
                alpn.as_deref() == Some(crate::tls::ALPN_H2),
                "{addr} did not agree to HTTP/2 (ALPN h2)"
            );
            let sender = handshake_http2(tls).await?;
            for _ in 0..concurrency {
                callers.push(Http2Caller {
                    sender: sender.clone(),
                    request: Arc::clone(&request),
                });
            }
        }
        Ok(callers)
    }
}

impl Caller for Http2Caller {
    async fn call(&mut self) -> Result<Answer, CallError> {
        let exchange = async {
            self.sender.ready().await.map_err(CallError::fatal)?;
            let response = self
                .sender
                .send_request(self.request.build())
                .await
                .map_err(CallError::transient)?;
            read_answer(response, false).await
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(CallError::transient(format!(
                    "no answer within {REQUEST_TIMEOUT:?}"
                )))
            });
        // A failed stream leaves the connection usable unless it closed.
        result.map_err(|err| CallError {
            fatal: err.fatal || self.sender.is_closed(),
            ..err
        })
    }
}
