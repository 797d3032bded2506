//! The PROXY protocol, v1 (text) and v2 (binary), as HAProxy's specification
//! defines it: the header a forwarder writes before a client's bytes to say
//! which address the client connected from. Port decision (seed 002's
//! deployment: players reach the proxy through HAProxy forwarders with
//! `send-proxy-v2`; the thesis has no forwarders); `docs/protocol.md` §8.
//!
//! Free of I/O, as every decoder here: [`decode`] returns `Ok(None)` while the
//! bytes so far can still become a valid header, and refuses anything else at
//! once, first byte included. What is accepted is a strict subset:
//!
//! - v2: the 12-byte signature, version 2, command `LOCAL` (the forwarder's own
//!   connection, a health check: [`ProxyHeader::Local`]) or `PROXY`; for
//!   `PROXY`, TCP over IPv4 or IPv6 only (UDP, UNIX and unspecified families
//!   are refused); the address block, then TLVs, each of which must lie
//!   within the declared length (their contents are skipped); at most
//!   [`V2_MAX`] bytes in all.
//! - v1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n`, single spaces, addresses of
//!   the family named, ports in decimal without leading zeros, or
//!   `PROXY UNKNOWN ...\r\n` ([`ProxyHeader::Local`]); at most [`V1_MAX`]
//!   bytes, the CRLF included.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Decoded, ProtoError};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Most bytes of a v1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// Most bytes of a v2 header accepted: the specification has the whole
/// header fit in the smallest TCP segment (536 bytes), which leaves room for
/// an IPv6 address block and several hundred bytes of TLVs.
pub const V2_MAX: usize = 536;
/// Most bytes any accepted header has.
pub const HEADER_MAX: usize = V2_MAX;

/// What a forwarder says about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A client's connection: where it came from, and the address it reached
    /// on the forwarder.
    Proxy {
        /// The client's address: the connection's effective address.
        src: SocketAddr,
        /// The forwarder's address the client connected to.
        dst: SocketAddr,
    },
    /// The forwarder's own connection (v2 `LOCAL`, v1 `UNKNOWN`): it is
    /// served as a connection from the forwarder itself.
    Local,
}

/// The header at the front of `buf`, and how many bytes it took.
pub fn decode(buf: &[u8]) -> Decoded<ProxyHeader> {
    match buf.first() {
        None => Ok(None),
        Some(b'\r') => decode_v2(buf),
        Some(b'P') => decode_v1(buf),
        Some(_) => Err(ProtoError::BadValue("not a PROXY protocol header")),
    }
}

fn decode_v2(buf: &[u8]) -> Decoded<ProxyHeader> {
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] != V2_SIGNATURE[..sig] {
        return Err(ProtoError::BadValue("not a PROXY protocol header"));
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    if buf[12] >> 4 != 2 {
        return Err(ProtoError::BadValue("PROXY v2: version"));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + len;
    if total > V2_MAX {
        return Err(ProtoError::BadLength("PROXY v2 header"));
    }
    let command = buf[12] & 0x0F;
    if command > 1 {
        return Err(ProtoError::BadValue("PROXY v2: command"));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total];
    if command == 0 {
        // LOCAL: whatever follows is skipped.
        return Ok(Some((ProxyHeader::Local, total)));
    }
    let (header, addr_len) = match buf[13] {
        0x11 if body.len() >= 12 => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::from(
                    <[u8; 4]>::try_from(&body[at..at + 4]).unwrap(),
                ))
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            let header = ProxyHeader::Proxy {
                src: SocketAddr::new(ip(0), port(8)),
                dst: SocketAddr::new(ip(4), port(10)),
            };
            (header, 12)
        }
        0x21 if body.len() >= 36 => {
            let ip = |at: usize| {
                IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(&body[at..at + 16]).unwrap(),
                ))
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            let header = ProxyHeader::Proxy {
                src: SocketAddr::new(ip(0), port(32)),
                dst: SocketAddr::new(ip(16), port(34)),
            };
            (header, 36)
        }
        0x11 | 0x21 => return Err(ProtoError::BadLength("PROXY v2 address block")),
        _ => return Err(ProtoError::BadValue("PROXY v2: not TCP over IPv4 or IPv6")),
    };
    check_tlvs(&body[addr_len..])?;
    Ok(Some((header, total)))
}

/// Each TLV (`[u8 type][u16 length][value]`) must lie within the header.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProtoError> {
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return Err(ProtoError::BadLength("PROXY v2 TLV"));
        }
        let len = usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
        if 3 + len > tlvs.len() {
            return Err(ProtoError::BadLength("PROXY v2 TLV beyond the header"));
        }
        tlvs = &tlvs[3 + len..];
    }
    Ok(())
}

fn decode_v1(buf: &[u8]) -> Decoded<ProxyHeader> {
    const PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Err(ProtoError::BadValue("not a PROXY protocol header"));
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if window.len() >= V1_MAX {
            return Err(ProtoError::BadLength("PROXY v1 line"));
        }
        // A lone CR or LF can never become a valid line.
        let lone = window
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' || (b == b'\r' && i + 1 < window.len()));
        return if lone {
            Err(ProtoError::BadValue("PROXY v1: a lone CR or LF"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[PREFIX.len()..end])
        .map_err(|_| ProtoError::BadValue("PROXY v1: not ASCII"))?;
    if line.contains(['\r', '\n']) {
        return Err(ProtoError::BadValue("PROXY v1: a lone CR or LF"));
    }
    Ok(Some((parse_v1(line)?, end + 2)))
}

/// The fields after `PROXY `.
fn parse_v1(line: &str) -> Result<ProxyHeader, ProtoError> {
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(ProxyHeader::Local);
    }
    let fields: Vec<&str> = line.split(' ').collect();
    let [family, src, dst, sport, dport] = fields[..] else {
        return Err(ProtoError::BadValue("PROXY v1: fields"));
    };
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (
            v1_ip::<Ipv4Addr>(src)?.into(),
            v1_ip::<Ipv4Addr>(dst)?.into(),
        ),
        "TCP6" => (
            v1_ip::<Ipv6Addr>(src)?.into(),
            v1_ip::<Ipv6Addr>(dst)?.into(),
        ),
        _ => return Err(ProtoError::BadValue("PROXY v1: not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(ProxyHeader::Proxy {
        src: SocketAddr::new(src, v1_port(sport)?),
        dst: SocketAddr::new(dst, v1_port(dport)?),
    })
}

fn v1_ip<T: std::str::FromStr>(text: &str) -> Result<T, ProtoError> {
    text.parse()
        .map_err(|_| ProtoError::BadValue("PROXY v1: address"))
}

/// A port in decimal, no sign, no leading zero.
fn v1_port(text: &str) -> Result<u16, ProtoError> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(ProtoError::BadValue("PROXY v1: port"));
    }
    text.parse()
        .map_err(|_| ProtoError::BadValue("PROXY v1: port"))
}

/// Encodes a header (for tests and tools; the proxy only reads them): v2
/// with `PROXY` and TCP, or `LOCAL`.
pub fn encode_v2(header: &ProxyHeader, tlvs: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    let mut body = Vec::new();
    let (command, family) = match header {
        ProxyHeader::Local => (0x20, 0x00),
        ProxyHeader::Proxy { src, dst } => {
            let family = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    body.extend_from_slice(&s.octets());
                    body.extend_from_slice(&d.octets());
                    0x11
                }
                (s, d) => {
                    body.extend_from_slice(&to_v6(s).octets());
                    body.extend_from_slice(&to_v6(d).octets());
                    0x21
                }
            };
            body.extend_from_slice(&src.port().to_be_bytes());
            body.extend_from_slice(&dst.port().to_be_bytes());
            (0x21, family)
        }
    };
    body.extend_from_slice(tlvs);
    out.push(command);
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_lines_of_the_specification() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /";
        assert_eq!(
            decode(line),
            Ok(Some((
                ProxyHeader::Proxy {
                    src: addr("192.168.0.1:56324"),
                    dst: addr("192.168.0.11:443")
                },
                line.len() - 5
            )))
        );
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 1\r\n";
        assert!(matches!(
            decode(v6),
            Ok(Some((ProxyHeader::Proxy { .. }, 44)))
        ));
        assert_eq!(
            decode(b"PROXY UNKNOWN\r\n"),
            Ok(Some((ProxyHeader::Local, 15)))
        );
        assert_eq!(
            decode(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").map(|d| d.map(|(h, _)| h)),
            Ok(Some(ProxyHeader::Local))
        );
        // Every prefix of a valid line asks for more.
        for cut in 0..line.len() - 5 {
            assert_eq!(decode(&line[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn v1_refuses_what_the_specification_does_not_allow() {
        for bad in [
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n"[..], // leading zero
            b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n",      // two spaces
            b"PROXY TCP4 2001:db8::1 192.168.0.11 1 2\r\n",             // wrong family
            b"PROXY TCP6 192.168.0.1 192.168.0.11 1 2\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 2\r\n", // port too large
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +1 2\r\n",
            b"PROXY UDP4 192.168.0.1 192.168.0.11 1 2\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 1\r\n",
            b"PROXY TCP4 1.2.3.4\n",  // a lone LF
            b"PROXY TCP4 1.2.3.4\rx", // a lone CR
            b"PROXYTCP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"GET / HTTP/1.0\r\n",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // No CRLF within 107 bytes.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert_eq!(decode(&long), Err(ProtoError::BadLength("PROXY v1 line")));
        assert_eq!(decode(&long[..V1_MAX - 1]), Ok(None));
    }

    #[test]
    fn v2_round_trips_and_is_read_whole() {
        for (src, dst) in [
            ("10.1.2.3:4000", "10.9.9.9:7702"),
            ("[2001:db8::7]:1", "[2001:db8::8]:65535"),
        ] {
            let header = ProxyHeader::Proxy {
                src: addr(src),
                dst: addr(dst),
            };
            let mut wire = Vec::new();
            encode_v2(&header, &[0x04, 0x00, 0x02, 0, 0], &mut wire); // a NOOP TLV
            let len = wire.len();
            wire.extend_from_slice(b"after");
            assert_eq!(decode(&wire), Ok(Some((header, len))));
            for cut in 0..len {
                assert_eq!(decode(&wire[..cut]), Ok(None), "cut at {cut}");
            }
        }
        let mut local = Vec::new();
        encode_v2(&ProxyHeader::Local, &[1, 2, 3], &mut local);
        assert_eq!(decode(&local), Ok(Some((ProxyHeader::Local, 19))));
    }

    #[test]
    fn v2_refuses_other_versions_commands_families_and_lengths() {
        let header = ProxyHeader::Proxy {
            src: addr("10.1.2.3:4000"),
            dst: addr("10.9.9.9:7702"),
        };
        let mut good = Vec::new();
        encode_v2(&header, &[], &mut good);
        let with = |at: usize, byte: u8| {
            let mut b = good.clone();
            b[at] = byte;
            b
        };
        assert!(decode(&with(12, 0x11)).is_err(), "version 1");
        assert!(decode(&with(12, 0x22)).is_err(), "command 2");
        assert!(decode(&with(13, 0x12)).is_err(), "UDP");
        assert!(decode(&with(13, 0x31)).is_err(), "UNIX");
        assert!(decode(&with(13, 0x00)).is_err(), "UNSPEC with PROXY");
        assert!(decode(&with(15, 11)).is_err(), "address block cut short");
        assert!(decode(&with(3, b'X')).is_err(), "signature");
        assert!(decode(&with(0, b'X')).is_err(), "first byte");
        // A TLV that runs past the declared length.
        let mut tlv = Vec::new();
        encode_v2(&header, &[0x05, 0x00, 0x09, 1, 2], &mut tlv);
        assert_eq!(
            decode(&tlv),
            Err(ProtoError::BadLength("PROXY v2 TLV beyond the header"))
        );
        // Longer than a header may be.
        let mut huge = good.clone();
        huge[14..16].copy_from_slice(&((V2_MAX - 15) as u16).to_be_bytes());
        assert_eq!(decode(&huge), Err(ProtoError::BadLength("PROXY v2 header")));
    }
}
