//! The proxy's limits under attack (`proxy/limits.rs`, issue "Under
//! attack") through the harness, on the virtual clock: each limit refuses
//! what passes it, before the key exchange where it can, and leaves every
//! other client alone.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Harness, msg, player_addr};
use crate::config::Config;
use crate::proto::client::ClientMsg;
use crate::proto::proxy_shard::{CLOSE_REASON_LIMIT, FProxyMsg, TProxyMsg};
use crate::proxy::limits::AddrKey;
use crate::proxy::refusals::Refusal;

fn open_door(cfg: &mut Config) {
    cfg.client.require_announced_ip = false;
}

fn refused(h: &Harness, class: Refusal) -> u64 {
    h.proxy.stats().refusals.total(class)
}

fn pings(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        ClientMsg::Ping { time: i as u64 }.encode(&mut out);
    }
    out
}

#[test]
fn one_address_is_held_to_its_connections_and_the_others_are_not() {
    let mut h = Harness::new(|cfg| {
        open_door(cfg);
        cfg.client.max_conns_per_addr = 3;
    });
    let mut conns: Vec<_> = (0..3)
        .map(|_| h.connect(player_addr(1)).expect("under the cap"))
        .collect();
    assert!(h.connect(player_addr(1)).is_none(), "the fourth is refused");
    assert_eq!(h.proxy.clients.in_use(), 3, "refused before taking a slot");
    assert_eq!(refused(&h, Refusal::AddrConns), 1);
    assert!(
        h.connect(player_addr(2)).is_some(),
        "another address is not affected"
    );
    // One leaves: room for one more.
    h.hang_up(conns.pop().unwrap());
    assert!(h.connect(player_addr(1)).is_some());
}

#[test]
fn ipv6_addresses_count_by_their_64() {
    let mut h = Harness::new(|cfg| {
        open_door(cfg);
        cfg.client.max_conns_per_addr = 2;
    });
    let a: SocketAddr = "[2001:db8:7:7::1]:5000".parse().unwrap();
    let b: SocketAddr = "[2001:db8:7:7:ffff::2]:5000".parse().unwrap();
    let c: SocketAddr = "[2001:db8:7:8::1]:5000".parse().unwrap();
    assert!(h.connect(a).is_some() && h.connect(b).is_some());
    assert!(h.connect(a).is_none(), "the /64 has its two");
    assert!(h.connect(c).is_some(), "the next /64 is another subscriber");
}

#[test]
fn one_address_opening_too_fast_is_refused_until_its_bucket_refills() {
    let mut h = Harness::new(|cfg| {
        open_door(cfg);
        cfg.client.new_conns_per_addr_burst = 4;
        cfg.client.new_conns_per_addr_per_s = 2;
    });
    for _ in 0..4 {
        let conn = h.connect(player_addr(3)).expect("within the burst");
        h.hang_up(conn);
    }
    assert!(h.connect(player_addr(3)).is_none());
    assert!(h.connect(player_addr(3)).is_none());
    assert_eq!(refused(&h, Refusal::AddrRate), 2);
    h.advance(Duration::from_millis(500));
    assert!(h.connect(player_addr(3)).is_some(), "a token every 500 ms");
    assert!(h.connect(player_addr(3)).is_none());
}

#[test]
fn handshakes_of_all_clients_together_are_capped() {
    let mut h = Harness::new(|cfg| {
        open_door(cfg);
        cfg.client.handshakes_burst = 5;
        cfg.client.handshakes_per_s = 10;
    });
    for i in 0..5 {
        assert!(h.connect(player_addr(10 + i)).is_some(), "within the burst");
    }
    assert!(h.connect(player_addr(20)).is_none());
    assert_eq!(refused(&h, Refusal::HandshakeRate), 1);
    // The refused address did not keep a count: it comes in later.
    h.advance(Duration::from_millis(100));
    assert!(h.connect(player_addr(20)).is_some());
    let key = AddrKey::of(player_addr(20).ip());
    assert_eq!(h.proxy.addrs.conns(key), 1);
}

#[test]
fn a_flood_holds_only_its_share_and_players_who_logged_in_still_get_in() {
    let mut h = Harness::new(|cfg| {
        open_door(cfg);
        cfg.client.max_clients = 16;
        cfg.client.unauthenticated_max_pct = 25; // 4 slots
    });
    // Four idle connections from four addresses: the share is full.
    for i in 0..4 {
        assert!(h.connect_silent(player_addr(100 + i), &[]).is_some());
    }
    assert!(h.connect_silent(player_addr(104), &[]).is_none());
    assert_eq!(refused(&h, Refusal::UnauthenticatedFull), 1);
    // The shard can still reserve the rest of the slots for players who
    // log in (16 - 4 connections)...
    let mut players = Vec::new();
    for i in 0..3 {
        let (conn, socket_id, _) = h.player(&format!("honest-{i}"), player_addr(1 + i));
        players.push((conn, socket_id));
    }
    // ...and each of them gets past the full share: its address was
    // announced. Playing, they no longer count against it.
    let msgs = pings(1);
    for &(conn, socket_id) in &players {
        h.send_frame(conn, &msgs);
        assert_eq!(
            msg(&h.shard_recv(0)),
            FProxyMsg::PlayerPacket {
                socket_id,
                data: &msgs
            }
        );
    }
    // The flood is cut at the handshake deadline, and the share is free.
    h.advance(Duration::from_secs(6));
    assert!(h.connect_silent(player_addr(104), &[]).is_some());
    assert_eq!(refused(&h, Refusal::HandshakeTimeout), 4);
}

#[test]
fn a_player_over_its_message_budget_is_cut_off_and_its_shard_told() {
    let mut h = Harness::new(|cfg| {
        cfg.client.player_msgs_per_s = 10;
        cfg.client.player_msgs_burst = 20;
    });
    let (bystander, bystander_id, _) = h.player("calm", player_addr(1));
    let (flooder, socket_id, _) = h.player("flood", player_addr(2));
    for _ in 0..4 {
        h.send_frame(flooder, &pings(5));
        let _ = h.shard_recv(0); // forwarded: within the burst
    }
    h.send_frame(flooder, &pings(5));
    assert!(h.is_closed(flooder), "over its budget");
    assert_eq!(
        msg(&h.shard_recv(0)),
        FProxyMsg::CloseSocket {
            socket_id,
            reason: CLOSE_REASON_LIMIT
        }
    );
    assert_eq!(refused(&h, Refusal::OverBudget), 1);
    // The budget refills: the bystander, at its own pace, plays on.
    for _ in 0..3 {
        h.advance(Duration::from_secs(1));
        h.send_frame(bystander, &pings(10));
        assert!(matches!(
            msg(&h.shard_recv(0)),
            FProxyMsg::PlayerPacket { socket_id, .. } if socket_id == bystander_id
        ));
    }
}

#[test]
fn a_player_over_its_byte_budget_is_cut_off() {
    let mut h = Harness::new(|cfg| {
        cfg.client.player_bytes_per_s = 1024;
        cfg.client.player_bytes_burst = 8192;
        cfg.client.in_buf_size = 8192;
    });
    let (conn, socket_id, _) = h.player("big", player_addr(3));
    let echo = |n: u8| {
        let mut out = Vec::new();
        ClientMsg::Echo {
            seq: u32::from(n),
            time_us: 0,
            data: &[n; 1000],
        }
        .encode(&mut out);
        out
    };
    for i in 0..8 {
        h.send_frame(conn, &echo(i));
        let _ = h.shard_recv(0);
    }
    h.send_frame(conn, &echo(8));
    assert!(h.is_closed(conn));
    assert_eq!(
        msg(&h.shard_recv(0)),
        FProxyMsg::CloseSocket {
            socket_id,
            reason: CLOSE_REASON_LIMIT
        }
    );
}

#[test]
fn a_backed_up_shard_link_cuts_off_the_player_who_fills_it_never_the_link() {
    let mut h = Harness::new(|cfg| {
        cfg.shard.out_buf_size = 64 * 1024;
        // The link's own reserve: an eighth of it (16 players need less).
        cfg.client.max_clients = 16;
        cfg.client.player_bytes_per_s = 1 << 30;
        cfg.client.player_bytes_burst = 1 << 30;
    });
    let (bystander, bystander_id, mut push) = h.player("calm", player_addr(1));
    let (flooder, _, _) = h.player("flood", player_addr(2));
    let link = h.link(0).unwrap();
    h.stall_shard(0, true);
    let mut big = Vec::new();
    ClientMsg::Echo {
        seq: 0,
        time_us: 0,
        data: &[7; 1000],
    }
    .encode(&mut big);
    let mut sent = 0;
    while !h.is_closed(flooder) {
        h.send_frame(flooder, &big);
        sent += 1;
        assert!(sent < 100, "the flooder was never cut off");
    }
    // About 7/8 of 64 KiB went in; the link is the same link, up.
    assert!(sent > 40, "cut off after {sent} frames");
    assert_eq!(h.link(0), Some(link), "the shard link was dropped");
    assert_eq!(refused(&h, Refusal::LinkBacklogged), 1);
    // The shard reads again: what was queued arrives, the bystander plays.
    h.stall_shard(0, false);
    while !h.shard_quiet(0) {
        let _ = h.shard_recv(0);
    }
    let m = pings(1);
    h.send_frame(bystander, &m);
    assert_eq!(
        msg(&h.shard_recv(0)),
        FProxyMsg::PlayerPacket {
            socket_id: bystander_id,
            data: &m
        }
    );
    let frame = Harness::shard_frame(&mut push, b"\x0a\x01\x00\x00\x00\x00\x00\x00\x00");
    h.shard_send(
        0,
        &TProxyMsg::PlayerPacket {
            socket_id: bystander_id,
            data: &frame,
        },
    );
    assert!(h.player_recv(bystander).is_some());
}

/// Shard 0 asks for a reservation of `account` from `ip`: the proxy's
/// answer (after a `FPROXY_MSG_CLOSE_SOCKET` for a replaced one, if any).
fn opened(h: &mut Harness, socket_id: u32, account: &str, ip: &str) -> u8 {
    h.shard_send(
        0,
        &TProxyMsg::OpenedSocket {
            socket_id,
            account_id: u64::from(socket_id),
            login_session_id: socket_id,
            ip: ip.parse().unwrap(),
            account_name: account,
            token: &[0; crate::cryptchan::TOKEN_BYTES],
        },
    );
    loop {
        match msg(&h.shard_recv(0)) {
            FProxyMsg::OpenedSocketResult {
                socket_id: s,
                result,
            } if s == socket_id => {
                return result;
            }
            FProxyMsg::CloseSocket { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn one_address_holds_no_more_reservations_than_connections() {
    use crate::proto::proxy_shard::{OPENED_SOCKET_FULL, OPENED_SOCKET_OK};
    let mut h = Harness::new(|cfg| cfg.client.max_conns_per_addr = 2);
    assert_eq!(
        opened(&mut h, 900, "squat-0", "192.168.0.40"),
        OPENED_SOCKET_OK
    );
    assert_eq!(
        opened(&mut h, 901, "squat-1", "192.168.0.40"),
        OPENED_SOCKET_OK
    );
    // The third login from the address: refused as full, for that address.
    assert_eq!(
        opened(&mut h, 902, "squat-2", "192.168.0.40"),
        OPENED_SOCKET_FULL
    );
    assert_eq!(refused(&h, Refusal::ReservationsPerAddr), 1);
    // A newer login of an account already reserved replaces it: no more.
    assert_eq!(
        opened(&mut h, 903, "squat-0", "192.168.0.40"),
        OPENED_SOCKET_OK
    );
    // Another address still reserves; an IPv6 /64 counts as one address.
    assert_eq!(
        opened(&mut h, 904, "other", "192.168.0.41"),
        OPENED_SOCKET_OK
    );
    assert_eq!(
        opened(&mut h, 905, "v6-a", "2001:db8:5:5::1"),
        OPENED_SOCKET_OK
    );
    assert_eq!(
        opened(&mut h, 906, "v6-b", "2001:db8:5:5::2"),
        OPENED_SOCKET_OK
    );
    assert_eq!(
        opened(&mut h, 907, "v6-c", "2001:db8:5:5::3"),
        OPENED_SOCKET_FULL
    );
    assert_eq!(
        opened(&mut h, 908, "v6-d", "2001:db8:5:6::1"),
        OPENED_SOCKET_OK
    );
}
