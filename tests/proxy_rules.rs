//! The proxy's rules seen from the shard's side (thesis §3.8): a real
//! `muta-proxy` in front of a scripted fake shard, so each test can check
//! exactly what the shard is told. Login (`FPROXY_MSG_LOGIN`), reservations
//! (`TPROXY_MSG_OPENED_SOCKET` and its answer, expiry), the hand-over of the
//! player's stream (`FPROXY_MSG_PLAYER_CRYPTCHAN`), packets both ways, every
//! filtering case (each disconnects that player alone and tells the shard
//! `FPROXY_MSG_CLOSE_SOCKET`), the address check, the handshake deadline,
//! and a pinned shard key.

mod util;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use muta_proxy::bot::client::{ClientError, Conn};
use muta_proxy::config::Config;
use muta_proxy::cryptchan::{KeyPair, PushStream, TOKEN_BYTES, random_bytes};
use muta_proxy::proto::client::{AuthProof, ClientMsg};
use muta_proxy::proto::frame::{Channel, Step, seal_with};
use muta_proxy::proto::proxy_shard::{
    CLOSE_REASON_FILTERED, CLOSE_REASON_LEFT, CLOSE_REASON_REPLACED, CLOSE_REASON_TIMEOUT,
    FProxyMsg, LOGIN_RESULT_BAD_PASSWORD, LOGIN_RESULT_OK, OPENED_SOCKET_DUPLICATE,
    OPENED_SOCKET_FULL, OPENED_SOCKET_OK, TProxyMsg,
};
use util::system::{ProxyNode, start_proxy};

const T: Duration = Duration::from_secs(10);
const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// The shard's end of one proxy link, blocking and scripted.
struct Link {
    stream: TcpStream,
    chan: Channel,
    in_buf: Vec<u8>,
    out: Vec<u8>,
    /// Messages of frames already read, not yet taken.
    queued: std::collections::VecDeque<Vec<u8>>,
}

impl Link {
    fn accept(listener: &TcpListener, keys: Arc<KeyPair>) -> Link {
        listener.set_nonblocking(false).unwrap();
        let (stream, _) = listener.accept().unwrap();
        let mut link = Link {
            stream,
            chan: Channel::acceptor(keys),
            in_buf: Vec::new(),
            out: Vec::new(),
            queued: Default::default(),
        };
        while !link.chan.is_open() {
            link.read_some(Instant::now() + T);
            link.process();
        }
        link
    }

    fn read_some(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the proxy sent nothing in time");
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 65536];
        match self.stream.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                self.in_buf.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) => panic!("reading from the proxy: {e}"),
        }
    }

    fn process(&mut self) {
        let mut pos = 0;
        loop {
            match self
                .chan
                .next(&mut self.in_buf[pos..], &mut self.out)
                .unwrap()
            {
                Step::NeedMore => break,
                Step::Handshake { consumed } | Step::Opened { consumed } => pos += consumed,
                Step::Frame {
                    consumed,
                    plaintext,
                } => {
                    let mut at = 0;
                    while at < plaintext.len() {
                        let (_, len) = FProxyMsg::decode(&plaintext[at..]).unwrap().unwrap();
                        self.queued.push_back(plaintext[at..at + len].to_vec());
                        at += len;
                    }
                    pos += consumed;
                }
            }
        }
        self.in_buf.drain(..pos);
        self.stream.write_all(&self.out).unwrap();
        self.out.clear();
    }

    /// The next message from the proxy (a heartbeat is answered as a shard
    /// answers it, and not returned).
    fn recv(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + T;
        loop {
            if let Some(msg) = self.queued.pop_front() {
                if let Ok(Some((FProxyMsg::Ping { seq }, _))) = FProxyMsg::decode(&msg) {
                    self.send(&TProxyMsg::Pong { seq });
                    continue;
                }
                return msg;
            }
            assert!(self.read_some(deadline), "the proxy closed the link");
            self.process();
        }
    }

    /// True if the proxy closes the link within `timeout` (what it sends
    /// first is discarded).
    fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    fn send(&mut self, msg: &TProxyMsg<'_>) {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        self.chan.send(&mut self.out, &bytes).unwrap();
        self.chan.seal(&mut self.out).unwrap();
        self.stream.write_all(&self.out).unwrap();
        self.out.clear();
    }
}

/// A fake shard with one proxy logged in, as `shard-x`.
struct Setup {
    link: Link,
    proxy: ProxyNode,
    next_socket: u32,
}

impl Setup {
    fn new(tweak: impl FnOnce(&mut Config)) -> Setup {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let keys = Arc::new(KeyPair::generate());
        let proxy = start_proxy(&[listener.local_addr().unwrap()], 0, tweak);
        let mut link = Link::accept(&listener, keys);
        let login = link.recv();
        match FProxyMsg::decode(&login).unwrap().unwrap().0 {
            FProxyMsg::Login {
                password,
                public_address,
                capacity,
            } => {
                assert_eq!(password, b"test-password");
                assert_eq!(public_address, proxy.addr.to_string());
                assert!(capacity > 0);
            }
            other => panic!("expected FPROXY_MSG_LOGIN, got {other:?}"),
        }
        link.send(&TProxyMsg::LoginResult {
            result: LOGIN_RESULT_OK,
            shard_name: "shard-x",
        });
        Setup {
            link,
            proxy,
            next_socket: 100,
        }
    }

    /// Reserves a slot for `account` from `ip`; returns (socket id, token).
    fn reserve(&mut self, account: &str, ip: IpAddr) -> (u32, [u8; TOKEN_BYTES]) {
        let socket_id = self.next_socket;
        self.next_socket += 1;
        let mut token = [0u8; TOKEN_BYTES];
        random_bytes(&mut token);
        self.link.send(&TProxyMsg::OpenedSocket {
            socket_id,
            account_id: u64::from(socket_id),
            login_session_id: 1,
            ip,
            account_name: account,
            token: &token,
        });
        let reply = self.link.recv();
        assert_eq!(
            FProxyMsg::decode(&reply).unwrap().unwrap().0,
            FProxyMsg::OpenedSocketResult {
                socket_id,
                result: OPENED_SOCKET_OK
            }
        );
        (socket_id, token)
    }

    /// A player connected and authenticated; returns its connection and the
    /// stream the shard writes to it with.
    fn player(&mut self, account: &str) -> (Conn, u32, PushStream) {
        let (socket_id, token) = self.reserve(account, LOCALHOST);
        let mut conn =
            Conn::connect(&self.proxy.addr.to_string(), Some(self.proxy.key), T).unwrap();
        let mut proof = Vec::new();
        AuthProof {
            account_name: account,
            shard_name: "shard-x",
            token: &token,
        }
        .encode(&mut proof);
        conn.send_frame(&proof).unwrap();
        let msg = self.link.recv();
        let FProxyMsg::PlayerCryptchan {
            socket_id: s,
            addr,
            state,
        } = FProxyMsg::decode(&msg).unwrap().unwrap().0
        else {
            panic!("expected FPROXY_MSG_PLAYER_CRYPTCHAN");
        };
        assert_eq!(s, socket_id);
        assert_eq!(
            addr,
            conn.local_addr(),
            "the shard is told the player's address"
        );
        (conn, socket_id, PushStream::import_state(state))
    }

    fn expect_close(&mut self, socket_id: u32, reason: u8) {
        let msg = self.link.recv();
        assert_eq!(
            FProxyMsg::decode(&msg).unwrap().unwrap().0,
            FProxyMsg::CloseSocket { socket_id, reason },
            "expected FPROXY_MSG_CLOSE_SOCKET"
        );
    }
}

fn encode(msgs: &[ClientMsg<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode(&mut out);
    }
    out
}

#[test]
fn packets_flow_both_ways_through_the_proxy_untouched() {
    let mut s = Setup::new(|_| {});
    let (mut conn, socket_id, mut push) = s.player("alice");
    // Client to shard: the frame's plaintext, in FPROXY_MSG_PLAYER_PACKET.
    let msgs = encode(&[ClientMsg::Ping { time: 1 }, ClientMsg::Chat { text: b"hi" }]);
    conn.send_frame(&msgs).unwrap();
    let msg = s.link.recv();
    assert_eq!(
        FProxyMsg::decode(&msg).unwrap().unwrap().0,
        FProxyMsg::PlayerPacket {
            socket_id,
            data: &msgs
        }
    );
    // Shard to client: bytes encrypted by the shard with the handed-over
    // stream, passed through as they are.
    let mut frame = vec![0, 0, 0];
    frame.extend_from_slice(b"\x0a\x01\x00\x00\x00\x00\x00\x00\x00");
    seal_with(&mut push, &mut frame, 0).unwrap();
    s.link.send(&TProxyMsg::PlayerPacket {
        socket_id,
        data: &frame,
    });
    assert_eq!(
        conn.recv_frame(T).unwrap(),
        b"\x0a\x01\x00\x00\x00\x00\x00\x00\x00"
    );
    // The player leaves: the shard is told.
    drop(conn);
    s.expect_close(socket_id, CLOSE_REASON_LEFT);
}

/// Each way a player can break the filter (thesis §3.8.4) disconnects that
/// player alone and tells the shard, which keeps serving the others.
#[test]
fn every_filtering_case_disconnects_that_player_alone_and_tells_its_shard() {
    let mut s = Setup::new(|_| {});
    let (mut bystander, bystander_id, _) = s.player("bystander");
    let mut unknown_type = vec![99u8];
    unknown_type.extend_from_slice(&[0; 8]);
    let wrong_size = vec![10u8, 1, 2, 3]; // CLMSG_PING is 8 bytes after its type
    let mut bad_length = vec![12u8, 250]; // CLMSG_CHAT at most 200
    bad_length.extend_from_slice(&[b'x'; 250]);
    let mut bad_second_length = vec![14u8, 1, b'x'];
    bad_second_length.extend_from_slice(&1000u16.to_le_bytes()); // CLMSG_EMOTE text at most 256
    bad_second_length.extend_from_slice(&[b'y'; 1000]);
    let auth_again = {
        let mut m = Vec::new();
        AuthProof {
            account_name: "x",
            shard_name: "shard-x",
            token: &[0; 64],
        }
        .encode(&mut m);
        m
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown type", unknown_type),
        ("wrong size", wrong_size),
        ("bad length field", bad_length),
        ("bad second length field", bad_second_length),
        ("auth proof after auth", auth_again),
    ];
    for (i, (what, plaintext)) in cases.into_iter().enumerate() {
        let (mut conn, socket_id, _) = s.player(&format!("bad-{i}"));
        conn.send_frame(&plaintext).unwrap();
        assert!(
            conn.closed_within(T),
            "{what}: the player was not disconnected"
        );
        s.expect_close(socket_id, CLOSE_REASON_FILTERED);
    }
    // A failed MAC (tampered ciphertext), a frame longer than allowed.
    let (mut conn, socket_id, _) = s.player("tamper");
    let mut frame = conn
        .seal_frame(&encode(&[ClientMsg::Ping { time: 5 }]))
        .unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 0x80;
    conn.send_raw(&frame).unwrap();
    assert!(conn.closed_within(T), "tampered frame: not disconnected");
    s.expect_close(socket_id, CLOSE_REASON_FILTERED);
    let (mut conn, socket_id, _) = s.player("too-long");
    conn.send_raw(&[0xFF, 0xFF, 1, 2, 3]).unwrap();
    assert!(conn.closed_within(T), "oversized frame: not disconnected");
    s.expect_close(socket_id, CLOSE_REASON_FILTERED);
    // The bystander was never affected.
    let msgs = encode(&[ClientMsg::Ping { time: 9 }]);
    bystander.send_frame(&msgs).unwrap();
    assert_eq!(
        FProxyMsg::decode(&s.link.recv()).unwrap().unwrap().0,
        FProxyMsg::PlayerPacket {
            socket_id: bystander_id,
            data: &msgs
        }
    );
}

#[test]
fn a_proof_from_another_address_than_announced_is_refused() {
    let mut s = Setup::new(|_| {});
    // This account was announced for 10.9.8.7; another reservation lets
    // 127.0.0.1 past the accept-time check.
    let (_, token) = s.reserve("roamer", "10.9.8.7".parse().unwrap());
    s.reserve("someone-else", LOCALHOST);
    let mut conn = Conn::connect(&s.proxy.addr.to_string(), Some(s.proxy.key), T).unwrap();
    let mut proof = Vec::new();
    AuthProof {
        account_name: "roamer",
        shard_name: "shard-x",
        token: &token,
    }
    .encode(&mut proof);
    conn.send_frame(&proof).unwrap();
    assert!(
        conn.closed_within(T),
        "a proof from an unannounced address must be refused"
    );
}

#[test]
fn with_require_announced_ip_off_the_address_is_not_checked() {
    let mut s = Setup::new(|cfg| cfg.client.require_announced_ip = false);
    let (_, token) = s.reserve("roamer", "10.9.8.7".parse().unwrap());
    let mut conn = Conn::connect(&s.proxy.addr.to_string(), Some(s.proxy.key), T).unwrap();
    let mut proof = Vec::new();
    AuthProof {
        account_name: "roamer",
        shard_name: "shard-x",
        token: &token,
    }
    .encode(&mut proof);
    conn.send_frame(&proof).unwrap();
    assert!(matches!(
        FProxyMsg::decode(&s.link.recv()).unwrap().unwrap().0,
        FProxyMsg::PlayerCryptchan { .. }
    ));
}

#[test]
fn reservations_answer_full_duplicate_and_expire() {
    let mut s = Setup::new(|cfg| {
        cfg.client.max_clients = 2;
        cfg.client.reservation_timeout_ms = 1000;
    });
    let (first, _) = s.reserve("a", LOCALHOST);
    // The same socket id again.
    let token = [1u8; TOKEN_BYTES];
    s.link.send(&TProxyMsg::OpenedSocket {
        socket_id: first,
        account_id: 9,
        login_session_id: 9,
        ip: LOCALHOST,
        account_name: "b",
        token: &token,
    });
    assert_eq!(
        FProxyMsg::decode(&s.link.recv()).unwrap().unwrap().0,
        FProxyMsg::OpenedSocketResult {
            socket_id: first,
            result: OPENED_SOCKET_DUPLICATE
        }
    );
    let (second, _) = s.reserve("b", LOCALHOST);
    // max_clients = 2: a third is refused.
    s.link.send(&TProxyMsg::OpenedSocket {
        socket_id: 999,
        account_id: 9,
        login_session_id: 9,
        ip: LOCALHOST,
        account_name: "c",
        token: &token,
    });
    assert_eq!(
        FProxyMsg::decode(&s.link.recv()).unwrap().unwrap().0,
        FProxyMsg::OpenedSocketResult {
            socket_id: 999,
            result: OPENED_SOCKET_FULL
        }
    );
    // Nobody claims them: both expire, and the shard is told.
    let mut expired = vec![];
    for _ in 0..2 {
        match FProxyMsg::decode(&s.link.recv()).unwrap().unwrap().0 {
            FProxyMsg::CloseSocket {
                socket_id,
                reason: CLOSE_REASON_TIMEOUT,
            } => expired.push(socket_id),
            other => panic!("{other:?}"),
        }
    }
    expired.sort();
    assert_eq!(expired, [first, second]);
}

#[test]
fn a_newer_reservation_for_the_same_account_replaces_the_old_one() {
    let mut s = Setup::new(|_| {});
    let (old, old_token) = s.reserve("twice", LOCALHOST);
    // The account logs in again before claiming its first slot.
    let new = 500;
    let mut new_token = [0u8; TOKEN_BYTES];
    random_bytes(&mut new_token);
    s.link.send(&TProxyMsg::OpenedSocket {
        socket_id: new,
        account_id: 7,
        login_session_id: 2,
        ip: LOCALHOST,
        account_name: "twice",
        token: &new_token,
    });
    // The shard is told to forget the old socket, then gets its answer.
    s.expect_close(old, CLOSE_REASON_REPLACED);
    assert_eq!(
        FProxyMsg::decode(&s.link.recv()).unwrap().unwrap().0,
        FProxyMsg::OpenedSocketResult {
            socket_id: new,
            result: OPENED_SOCKET_OK
        }
    );
    let prove = |token: &[u8; TOKEN_BYTES]| {
        let mut conn = Conn::connect(&s.proxy.addr.to_string(), Some(s.proxy.key), T).unwrap();
        let mut proof = Vec::new();
        AuthProof {
            account_name: "twice",
            shard_name: "shard-x",
            token,
        }
        .encode(&mut proof);
        conn.send_frame(&proof).unwrap();
        conn
    };
    // The old token no longer opens anything...
    let mut stale = prove(&old_token);
    assert!(stale.closed_within(T), "the replaced token must be refused");
    // ...and the new one does.
    let _fresh = prove(&new_token);
    let msg = s.link.recv();
    assert!(
        matches!(
            FProxyMsg::decode(&msg).unwrap().unwrap().0,
            FProxyMsg::PlayerCryptchan { socket_id, .. } if socket_id == new
        ),
        "the new token must open the new socket"
    );
}

#[test]
fn the_shard_closing_a_socket_disconnects_the_player_without_an_echo_back() {
    let mut s = Setup::new(|_| {});
    let (mut conn, socket_id, _) = s.player("kicked");
    let (_other, other_id, _) = s.player("stays");
    s.link.send(&TProxyMsg::ClosedSocket { socket_id });
    assert!(conn.closed_within(T));
    // The next thing the shard hears is about someone else, not a
    // FPROXY_MSG_CLOSE_SOCKET for the socket it closed itself.
    drop(_other);
    s.expect_close(other_id, CLOSE_REASON_LEFT);
}

#[test]
fn a_client_that_never_finishes_its_handshake_is_cut_off_at_the_deadline() {
    let mut s = Setup::new(|cfg| cfg.client.handshake_timeout_ms = 500);
    s.reserve("slow", LOCALHOST); // lets the address in
    let mut stream = TcpStream::connect(s.proxy.addr).unwrap();
    stream.write_all(&[1]).unwrap(); // one byte of a public key, then nothing
    let start = Instant::now();
    stream.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 64];
    let closed = matches!(stream.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "the proxy kept a stalled handshake open");
    // The deadline is checked once a second: 0.5 s plus up to one tick.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "cut off after {:?}",
        start.elapsed()
    );
}

#[test]
fn the_proxy_refuses_a_shard_whose_key_is_not_the_pinned_one() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let pinned = KeyPair::generate().public();
    let line = format!("shard = {addr} key={}\n", pinned.to_hex());
    let entries = muta_proxy::config::parse_shards_cfg(std::path::Path::new("t"), &line).unwrap();
    let mut cfg = util::test_config();
    cfg.proxy.listen = util::loopback(0);
    let mut proxy = muta_proxy::proxy::start(cfg, &entries, Vec::new()).unwrap();
    let evbuf = proxy.event_buf();
    let run = std::thread::spawn(move || {
        proxy.main_loop();
        proxy.shutdown();
    });
    // An impostor shard with another key: the proxy drops the link instead
    // of logging in (it would send FPROXY_MSG_LOGIN with the password).
    listener.set_nonblocking(false).unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    let mut chan = Channel::acceptor(Arc::new(KeyPair::generate()));
    let mut in_buf = Vec::new();
    let mut out = Vec::new();
    stream.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 4096];
    let mut got_any_frame = false;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => in_buf.extend_from_slice(&buf[..n]),
        }
        while let Ok(step) = chan.next(&mut in_buf, &mut out) {
            match step {
                Step::NeedMore => break,
                Step::Handshake { consumed } | Step::Opened { consumed } => {
                    in_buf.drain(..consumed);
                }
                Step::Frame { .. } => {
                    got_any_frame = true;
                    break;
                }
            }
        }
        let _ = stream.write_all(&out);
        out.clear();
    }
    assert!(!got_any_frame, "the proxy sent its password to an impostor");
    let _ = evbuf.event_push([muta_proxy::com::Event::Signal { signal: 15 }]);
    run.join().unwrap();
}

#[test]
fn a_wrong_shard_password_drops_the_link_and_the_proxy_retries() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let keys = Arc::new(KeyPair::generate());
    let _proxy = start_proxy(&[listener.local_addr().unwrap()], 0, |_| {});
    let mut link = Link::accept(&listener, keys.clone());
    assert!(matches!(
        FProxyMsg::decode(&link.recv()).unwrap().unwrap().0,
        FProxyMsg::Login { .. }
    ));
    link.send(&TProxyMsg::LoginResult {
        result: LOGIN_RESULT_BAD_PASSWORD,
        shard_name: "shard-x",
    });
    assert!(
        link.closed_within(T),
        "the proxy kept a link whose login failed"
    );
    // It tries again (connect_retry_ms is 500 ms in these tests).
    let mut again = Link::accept(&listener, keys);
    assert!(matches!(
        FProxyMsg::decode(&again.recv()).unwrap().unwrap().0,
        FProxyMsg::Login { .. }
    ));
}

#[test]
fn a_shard_address_that_never_logs_in_is_dropped_at_the_login_deadline_and_tried_again() {
    // Something that accepts and says nothing (or answers another
    // protocol): never counted as connected for ever.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let _proxy = start_proxy(&[listener.local_addr().unwrap()], 0, |cfg| {
        cfg.shard.login_timeout_ms = 1000;
    });
    let (mut silent, _) = listener.accept().unwrap();
    let started = Instant::now();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 256];
    // The proxy's key comes first; then the end, at the deadline.
    while silent.read(&mut buf).is_ok_and(|n| n > 0) {}
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "dropped after {waited:?}"
    );
    listener.set_nonblocking(false).unwrap();
    let (_again, _) = listener.accept().unwrap();
}

#[test]
fn a_ready_link_is_pinged_and_dropped_when_its_pings_go_unanswered() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let keys = Arc::new(KeyPair::generate());
    let _proxy = start_proxy(&[listener.local_addr().unwrap()], 0, |cfg| {
        cfg.shard.heartbeat_ms = 200;
        cfg.shard.heartbeat_timeout_ms = 1000;
    });
    let mut link = Link::accept(&listener, keys);
    link.recv(); // FPROXY_MSG_LOGIN
    link.send(&TProxyMsg::LoginResult {
        result: LOGIN_RESULT_OK,
        shard_name: "shard-x",
    });
    // Pings answered for 2.5 s (longer than the timeout) keep the link up;
    // they come about once a tick (the heartbeat is checked at the tick).
    let until = Instant::now() + Duration::from_millis(2500);
    let mut pings = 0;
    while Instant::now() < until {
        assert!(link.read_some(Instant::now() + T), "closed while answering");
        link.process();
        while let Some(msg) = link.queued.pop_front() {
            if let Ok(Some((FProxyMsg::Ping { seq }, _))) = FProxyMsg::decode(&msg) {
                link.send(&TProxyMsg::Pong { seq });
                pings += 1;
            }
        }
    }
    assert!(pings >= 2, "{pings} pings in 2.5 s");
    // Now it stops answering: the link goes within the timeout (a tick on).
    assert!(
        link.closed_within(Duration::from_millis(3500)),
        "the proxy kept a link whose pings went unanswered"
    );
}

#[test]
fn a_client_gets_no_handshake_reply_from_an_unannounced_address() {
    let s = Setup::new(|_| {});
    let err = Conn::connect(&s.proxy.addr.to_string(), Some(s.proxy.key), T).unwrap_err();
    assert!(matches!(err, ClientError::Io(_)), "{err:?}");
}
