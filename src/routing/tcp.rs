//! Routing opaque TCP: `outbound.tcp_routes` match a connection by its original destination
//! (port, and optionally an address range), first match wins; a match sends the connection
//! to a service's endpoints, no match to the original destination itself.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::{metrics::TcpMetrics, upstream::Service};

/// An address range, `10.0.0.0/8` or `fd00::/8` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or `ADDR`, saying what is wrong. Host bits must be zero, so that
    /// the range written is the range meant.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("{text:?} is not an address range, e.g. 10.0.0.0/8 or fd00::/8")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        let cidr = Cidr { addr, prefix };
        if cidr.network() != addr {
            return Err(format!(
                "{text:?} has host bits set; the range is {}/{prefix}",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    /// Whether every address of `other` is in this range.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.is_ipv4() == other.is_ipv4()
            && self.prefix <= other.prefix
            && self.contains(other.addr)
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.network()
            }
            _ => false,
        }
    }

    /// Whether this is an IPv4 range.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn network(&self) -> IpAddr {
        mask(self.addr, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A set of destination ports (`opaque_ports`).
pub type PortSet = BTreeSet<u16>;

/// A compiled TCP route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRouteSpec {
    /// Name, for metrics and logs.
    pub name: String,
    /// The original destination port it takes; `None`: any port.
    pub port: Option<u16>,
    /// The original destination addresses it takes; `None`: any address.
    pub destination: Option<Cidr>,
    /// The service connections go to.
    pub service: String,
}

impl TcpRouteSpec {
    /// Whether a connection to `dst` takes this route.
    pub fn matches(&self, dst: SocketAddr) -> bool {
        self.port.is_none_or(|p| p == dst.port())
            && self.destination.is_none_or(|c| c.contains(dst.ip()))
    }
}

/// A TCP route bound to its live service.
#[derive(Debug)]
pub struct TcpRoute {
    /// As compiled.
    pub spec: TcpRouteSpec,
    /// The service.
    pub service: Arc<Service>,
    /// Its connection and byte counters.
    pub metrics: TcpMetrics,
}

/// The TCP routes of a snapshot, in order.
#[derive(Debug, Default)]
pub struct TcpTable {
    /// Routes; the first match wins.
    pub routes: Vec<TcpRoute>,
}

impl TcpTable {
    /// The route a connection to `dst` takes, if any.
    pub fn route(&self, dst: SocketAddr) -> Option<&TcpRoute> {
        self.routes.iter().find(|r| r.spec.matches(dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_contain() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert_eq!(Cidr::parse("10.0.0.7").unwrap().to_string(), "10.0.0.7/32");
    }

    #[test]
    fn bad_ranges_say_why() {
        for (text, why) in [
            ("10.0.0.0/33", "0 to 32"),
            ("10.0.0.1/8", "host bits"),
            ("ten/8", "not an address range"),
            ("fd00::/129", "0 to 128"),
        ] {
            let e = Cidr::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn a_route_matches_port_and_range() {
        let r = TcpRouteSpec {
            name: "nats".into(),
            port: Some(4222),
            destination: Some(Cidr::parse("10.96.0.0/12").unwrap()),
            service: "nats".into(),
        };
        assert!(r.matches("10.96.3.4:4222".parse().unwrap()));
        assert!(!r.matches("10.96.3.4:4223".parse().unwrap()));
        assert!(!r.matches("192.168.0.1:4222".parse().unwrap()));
    }
}
