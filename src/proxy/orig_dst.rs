//! The original destination of a redirected connection: where the app (outbound) or the
//! caller (inbound) meant to connect before iptables' `REDIRECT` sent it to a Remora
//! listener. Read with `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` through socket2's safe
//! wrappers, so `unsafe_code` stays forbidden.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Where `stream` was going before it was redirected, or `None` when it was not redirected
/// (it reached the listener's own address, as in explicit mode).
pub fn of(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = socket2::SockRef::from(stream);
    let found = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    let original = found.ok()?.as_socket()?;
    (normal(original) != normal(local)).then_some(original)
}

/// `a` with an IPv4-mapped IPv6 address written as IPv4, so the two forms compare equal.
fn normal(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_direct_connection_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert_eq!(of(&accepted), None);
    }

    #[test]
    fn mapped_addresses_compare_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:80".parse().unwrap();
        assert_eq!(normal(mapped), "10.0.0.7:80".parse().unwrap());
    }
}
