//! Networks in CIDR notation (`127.0.0.1/32`, `10.0.0.0/8`, `2001:db8::/32`)
//! for `client.trusted_forwarders` (thesis §3.8.1's configuration; the
//! forwarders are a port decision, `docs/configuration.md`).

use std::fmt;
use std::net::IpAddr;

/// An IPv4 or IPv6 network: an address and how many leading bits of it
/// count.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX`, or a bare address (the network of that one
    /// address). The address must have no bits set past the prefix
    /// (`10.0.0.1/8` is refused: it is almost always a typing mistake).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not a network (ADDR/PREFIX)"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= bits && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("`{text}`: the prefix must be 0 to {bits}")),
            },
        };
        if addr_bits(addr) & !mask(bits, prefix) != 0 {
            return Err(format!("`{text}`: bits are set past the /{prefix} prefix"));
        }
        Ok(Cidr { addr, prefix })
    }

    /// True if `ip` is in the network; an IPv4-mapped IPv6 address counts as
    /// its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        self.bits(ip) == self.network_bits()
    }

    fn width(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// `ip`'s leading `prefix` bits.
    fn bits(&self, ip: IpAddr) -> u128 {
        addr_bits(ip) & mask(self.width(), self.prefix)
    }

    fn network_bits(&self) -> u128 {
        addr_bits(self.addr) & mask(self.width(), self.prefix)
    }
}

/// The address as a number, IPv4 in the low 32 bits.
fn addr_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The leading `prefix` of `width` bits set.
fn mask(width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let all = if width == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    // A shift by the full width (an IPv6 /128) would overflow: no bits left.
    all & !all.checked_shr(u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A list of networks (`client.trusted_forwarders`); an address is in it if
/// it is in any of them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Networks(pub Vec<Cidr>);

impl Networks {
    /// True if `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// On one line, as in `proxy.cfg`, even in `{:#?}`.
impl fmt::Debug for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "\"{net}\"")?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_and_no_others() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains(ip("127.1.2.3")));
        assert!(lo.contains(ip("::ffff:127.0.0.9")), "IPv4-mapped");
        assert!(!lo.contains(ip("128.0.0.1")));
        assert!(!lo.contains(ip("::1")));
        let one = Cidr::parse("10.0.0.7").unwrap();
        assert_eq!(one.to_string(), "10.0.0.7/32");
        assert!(one.contains(ip("10.0.0.7")) && !one.contains(ip("10.0.0.8")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::2")));
        // A single IPv6 address, bare or as /128, and the /32 of IPv4.
        for one in ["2001:db8::1", "2001:db8::1/128"] {
            let net = Cidr::parse(one).unwrap();
            assert!(net.contains(ip("2001:db8::1")), "{one}");
            assert!(!net.contains(ip("2001:db8::2")), "{one}");
        }
        let zero = Cidr::parse("::/128").unwrap();
        assert!(zero.contains(ip("::")) && !zero.contains(ip("::1")));
        assert!(Cidr::parse("10.0.0.1/32").unwrap().contains(ip("10.0.0.1")));
        let nets = Networks(vec![lo, v6]);
        assert!(nets.contains(ip("127.0.0.2")) && nets.contains(ip("2001:db8::9")));
        assert!(!nets.contains(ip("10.0.0.7")) && !Networks::default().contains(ip("::1")));
        assert_eq!(format!("{nets:#?}"), r#"["127.0.0.0/8", "2001:db8::/32"]"#);
    }

    #[test]
    fn bad_networks_are_refused() {
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "nope",
            "10.0.0/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
