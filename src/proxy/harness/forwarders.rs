//! The PROXY protocol stage (`client.proxy_protocol = "required"`, seed
//! 002's forwarders) through the harness: who may send a header, what a
//! header changes, and every way one is refused.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Harness, msg, player_addr};
use crate::config::{Cidr, Config, Networks, ProxyProtocol};
use crate::cryptchan::TOKEN_BYTES;
use crate::proto::client::AuthProof;
use crate::proto::proxy_protocol::{ProxyHeader, V2_SIGNATURE, encode_v2};
use crate::proto::proxy_shard::FProxyMsg;
use crate::proxy::refusals::Refusal;

/// The forwarder every test trusts: `10.9.0.0/16`.
fn forwarder(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 9, 0, last], 50_000))
}

fn behind_forwarders(cfg: &mut Config) {
    cfg.client.proxy_protocol = ProxyProtocol::Required;
    cfg.client.trusted_forwarders = Networks(vec![Cidr::parse("10.9.0.0/16").unwrap()]);
}

fn v2(src: SocketAddr) -> Vec<u8> {
    let mut out = Vec::new();
    let dst = SocketAddr::from(([10, 9, 0, 1], 7000));
    encode_v2(&ProxyHeader::Proxy { src, dst }, &[], &mut out);
    out
}

fn v1(src: SocketAddr) -> Vec<u8> {
    format!("PROXY TCP4 {} 10.9.0.1 {} 7000\r\n", src.ip(), src.port()).into_bytes()
}

/// Sends `account`'s auth proof through the connection.
fn authenticate(
    h: &mut Harness,
    conn: crate::com::ConnRef,
    account: &str,
    token: &[u8; TOKEN_BYTES],
) {
    let mut proof = Vec::new();
    AuthProof {
        account_name: account,
        shard_name: "shard-x",
        token,
    }
    .encode(&mut proof);
    h.send_frame(conn, &proof);
}

fn told_addr(h: &mut Harness) -> SocketAddr {
    match msg(&h.shard_recv(0)) {
        FProxyMsg::PlayerCryptchan { addr, .. } => addr,
        other => panic!("expected FPROXY_MSG_PLAYER_CRYPTCHAN, got {other:?}"),
    }
}

#[test]
fn the_header_sets_the_address_admission_checks_and_the_shard_is_told() {
    let mut h = Harness::new(behind_forwarders);
    let (_, token) = h.reserve("alice", player_addr(1));
    let header = v2(player_addr(1));
    let conn = h.connect_with(forwarder(1), &[&header]).unwrap();
    assert_eq!(h.proxy.clients.get(conn).unwrap().addr(), player_addr(1));
    assert_eq!(h.proxy.clients.get(conn).unwrap().peer(), forwarder(1));
    authenticate(&mut h, conn, "alice", &token);
    assert_eq!(told_addr(&mut h), player_addr(1));
    assert!(!h.is_closed(conn));
}

#[test]
fn a_header_split_across_reads_is_kept_until_complete_v1_and_v2() {
    let mut h = Harness::new(behind_forwarders);
    for (i, header) in [v1(player_addr(2)), v2(player_addr(3))].iter().enumerate() {
        let from = player_addr(2 + i as u8);
        let (_, token) = h.reserve(&format!("split-{i}"), from);
        let pieces: Vec<&[u8]> = header.chunks(5).collect();
        let conn = h.connect_with(forwarder(2), &pieces).unwrap();
        authenticate(&mut h, conn, &format!("split-{i}"), &token);
        assert_eq!(told_addr(&mut h), from, "header {i}");
    }
}

#[test]
fn an_untrusted_address_is_refused_before_anything_is_read() {
    let mut h = Harness::new(behind_forwarders);
    h.reserve("mallory", player_addr(4));
    assert!(
        h.connect_with(player_addr(4), &[&v2(player_addr(4))])
            .is_none()
    );
    assert_eq!(h.proxy.clients.in_use(), 0, "refused before taking a slot");
    let refusals = h.proxy.stats().refusals;
    assert_eq!(refusals.total(Refusal::UntrustedForwarder), 1);
}

#[test]
fn every_malformed_header_closes_that_connection_alone() {
    let mut h = Harness::new(behind_forwarders);
    h.reserve("bystander", player_addr(5));
    let bystander = h
        .connect_with(forwarder(3), &[&v2(player_addr(5))])
        .unwrap();
    let mut udp = v2(player_addr(6));
    udp[13] = 0x12; // IPv4 over UDP
    let mut version = v2(player_addr(6));
    version[12] = 0x11; // version 1 in the binary form
    let mut long = V2_SIGNATURE.to_vec();
    long.extend_from_slice(&[0x21, 0x11, 0x03, 0x00]); // 768 bytes declared: over V2_MAX
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("the handshake's first byte", vec![1u8; 33]),
        ("garbage", b"GET / HTTP/1.1\r\n".to_vec()),
        ("v2 over UDP", udp),
        ("v2 with version 1", version),
        ("v2 longer than its bound", long),
        (
            "v1 without its CRLF",
            [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat(),
        ),
        (
            "v1 bad address",
            b"PROXY TCP4 1.2.3 10.9.0.1 5 7000\r\n".to_vec(),
        ),
        (
            "v1 family mismatch",
            b"PROXY TCP6 1.2.3.4 10.9.0.1 5 7000\r\n".to_vec(),
        ),
    ];
    let n = cases.len() as u64;
    for (what, bytes) in cases {
        let conn = h.connect_with(forwarder(4), &[&bytes]).unwrap();
        assert!(h.is_closed(conn), "{what}: not closed");
    }
    let refusals = h.proxy.stats().refusals;
    assert_eq!(refusals.total(Refusal::BadProxyHeader), n);
    assert!(!h.is_closed(bystander), "the bystander is untouched");
}

#[test]
fn a_trusted_forwarder_that_sends_no_header_is_closed_at_its_deadline() {
    let mut h = Harness::new(|cfg| {
        behind_forwarders(cfg);
        cfg.client.handshake_timeout_ms = 30_000;
    });
    let start = h.now;
    let half = v2(player_addr(7));
    let conn = h.connect_silent(forwarder(5), &[&half[..20]]).unwrap();
    h.advance(Duration::from_millis(2_900));
    assert!(h.proxy.clients.get(conn).is_some(), "open before 3 s");
    h.advance(Duration::from_millis(1_200));
    assert!(h.is_closed(conn), "closed once 3 s passed");
    assert!(h.now - start <= Duration::from_millis(4_100));
    let refusals = h.proxy.stats().refusals;
    assert_eq!(refusals.total(Refusal::ProxyHeaderTimeout), 1);
}

#[test]
fn local_is_the_forwarder_itself_and_admission_decides_on_its_address() {
    let mut local = Vec::new();
    encode_v2(&ProxyHeader::Local, &[], &mut local);
    // The forwarder's address is announced by no shard: refused.
    let mut h = Harness::new(behind_forwarders);
    let conn = h.connect_with(forwarder(6), &[&local]).unwrap();
    assert!(h.is_closed(conn));
    assert_eq!(h.proxy.stats().refusals.total(Refusal::NotAnnounced), 1);
    // Without the announced-address check it goes on to the handshake as
    // the forwarder (a health check that then hangs up).
    let mut h = Harness::new(|cfg| {
        behind_forwarders(cfg);
        cfg.client.require_announced_ip = false;
    });
    let conn = h.connect_with(forwarder(6), &[&local]).unwrap();
    assert!(!h.is_closed(conn));
    assert_eq!(h.proxy.clients.get(conn).unwrap().addr(), forwarder(6));
}

#[test]
fn with_the_protocol_off_a_header_is_just_bad_input() {
    let mut h = Harness::new(|_| {});
    h.reserve("plain", forwarder(7));
    let conn = h
        .connect_with(forwarder(7), &[&v2(player_addr(8))])
        .unwrap();
    assert!(h.is_closed(conn));
    assert_eq!(h.proxy.stats().refusals.total(Refusal::BadProxyHeader), 0);
}
