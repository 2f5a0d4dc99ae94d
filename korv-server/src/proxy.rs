//! The PROXY protocol, versions 1 (text) and 2 (binary): the header a load
//! balancer such as HAProxy writes first on each connection it forwards, to
//! carry the client's address. Parsing is `ppp`'s; this module reads exactly
//! one header off the socket, not a byte more, so that the SSH version
//! exchange that follows is untouched.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::ipnet::IpNet;

/// The longest version 1 header, CRLF included.
const V1_MAX: usize = 107;
/// How a version 1 header starts.
const V1_PREFIX: &[u8] = b"PROXY";
/// How a version 2 header starts: 12 bytes of signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// A version 2 header's fixed part: the signature, version and command,
/// family and protocol, and the 2-byte length of what follows.
const V2_FIXED: usize = 16;

/// Why a PROXY header was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("a PROXY version 1 header with no CRLF within {V1_MAX} bytes")]
    TooLong,
    #[error("a malformed PROXY header: {0}")]
    Malformed(String),
}

/// The source networks whose connections start with a PROXY header (the
/// load balancers). Empty: no connection may carry one.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub(crate) fn new(networks: Vec<IpNet>) -> Self {
        TrustedProxies(networks)
    }

    /// Whether a connection from `ip` must start with a PROXY header.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }
}

/// Reads one PROXY header (version 1 or 2) from `io` and returns the
/// client's address it carries. A `LOCAL` command (a health check made by
/// the balancer itself), an `UNKNOWN` or unspecified address family, or a
/// UNIX socket address mean the connection's own peer, `socket_peer`.
///
/// Reads exactly the header: a version 2 header says its length; a version
/// 1 header is read a byte at a time up to its CRLF (107 bytes at most).
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
    socket_peer: SocketAddr,
) -> Result<SocketAddr, ProxyError> {
    let mut buf = vec![0_u8; V1_PREFIX.len()];
    io.read_exact(&mut buf).await?;
    if buf == V1_PREFIX {
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyError::TooLong);
            }
            let mut byte = [0_u8];
            io.read_exact(&mut byte).await?;
            buf.push(byte[0]);
        }
        let header = v1::Header::try_from(buf.as_slice())
            .map_err(|err| ProxyError::Malformed(err.to_string()))?;
        Ok(v1_source(&header.addresses).unwrap_or(socket_peer))
    } else if V2_SIGNATURE.starts_with(&buf) {
        buf.resize(V2_FIXED, 0);
        io.read_exact(&mut buf[V1_PREFIX.len()..]).await?;
        let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        buf.resize(V2_FIXED + length, 0);
        io.read_exact(&mut buf[V2_FIXED..]).await?;
        let header = v2::Header::try_from(buf.as_slice())
            .map_err(|err| ProxyError::Malformed(err.to_string()))?;
        Ok(match header.command {
            v2::Command::Local => socket_peer,
            v2::Command::Proxy => v2_source(&header.addresses).unwrap_or(socket_peer),
        })
    } else {
        Err(ProxyError::Missing)
    }
}

fn v1_source(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(addresses: &v2::Addresses) -> Option<SocketAddr> {
    match addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "10.0.0.1:40000";

    fn peer() -> SocketAddr {
        PEER.parse().unwrap()
    }

    /// Reads a header from `bytes` followed by an SSH version line, and
    /// returns the address and what is left unread.
    async fn read(bytes: &[u8]) -> (Result<SocketAddr, ProxyError>, Vec<u8>) {
        let mut input = bytes.to_vec();
        input.extend_from_slice(b"SSH-2.0-client\r\n");
        let mut io = input.as_slice();
        let result = read_header(&mut io, peer()).await;
        (result, io.to_vec())
    }

    fn v2(command: v2::Command, addresses: v2::Addresses) -> Vec<u8> {
        v2::Builder::with_addresses(0x20 | command as u8, v2::Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn v1_tcp4_carries_the_source_and_leaves_the_rest_unread() {
        let (addr, rest) = read(b"PROXY TCP4 192.0.2.7 10.0.0.2 5555 8022\r\n").await;
        assert_eq!(addr.unwrap(), "192.0.2.7:5555".parse().unwrap());
        assert_eq!(rest, b"SSH-2.0-client\r\n");
    }

    #[tokio::test]
    async fn v1_tcp6_carries_the_source() {
        let (addr, rest) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 8022\r\n").await;
        assert_eq!(addr.unwrap(), "[2001:db8::7]:5555".parse().unwrap());
        assert_eq!(rest, b"SSH-2.0-client\r\n");
    }

    #[tokio::test]
    async fn v1_unknown_is_the_socket_peer() {
        let (addr, rest) = read(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(addr.unwrap(), peer());
        assert_eq!(rest, b"SSH-2.0-client\r\n");
    }

    #[tokio::test]
    async fn v1_without_crlf_within_107_bytes_is_refused() {
        let mut line = b"PROXY TCP4 ".to_vec();
        line.extend(std::iter::repeat_n(b'1', 200));
        let (addr, rest) = read(&line).await;
        assert!(matches!(addr, Err(ProxyError::TooLong)), "{addr:?}");
        // It stopped at 107 bytes.
        assert_eq!(
            rest.len(),
            line.len() - V1_MAX + b"SSH-2.0-client\r\n".len()
        );
    }

    #[tokio::test]
    async fn v1_malformed_is_refused() {
        let (addr, _) = read(b"PROXY TCP4 not-an-address 10.0.0.2 5555 8022\r\n").await;
        assert!(matches!(addr, Err(ProxyError::Malformed(_))), "{addr:?}");
    }

    #[tokio::test]
    async fn v2_proxy_ipv4_carries_the_source_and_leaves_the_rest_unread() {
        let source: SocketAddr = "192.0.2.9:6000".parse().unwrap();
        let destination: SocketAddr = "10.0.0.2:8022".parse().unwrap();
        let header = v2(v2::Command::Proxy, (source, destination).into());
        let (addr, rest) = read(&header).await;
        assert_eq!(addr.unwrap(), source);
        assert_eq!(rest, b"SSH-2.0-client\r\n");
    }

    #[tokio::test]
    async fn v2_proxy_ipv6_with_tlvs_carries_the_source_and_leaves_the_rest_unread() {
        let source: SocketAddr = "[2001:db8::9]:6000".parse().unwrap();
        let destination: SocketAddr = "[2001:db8::1]:8022".parse().unwrap();
        let header = v2::Builder::with_addresses(0x21, v2::Protocol::Stream, (source, destination))
            .write_tlv(v2::Type::NoOp, b"padding")
            .unwrap()
            .build()
            .unwrap();
        let (addr, rest) = read(&header).await;
        assert_eq!(addr.unwrap(), source);
        assert_eq!(rest, b"SSH-2.0-client\r\n");
    }

    #[tokio::test]
    async fn v2_local_is_the_socket_peer() {
        let source: SocketAddr = "192.0.2.9:6000".parse().unwrap();
        let destination: SocketAddr = "10.0.0.2:8022".parse().unwrap();
        let header = v2(v2::Command::Local, (source, destination).into());
        let (addr, rest) = read(&header).await;
        assert_eq!(addr.unwrap(), peer());
        assert_eq!(rest, b"SSH-2.0-client\r\n");
    }

    #[tokio::test]
    async fn no_header_is_refused() {
        let (addr, _) = read(b"").await;
        assert!(matches!(addr, Err(ProxyError::Missing)), "{addr:?}");
    }

    #[tokio::test]
    async fn a_truncated_v2_header_is_an_io_error() {
        let source: SocketAddr = "192.0.2.9:6000".parse().unwrap();
        let destination: SocketAddr = "10.0.0.2:8022".parse().unwrap();
        let header = v2(v2::Command::Proxy, (source, destination).into());
        let mut io = &header[..20];
        let result = read_header(&mut io, peer()).await;
        assert!(matches!(result, Err(ProxyError::Io(_))), "{result:?}");
    }

    #[test]
    fn trust_is_by_network() {
        let trusted = TrustedProxies::new(vec!["10.1.0.0/16".parse().unwrap()]);
        assert!(trusted.trusts("10.1.2.3".parse().unwrap()));
        assert!(trusted.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!trusted.trusts("10.2.0.1".parse().unwrap()));
        assert!(!TrustedProxies::default().trusts("10.1.2.3".parse().unwrap()));
    }
}
