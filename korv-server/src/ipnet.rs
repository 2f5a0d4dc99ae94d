//! IP networks in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), for the
//! networks exempt from per-source limits and penalties.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network: an address and a prefix length, host bits cleared.
///
/// Parsed from `ADDRESS/PREFIX` or a bare `ADDRESS` (one host: `/32` or
/// `/128`). An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is matched as
/// the IPv4 address it carries.
///
/// ```
/// use korv_server::IpNet;
/// let net: IpNet = "10.1.2.3/16".parse().unwrap();
/// assert_eq!(net.to_string(), "10.1.0.0/16");
/// assert!(net.contains("10.1.200.7".parse().unwrap()));
/// assert!(!net.contains("10.2.0.1".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    network: IpAddr,
    prefix: u8,
}

/// A network that cannot be parsed or built: its text and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network {text:?}: {reason}")]
pub struct IpNetError {
    text: String,
    reason: &'static str,
}

impl IpNet {
    /// IPv4 loopback, `127.0.0.0/8`.
    pub const LOOPBACK_V4: IpNet = IpNet {
        network: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
        prefix: 8,
    };

    /// IPv6 loopback, `::1/128`.
    pub const LOOPBACK_V6: IpNet = IpNet {
        network: IpAddr::V6(Ipv6Addr::LOCALHOST),
        prefix: 128,
    };

    /// The network of `addr` with `prefix` leading bits; the host bits of
    /// `addr` are cleared.
    ///
    /// # Errors
    ///
    /// When `prefix` is longer than the address (32 bits for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<IpNet, IpNetError> {
        let addr = addr.to_canonical();
        let bits = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > bits {
            return Err(IpNetError {
                text: format!("{addr}/{prefix}"),
                reason: "prefix longer than the address",
            });
        }
        Ok(IpNet {
            network: mask(addr, prefix),
            prefix,
        })
    }

    /// The network's first address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length, in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (ip, self.network) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.network
            }
            _ => false,
        }
    }
}

/// `addr` with all but its first `prefix` bits cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & keep))
        }
        IpAddr::V6(a) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & keep))
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(text: &str) -> Result<IpNet, IpNetError> {
        let error = |reason| IpNetError {
            text: text.to_owned(),
            reason,
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| error("expected ADDRESS or ADDRESS/PREFIX"))?;
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .map_err(|_| error("the prefix is not a number of bits"))?,
            None => match addr.to_canonical() {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            },
        };
        IpNet::new(addr, prefix).map_err(|e| error(e.reason))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_with_or_without_a_prefix_and_clear_host_bits() {
        assert_eq!(
            "192.168.7.9/24".parse::<IpNet>().unwrap().to_string(),
            "192.168.7.0/24"
        );
        assert_eq!(
            "10.0.0.1".parse::<IpNet>().unwrap().to_string(),
            "10.0.0.1/32"
        );
        assert_eq!("::1".parse::<IpNet>().unwrap().to_string(), "::1/128");
        assert_eq!(
            "2001:db8:1:2:3::9/64".parse::<IpNet>().unwrap().to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<IpNet>().unwrap().to_string(),
            "0.0.0.0/0"
        );
    }

    #[test]
    fn malformed_networks_are_refused_with_their_text() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/x",
            "host/8",
        ] {
            let err = bad.parse::<IpNet>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn containment_respects_the_prefix_and_the_family() {
        let net: IpNet = "127.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("127.255.0.1")));
        assert!(!net.contains(ip("128.0.0.1")));
        assert!(!net.contains(ip("::1")));
        // An IPv4-mapped IPv6 peer is its IPv4 address.
        assert!(net.contains(ip("::ffff:127.0.0.2")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        let all: IpNet = "::/0".parse().unwrap();
        assert!(all.contains(ip("fe80::1")));
        assert!(!all.contains(ip("10.0.0.1")));
    }
}
