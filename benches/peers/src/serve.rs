//! `korv-peers server KIND`: binds, prints `listening ADDR`, serves until
//! killed.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use korv_server::{ClientInfo, StreamService};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::ServerKind;
use crate::{http, routes, tls};

/// How accepted connections are served. Cheap to clone.
#[derive(Clone)]
enum Service {
    Http1,
    Https1(TlsAcceptor),
    Https2(TlsAcceptor),
    Korv(StreamService<()>),
}

impl Service {
    fn new(kind: ServerKind) -> anyhow::Result<Service> {
        Ok(match kind {
            ServerKind::Http1 => Service::Http1,
            ServerKind::Https1 => {
                Service::Https1(TlsAcceptor::from(tls::server_config(tls::ALPN_HTTP1)?))
            }
            ServerKind::Https2 => {
                Service::Https2(TlsAcceptor::from(tls::server_config(tls::ALPN_H2)?))
            }
            ServerKind::Tcp => Service::Korv(routes::korv_app().into_stream_service()),
        })
    }

    /// Serves one connection until it closes. Its errors (a client that
    /// went away without a TLS close_notify, a reset at the end of a run)
    /// are the client's business in a benchmark and are not reported.
    async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        match self {
            Service::Http1 => {
                let _ = http::serve_http1(stream).await;
            }
            Service::Https1(acceptor) => {
                if let Ok(tls) = acceptor.accept(stream).await {
                    let _ = http::serve_http1(tls).await;
                }
            }
            Service::Https2(acceptor) => {
                if let Ok(tls) = acceptor.accept(stream).await {
                    let _ = http::serve_http2(tls).await;
                }
            }
            Service::Korv(service) => {
                let client = ClientInfo::new("korv-peers", "", "", "", Some(peer));
                let _ = service.serve_as(stream, client).await;
            }
        }
    }
}

/// Runs the server of `kind` on `listen` until the process is killed.
///
/// # Errors
/// The address cannot be bound, the certificate cannot be made, or stdout
/// cannot be written.
pub(crate) async fn run(kind: ServerKind, listen: SocketAddr) -> anyhow::Result<()> {
    let service = Service::new(kind)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {addr}")?;
        out.flush()?;
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: wait, go on.
                eprintln!("korv-peers: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            eprintln!("korv-peers: cannot set TCP_NODELAY for {peer}: {err}");
        }
        tokio::spawn(service.clone().serve(stream, peer));
    }
}
