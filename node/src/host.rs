//! Which host an address is, for the limits that count per host (handshakes under way,
//! login attempts).

use std::net::{IpAddr, Ipv6Addr};

/// The host `address` counts as: an IPv4 address as it is (an IPv4-mapped IPv6 address
/// too), an IPv6 address by its /64 (one host usually holds a whole /64, and would
/// otherwise count as 2^64 hosts).
pub fn host_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_ipv4_addresses_and_ipv6_64s() {
        let host = |text: &str| host_of(text.parse().unwrap());
        assert_eq!(host("10.0.0.1"), host("10.0.0.1"));
        assert_ne!(host("10.0.0.1"), host("10.0.0.2"));
        assert_eq!(host("2001:db8:1:2:aaaa::1"), host("2001:db8:1:2:bbbb::9"));
        assert_ne!(host("2001:db8:1:2::1"), host("2001:db8:1:3::1"));
        assert_eq!(host("::ffff:10.0.0.1"), host("10.0.0.1"));
    }
}
