//! The proxy's rules (thesis §3.8), driven through the harness without
//! sockets on a virtual clock: the rules `tests/proxy_rules.rs` checks
//! through sockets, plus the timing ones a real clock makes slow or flaky
//! (exact deadlines, reconnect periods) and the shard-loss cases.

use std::time::Duration;

use super::{Harness, ShardState, msg, player_addr, shard_addr};
use crate::cryptchan::{KeyPair, TOKEN_BYTES, random_bytes};
use crate::proto::client::{AuthProof, ClientMsg};
use crate::proto::proxy_shard::{
    CLOSE_REASON_FILTERED, CLOSE_REASON_LEFT, CLOSE_REASON_REPLACED, CLOSE_REASON_TIMEOUT,
    FProxyMsg, LOGIN_RESULT_BAD_PASSWORD, LOGIN_RESULT_OK, OPENED_SOCKET_DUPLICATE,
    OPENED_SOCKET_FULL, OPENED_SOCKET_OK, TProxyMsg,
};
use crate::proxy::refusals::Refusal;

fn encode(msgs: &[ClientMsg<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode(&mut out);
    }
    out
}

fn proof(account: &str, token: &[u8; TOKEN_BYTES]) -> Vec<u8> {
    let mut out = Vec::new();
    AuthProof {
        account_name: account,
        shard_name: "shard-x",
        token,
    }
    .encode(&mut out);
    out
}

fn expect_close(h: &mut Harness, socket_id: u32, reason: u8) {
    let bytes = h.shard_recv(0);
    assert_eq!(msg(&bytes), FProxyMsg::CloseSocket { socket_id, reason });
}

#[test]
fn packets_flow_both_ways_untouched_and_a_leaving_player_is_reported() {
    let mut h = Harness::new(|_| {});
    let (conn, socket_id, mut push) = h.player("alice", player_addr(1));
    // Client to shard: the frame's plaintext, in FPROXY_MSG_PLAYER_PACKET.
    let msgs = encode(&[ClientMsg::Ping { time: 1 }, ClientMsg::Chat { text: b"hi" }]);
    h.send_frame(conn, &msgs);
    let bytes = h.shard_recv(0);
    assert_eq!(
        msg(&bytes),
        FProxyMsg::PlayerPacket {
            socket_id,
            data: &msgs
        }
    );
    // Shard to client: encrypted by the shard, passed through as it is.
    let frame = Harness::shard_frame(&mut push, b"\x0a\x01\x00\x00\x00\x00\x00\x00\x00");
    h.shard_send(
        0,
        &TProxyMsg::PlayerPacket {
            socket_id,
            data: &frame,
        },
    );
    assert_eq!(
        h.player_recv(conn).as_deref(),
        Some(&b"\x0a\x01\x00\x00\x00\x00\x00\x00\x00"[..])
    );
    assert_eq!(h.proxy.stats().packets_to_clients, 1);
    h.hang_up(conn);
    expect_close(&mut h, socket_id, CLOSE_REASON_LEFT);
}

#[test]
fn every_filtering_case_disconnects_that_player_alone_and_tells_its_shard() {
    let mut h = Harness::new(|_| {});
    let (bystander, bystander_id, _) = h.player("bystander", player_addr(1));
    let mut unknown_type = vec![99u8];
    unknown_type.extend_from_slice(&[0; 8]);
    let mut bad_length = vec![12u8, 250]; // CLMSG_CHAT at most 200
    bad_length.extend_from_slice(&[b'x'; 250]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown type", unknown_type),
        ("wrong size", vec![10u8, 1, 2, 3]), // CLMSG_PING is 8 bytes after its type
        ("bad length field", bad_length),
        ("auth proof after auth", proof("x", &[0; TOKEN_BYTES])),
    ];
    for (i, (what, plaintext)) in cases.into_iter().enumerate() {
        let (conn, socket_id, _) = h.player(&format!("bad-{i}"), player_addr(10 + i as u8));
        h.send_frame(conn, &plaintext);
        assert!(h.is_closed(conn), "{what}: the player was not disconnected");
        expect_close(&mut h, socket_id, CLOSE_REASON_FILTERED);
    }
    // A failed MAC, a frame longer than allowed.
    let (conn, socket_id, _) = h.player("tamper", player_addr(20));
    let mut frame = h.seal_frame(conn, &encode(&[ClientMsg::Ping { time: 5 }]));
    let last = frame.len() - 1;
    frame[last] ^= 0x80;
    h.send_raw(conn, &frame);
    assert!(h.is_closed(conn), "tampered frame: not disconnected");
    expect_close(&mut h, socket_id, CLOSE_REASON_FILTERED);
    let (conn, socket_id, _) = h.player("too-long", player_addr(21));
    h.send_raw(conn, &[0xFF, 0xFF, 1, 2, 3]);
    assert!(h.is_closed(conn), "oversized frame: not disconnected");
    expect_close(&mut h, socket_id, CLOSE_REASON_FILTERED);
    assert_eq!(h.proxy.stats().filtered, 4);
    // The bystander was never affected.
    let msgs = encode(&[ClientMsg::Ping { time: 9 }]);
    h.send_frame(bystander, &msgs);
    let bytes = h.shard_recv(0);
    assert_eq!(
        msg(&bytes),
        FProxyMsg::PlayerPacket {
            socket_id: bystander_id,
            data: &msgs
        }
    );
}

#[test]
fn admission_runs_on_the_address_before_the_connection_takes_a_slot() {
    let mut h = Harness::new(|_| {});
    assert!(h.connect(player_addr(1)).is_none(), "no shard announced it");
    assert_eq!(h.proxy.clients.in_use(), 0, "refused before taking a slot");
    assert_eq!(h.proxy.stats().refusals.total(Refusal::NotAnnounced), 1);
    h.reserve("ann", player_addr(1));
    assert!(h.connect(player_addr(1)).is_some());
    // IPv4-mapped IPv6 is the same address.
    let mapped = "[::ffff:192.168.0.1]:5".parse().unwrap();
    assert!(h.connect(mapped).is_some());
}

#[test]
fn a_proof_from_another_address_than_announced_is_refused() {
    let mut h = Harness::new(|_| {});
    let (_, token) = h.reserve("roamer", player_addr(9));
    h.reserve("someone-else", player_addr(1)); // lets .1 past admission
    let conn = h.connect(player_addr(1)).unwrap();
    h.send_frame(conn, &proof("roamer", &token));
    assert!(h.is_closed(conn));
    assert_eq!(h.proxy.stats().auth_failed, 1);
    assert_eq!(h.proxy.n_reserved(), 2, "a refused proof claims nothing");
}

#[test]
fn with_require_announced_ip_off_the_address_is_not_checked() {
    let mut h = Harness::new(|cfg| cfg.client.require_announced_ip = false);
    let (socket_id, token) = h.reserve("roamer", player_addr(9));
    let conn = h.connect(player_addr(1)).unwrap();
    h.send_frame(conn, &proof("roamer", &token));
    let bytes = h.shard_recv(0);
    assert!(
        matches!(msg(&bytes), FProxyMsg::PlayerCryptchan { socket_id: s, .. } if s == socket_id)
    );
}

#[test]
fn reservations_answer_full_and_duplicate_and_expire_at_their_deadline() {
    let mut h = Harness::new(|cfg| {
        cfg.client.max_clients = 2;
        cfg.client.reservation_timeout_ms = 1500;
    });
    let (first, _) = h.reserve("a", player_addr(1));
    let token = [1u8; TOKEN_BYTES];
    let opened = |socket_id, name| TProxyMsg::OpenedSocket {
        socket_id,
        account_id: 9,
        login_session_id: 9,
        ip: player_addr(1).ip(),
        account_name: name,
        token: &token,
    };
    h.shard_send(0, &opened(first, "b"));
    let bytes = h.shard_recv(0);
    assert_eq!(
        msg(&bytes),
        FProxyMsg::OpenedSocketResult {
            socket_id: first,
            result: OPENED_SOCKET_DUPLICATE
        }
    );
    let (second, _) = h.reserve("b", player_addr(1));
    h.shard_send(0, &opened(999, "c"));
    let bytes = h.shard_recv(0);
    assert_eq!(
        msg(&bytes),
        FProxyMsg::OpenedSocketResult {
            socket_id: 999,
            result: OPENED_SOCKET_FULL
        }
    );
    // Checked once a second: still there at 1.0 s, gone by the tick at 2.0 s.
    h.advance(Duration::from_millis(1000));
    assert!(h.shard_quiet(0), "expired early");
    assert_eq!(h.proxy.n_reserved(), 2);
    h.advance(Duration::from_millis(1000));
    let mut expired = vec![];
    for _ in 0..2 {
        let bytes = h.shard_recv(0);
        match msg(&bytes) {
            FProxyMsg::CloseSocket {
                socket_id,
                reason: CLOSE_REASON_TIMEOUT,
            } => expired.push(socket_id),
            other => panic!("{other:?}"),
        }
    }
    expired.sort();
    assert_eq!(expired, [first, second]);
    assert_eq!(h.proxy.n_reserved(), 0);
    assert!(
        h.connect(player_addr(1)).is_none(),
        "the address is no longer announced"
    );
}

#[test]
fn a_newer_reservation_of_the_same_account_replaces_the_old_one() {
    let mut h = Harness::new(|_| {});
    let (old, old_token) = h.reserve("twice", player_addr(1));
    let mut new_token = [0u8; TOKEN_BYTES];
    random_bytes(&mut new_token);
    h.shard_send(
        0,
        &TProxyMsg::OpenedSocket {
            socket_id: 500,
            account_id: 7,
            login_session_id: 2,
            ip: player_addr(1).ip(),
            account_name: "twice",
            token: &new_token,
        },
    );
    expect_close(&mut h, old, CLOSE_REASON_REPLACED);
    let bytes = h.shard_recv(0);
    assert_eq!(
        msg(&bytes),
        FProxyMsg::OpenedSocketResult {
            socket_id: 500,
            result: OPENED_SOCKET_OK
        }
    );
    assert_eq!(h.proxy.n_reserved(), 1);
    let stale = h.connect(player_addr(1)).unwrap();
    h.send_frame(stale, &proof("twice", &old_token));
    assert!(h.is_closed(stale), "the replaced token must be refused");
    let fresh = h.connect(player_addr(1)).unwrap();
    h.send_frame(fresh, &proof("twice", &new_token));
    let bytes = h.shard_recv(0);
    assert!(matches!(
        msg(&bytes),
        FProxyMsg::PlayerCryptchan { socket_id: 500, .. }
    ));
    // A token works once.
    let replay = h.connect(player_addr(1));
    assert!(
        replay.is_none(),
        "the address was announced for that one reservation only"
    );
}

#[test]
fn the_shard_closing_a_socket_disconnects_the_player_without_an_echo_back() {
    let mut h = Harness::new(|_| {});
    let (kicked, socket_id, _) = h.player("kicked", player_addr(1));
    let (stays, stays_id, _) = h.player("stays", player_addr(2));
    h.shard_send(0, &TProxyMsg::ClosedSocket { socket_id });
    assert!(h.is_closed(kicked));
    assert!(
        h.shard_quiet(0),
        "the shard is not told of its own decision"
    );
    h.hang_up(stays);
    expect_close(&mut h, stays_id, CLOSE_REASON_LEFT);
}

#[test]
fn a_handshake_not_finished_by_its_deadline_is_cut_off_by_the_next_tick() {
    let mut h = Harness::new(|cfg| cfg.client.handshake_timeout_ms = 1500);
    h.reserve("slow", player_addr(1));
    let (socket_id, token) = h.reserve("quick", player_addr(1));
    let slow = h.connect(player_addr(1)).unwrap();
    let quick = h.connect(player_addr(1)).unwrap();
    h.advance(Duration::from_millis(1000));
    assert!(!h.is_closed(slow), "1.0 s of 1.5");
    h.send_frame(quick, &proof("quick", &token));
    let bytes = h.shard_recv(0);
    assert!(
        matches!(msg(&bytes), FProxyMsg::PlayerCryptchan { socket_id: s, .. } if s == socket_id)
    );
    h.advance(Duration::from_millis(1000));
    assert!(h.is_closed(slow), "past the deadline at the 2 s tick");
    assert!(!h.is_closed(quick), "a player that proved in time stays");
}

#[test]
fn an_idle_player_is_disconnected_and_its_shard_told() {
    let mut h = Harness::new(|cfg| cfg.client.idle_timeout_ms = 2000);
    let (conn, socket_id, _) = h.player("idle", player_addr(1));
    h.advance(Duration::from_millis(1900));
    assert!(!h.is_closed(conn));
    h.advance(Duration::from_millis(1100));
    assert!(h.is_closed(conn));
    expect_close(&mut h, socket_id, CLOSE_REASON_TIMEOUT);
}

#[test]
fn a_shard_with_another_key_than_the_pinned_one_is_never_sent_the_password() {
    let pinned = KeyPair::generate().public();
    let mut h = Harness::with(1, |_| {}, Some(pinned));
    h.drive();
    assert_eq!(h.link(0), None, "the link was dropped in the handshake");
    assert!(h.shard_quiet(0));
}

#[test]
fn a_wrong_password_drops_the_link_and_the_next_attempt_comes_after_the_retry_period() {
    let mut h = Harness::with(1, |cfg| cfg.shard.connect_retry_ms = 2000, None);
    h.drive();
    let login = h.shard_recv(0);
    assert!(matches!(msg(&login), FProxyMsg::Login { .. }));
    h.shard_send(
        0,
        &TProxyMsg::LoginResult {
            result: LOGIN_RESULT_BAD_PASSWORD,
            shard_name: "shard-x",
        },
    );
    assert_eq!(h.link(0), None);
    h.advance(Duration::from_millis(1999));
    assert_eq!(h.link(0), None, "retried early");
    h.advance(Duration::from_millis(1));
    assert!(h.link(0).is_some(), "retried at 2 s");
    h.log_in(0, "shard-x");
}

#[test]
fn an_unreachable_shard_is_tried_every_retry_period() {
    let mut h = Harness::with(1, |cfg| cfg.shard.connect_retry_ms = 2000, None);
    h.shard_state[0] = ShardState::Refusing;
    h.drive();
    for _ in 0..3 {
        h.advance(Duration::from_millis(2000));
        assert_eq!(h.link(0), None);
    }
    h.shard_state[0] = ShardState::Listening;
    h.advance(Duration::from_millis(2000));
    assert!(h.link(0).is_some());
    h.log_in(0, "shard-x");
}

#[test]
fn a_lost_shard_takes_its_players_and_reservations_with_it() {
    let mut h = Harness::new(|_| {});
    let (a, _, _) = h.player("a", player_addr(1));
    h.reserve("b", player_addr(2));
    let link = h.link(0).unwrap();
    h.hang_up(link);
    assert!(h.is_closed(a), "its player is disconnected");
    assert_eq!(h.proxy.n_reserved(), 0);
    assert!(
        h.connect(player_addr(2)).is_none(),
        "its announced address is forgotten"
    );
    // It comes back after the retry period, with a fresh session.
    h.advance(Duration::from_millis(2000));
    assert!(h.link(0).is_some_and(|l| l != link));
    h.log_in(0, "shard-x");
    h.reserve("b", player_addr(2));
}

#[test]
fn a_second_link_with_a_name_already_in_use_is_dropped() {
    let mut h = Harness::with(2, |_| {}, None);
    h.drive();
    h.log_in(0, "shard-x");
    let login = h.shard_recv(1);
    assert!(matches!(msg(&login), FProxyMsg::Login { .. }));
    h.shard_send(
        1,
        &TProxyMsg::LoginResult {
            result: LOGIN_RESULT_OK,
            shard_name: "shard-x",
        },
    );
    assert_eq!(h.link(1), None, "the impostor is dropped");
    assert!(h.link(0).is_some(), "the first keeps its name");
    assert_eq!(shard_addr(1).port(), 7702);
}

#[test]
fn a_message_before_the_login_result_drops_the_link() {
    let mut h = Harness::with(1, |_| {}, None);
    h.drive();
    let _login = h.shard_recv(0);
    h.shard_send(0, &TProxyMsg::ClosedSocket { socket_id: 1 });
    assert_eq!(h.link(0), None);
}

#[test]
fn a_shard_that_never_answers_is_tried_every_retry_period_even_when_the_timeout_equals_it() {
    // The connect times out just as the next attempt is due, and the slot of
    // the timed-out attempt is freed only after that (one step later).
    let mut h = Harness::with(
        1,
        |cfg| {
            cfg.shard.connect_retry_ms = 2000;
            cfg.shard.connect_timeout_ms = 2000;
        },
        None,
    );
    h.shard_state[0] = ShardState::Silent;
    let t0 = h.now;
    h.drive();
    h.advance(Duration::from_millis(6500));
    let at: Vec<u128> = h
        .connects
        .iter()
        .map(|&(_, t)| (t - t0).as_millis())
        .collect();
    assert_eq!(at, [0, 2000, 4000, 6000], "attempts at these ms");
    // It answers again: connected at the next attempt.
    h.shard_state[0] = ShardState::Listening;
    h.advance(Duration::from_millis(2000));
    assert!(h.link(0).is_some());
}

#[test]
fn a_first_byte_that_cannot_begin_a_handshake_closes_the_connection_at_once() {
    let mut h = Harness::new(|_| {});
    h.reserve("nobody", player_addr(30));
    let start = h.now;
    // One byte, not PUB_KEY: closed on this read, not at the deadline.
    for first in [0u8, 2, b'G', 0xFF] {
        let conn = h.connect_silent(player_addr(30), &[&[first]]).unwrap();
        assert!(h.is_closed(conn), "first byte {first:#x}: still open");
    }
    assert_eq!(h.now, start, "no time passed");
    // A right first byte alone waits for the rest.
    let conn = h.connect_silent(player_addr(30), &[&[1]]).unwrap();
    assert!(!h.is_closed(conn));
}
