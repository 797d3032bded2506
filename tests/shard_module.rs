//! The shard's proxy module (thesis §3.6) seen from a proxy: a real
//! `muta-shard`, scripted fake proxies and a scripted fake login server. The
//! module checks proxy passwords, opens a proxy socket on a proxy when the
//! login server announces a player and answers with that proxy's address and
//! key, encrypts what it sends the player with the stream the proxy hands
//! over, cuts large batches between messages, applies a proxy's messages in
//! the order they arrived, lets a proxy speak only for its own players, and
//! runs the same size checks as the proxy on what it forwards.

mod util;

use std::sync::Arc;
use std::time::Duration;

use muta_proxy::bot::client::Conn;
use muta_proxy::cryptchan::KeyPair;
use muta_proxy::proto::client::{ClientMsg, ServerMsg};
use muta_proxy::proto::frame::{Channel, Step};
use muta_proxy::proto::login::{FromShard, RESULT_OK, ToShard};
use muta_proxy::proto::proxy_shard::{
    FProxyMsg, LOGIN_RESULT_BAD_PASSWORD, LOGIN_RESULT_OK, OPENED_SOCKET_OK, TProxyMsg,
};
use util::loopback;
use util::system::{LOGIN_PASSWORD, ShardNode, start_shard, start_shard_with};

const T: Duration = Duration::from_secs(10);

/// The address the fake proxy says its players come from.
const PLAYER_ADDR: &str = "203.0.113.9:41000";

fn encode_all(msgs: &[FProxyMsg<'_>]) -> Vec<u8> {
    let mut buf = Vec::new();
    for m in msgs {
        m.encode(&mut buf);
    }
    buf
}

/// The shard's messages in the next frame, each as its own byte string.
fn recv_msgs(conn: &mut Conn) -> Vec<Vec<u8>> {
    let frame = conn.recv_frame(T).unwrap();
    let mut msgs = Vec::new();
    let mut at = 0;
    while at < frame.len() {
        let n = TProxyMsg::decode(&frame[at..]).unwrap().unwrap().1;
        msgs.push(frame[at..at + n].to_vec());
        at += n;
    }
    msgs
}

fn recv_one(conn: &mut Conn) -> Vec<u8> {
    let mut msgs = recv_msgs(conn);
    assert_eq!(msgs.len(), 1, "expected one message");
    msgs.remove(0)
}

/// A proxy logged in to the shard, announcing `address`.
fn fake_proxy(shard: &ShardNode, password: &[u8], address: &str) -> Conn {
    let mut proxy = Conn::connect(&shard.proxy_addr.to_string(), Some(shard.key), T).unwrap();
    proxy
        .send_frame(&encode_all(&[FProxyMsg::Login {
            password,
            public_address: address,
            capacity: 10,
        }]))
        .unwrap();
    proxy
}

fn expect_login_ok(proxy: &mut Conn, shard: &ShardNode) {
    let reply = recv_one(proxy);
    assert_eq!(
        TProxyMsg::decode(&reply).unwrap().unwrap().0,
        TProxyMsg::LoginResult {
            result: LOGIN_RESULT_OK,
            shard_name: &shard.name
        }
    );
}

/// A login server logged in to the shard.
fn fake_login(shard: &ShardNode) -> Conn {
    let mut login = Conn::connect(&shard.login_addr.to_string(), Some(shard.key), T).unwrap();
    let mut buf = Vec::new();
    ToShard::Login {
        password: LOGIN_PASSWORD.as_bytes(),
    }
    .encode(&mut buf);
    login.send_frame(&buf).unwrap();
    let frame = login.recv_frame(T).unwrap();
    assert!(matches!(
        FromShard::decode(&frame).unwrap().unwrap().0,
        FromShard::LoginResult {
            result: RESULT_OK,
            ..
        }
    ));
    login
}

/// A player's two channel ends, joined in memory: the client's (which pulls
/// what the shard sends) and the proxy's push-stream state (handed over).
fn player_channel() -> (Channel, [u8; 52]) {
    let mut to_acc = Vec::new();
    let mut to_ini = Vec::new();
    let mut client = Channel::initiator(Arc::new(KeyPair::generate()), None, &mut to_acc);
    let mut proxy_side = Channel::acceptor(Arc::new(KeyPair::generate()));
    for _ in 0..2 {
        let mut pos = 0;
        while let Ok(Step::Handshake { consumed } | Step::Opened { consumed }) =
            proxy_side.next(&mut to_acc[pos..], &mut to_ini)
        {
            pos += consumed;
        }
        to_acc.drain(..pos);
        let mut pos = 0;
        while let Ok(Step::Handshake { consumed } | Step::Opened { consumed }) =
            client.next(&mut to_ini[pos..], &mut to_acc)
        {
            pos += consumed;
        }
        to_ini.drain(..pos);
    }
    assert!(client.is_open() && proxy_side.is_open());
    let state = proxy_side.hand_over_push().unwrap();
    (client, state)
}

/// The login server announces `account`; the shard opens a socket on
/// `proxy`, which reserves it. Returns the socket id.
fn announce(login: &mut Conn, proxy: &mut Conn, account: &str, request_id: u32) -> u32 {
    let token = [9u8; 64];
    let mut buf = Vec::new();
    ToShard::Player {
        request_id,
        account_id: u64::from(request_id),
        login_session_id: 6,
        ip: "127.0.0.1".parse().unwrap(),
        account_name: account,
        token: &token,
    }
    .encode(&mut buf);
    login.send_frame(&buf).unwrap();
    let msg = recv_one(proxy);
    let TProxyMsg::OpenedSocket {
        socket_id,
        account_name,
        token: got,
        ..
    } = TProxyMsg::decode(&msg).unwrap().unwrap().0
    else {
        panic!("expected TPROXY_MSG_OPENED_SOCKET");
    };
    assert_eq!((account_name, got), (account, &token));
    proxy
        .send_frame(&encode_all(&[FProxyMsg::OpenedSocketResult {
            socket_id,
            result: OPENED_SOCKET_OK,
        }]))
        .unwrap();
    let frame = login.recv_frame(T).unwrap();
    match FromShard::decode(&frame).unwrap().unwrap().0 {
        FromShard::PlayerResult {
            request_id: r,
            result: RESULT_OK,
            ticket: Some(_),
        } => assert_eq!(r, request_id),
        other => panic!("{other:?}"),
    }
    socket_id
}

/// Every server message for `socket` in the next frames until `n` arrive,
/// checking each client frame holds whole messages.
fn player_msgs(proxy: &mut Conn, player: &mut Channel, socket: u32, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < n {
        for msg in recv_msgs(proxy) {
            let TProxyMsg::PlayerPacket { socket_id, data } =
                TProxyMsg::decode(&msg).unwrap().unwrap().0
            else {
                panic!("expected TPROXY_MSG_PLAYER_PACKET");
            };
            assert_eq!(socket_id, socket);
            let mut buf = data.to_vec();
            let mut pos = 0;
            while pos < buf.len() {
                let Step::Frame {
                    consumed,
                    plaintext,
                } = player.next(&mut buf[pos..], &mut Vec::new()).unwrap()
                else {
                    panic!("a partial client frame");
                };
                let mut at = 0;
                while at < plaintext.len() {
                    let (_, len) = ServerMsg::decode(&plaintext[at..])
                        .unwrap()
                        .unwrap_or_else(|| panic!("a client frame ends inside a message"));
                    out.push(plaintext[at..at + len].to_vec());
                    at += len;
                }
                pos += consumed;
            }
        }
    }
    out
}

fn echo(seq: u32, padding: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    ClientMsg::Echo {
        seq,
        time_us: 4,
        data: &vec![b'e'; padding],
    }
    .encode(&mut buf);
    buf
}

#[test]
fn the_proxy_module_serves_a_player_and_applies_the_size_checks() {
    let shard = start_shard("shard-m", loopback(0), loopback(0));
    // A proxy with the wrong password is refused.
    let mut bad = fake_proxy(&shard, b"wrong", "127.0.0.1:1");
    assert_eq!(
        TProxyMsg::decode(&recv_one(&mut bad)).unwrap().unwrap().0,
        TProxyMsg::LoginResult {
            result: LOGIN_RESULT_BAD_PASSWORD,
            shard_name: "shard-m"
        }
    );
    assert!(bad.closed_within(T));

    let mut proxy = fake_proxy(&shard, b"test-password", "198.51.100.7:7702");
    expect_login_ok(&mut proxy, &shard);
    let mut login = fake_login(&shard);
    let socket_id = announce(&mut login, &mut proxy, "zoe", 42);

    // The player authenticates at the proxy: the stream is handed over, and
    // the shard's welcome is encrypted with it.
    let (mut player, state) = player_channel();
    proxy
        .send_frame(&encode_all(&[FProxyMsg::PlayerCryptchan {
            socket_id,
            addr: PLAYER_ADDR.parse().unwrap(),
            state: &state,
        }]))
        .unwrap();
    let welcome = player_msgs(&mut proxy, &mut player, socket_id, 1);
    assert!(matches!(
        ServerMsg::decode(&welcome[0]).unwrap().unwrap().0,
        ServerMsg::Welcome { name: "zoe", addr, .. } if addr.to_string() == PLAYER_ADDR
    ));

    // Checked messages are played: an echo comes back.
    proxy
        .send_frame(&encode_all(&[FProxyMsg::PlayerPacket {
            socket_id,
            data: &echo(3, 3),
        }]))
        .unwrap();
    let back = player_msgs(&mut proxy, &mut player, socket_id, 1);
    assert_eq!(back[0], {
        let mut b = Vec::new();
        ServerMsg::Echo {
            seq: 3,
            time_us: 4,
            data: b"eee",
        }
        .encode(&mut b);
        b
    });

    // A packet the proxy should have filtered: the shard's own checks drop
    // the player and tell the proxy.
    proxy
        .send_frame(&encode_all(&[FProxyMsg::PlayerPacket {
            socket_id,
            data: &[99, 1, 2],
        }]))
        .unwrap();
    assert_eq!(
        TProxyMsg::decode(&recv_one(&mut proxy)).unwrap().unwrap().0,
        TProxyMsg::ClosedSocket { socket_id }
    );
}

/// Found in review: the first packet, batched behind
/// `FPROXY_MSG_PLAYER_CRYPTCHAN`, used to be handled before the player existed.
#[test]
fn a_first_packet_batched_behind_the_hand_over_is_played() {
    let shard = start_shard("shard-p", loopback(0), loopback(0));
    let mut proxy = fake_proxy(&shard, b"test-password", "127.0.0.1:7702");
    expect_login_ok(&mut proxy, &shard);
    let mut login = fake_login(&shard);
    let socket_id = announce(&mut login, &mut proxy, "eager", 1);
    let (mut player, state) = player_channel();
    proxy
        .send_frame(&encode_all(&[
            FProxyMsg::PlayerCryptchan {
                socket_id,
                addr: PLAYER_ADDR.parse().unwrap(),
                state: &state,
            },
            FProxyMsg::PlayerPacket {
                socket_id,
                data: &echo(1, 1),
            },
        ]))
        .unwrap();
    let msgs = player_msgs(&mut proxy, &mut player, socket_id, 2);
    assert!(matches!(
        ServerMsg::decode(&msgs[0]).unwrap().unwrap().0,
        ServerMsg::Welcome { .. }
    ));
    assert!(matches!(
        ServerMsg::decode(&msgs[1]).unwrap().unwrap().0,
        ServerMsg::Echo { seq: 1, .. }
    ));
}

/// Found in review: a proxy could speak for another proxy's player.
#[test]
fn a_proxy_cannot_speak_for_another_proxys_player() {
    let shard = start_shard("shard-f", loopback(0), loopback(0));
    let mut honest = fake_proxy(&shard, b"test-password", "127.0.0.1:7702");
    expect_login_ok(&mut honest, &shard);
    let mut login = fake_login(&shard);
    let socket_id = announce(&mut login, &mut honest, "victim", 1);
    let (mut player, state) = player_channel();
    honest
        .send_frame(&encode_all(&[FProxyMsg::PlayerCryptchan {
            socket_id,
            addr: PLAYER_ADDR.parse().unwrap(),
            state: &state,
        }]))
        .unwrap();
    player_msgs(&mut honest, &mut player, socket_id, 1); // the welcome
    // A second proxy knows the password and guesses the socket id.
    let mut other = fake_proxy(&shard, b"test-password", "127.0.0.1:7703");
    expect_login_ok(&mut other, &shard);
    other
        .send_frame(&encode_all(&[
            FProxyMsg::PlayerPacket {
                socket_id,
                data: &echo(77, 1),
            },
            FProxyMsg::CloseSocket {
                socket_id,
                reason: 0,
            },
        ]))
        .unwrap();
    // The victim's own proxy then sends an echo: the first thing back is that
    // echo, and the socket is still open.
    std::thread::sleep(Duration::from_millis(200));
    honest
        .send_frame(&encode_all(&[FProxyMsg::PlayerPacket {
            socket_id,
            data: &echo(5, 1),
        }]))
        .unwrap();
    let msgs = player_msgs(&mut honest, &mut player, socket_id, 1);
    assert!(
        matches!(
            ServerMsg::decode(&msgs[0]).unwrap().unwrap().0,
            ServerMsg::Echo { seq: 5, .. }
        ),
        "{msgs:?}"
    );
}

/// Found in review: batches over one frame used to be cut inside a message.
/// Here a frame holds at most 100 bytes, so four 45-byte echoes take two.
#[test]
fn large_batches_are_cut_between_messages() {
    let shard = start_shard_with("shard-c", loopback(0), loopback(0), |cfg| {
        cfg.player_frame_max = 100
    });
    let mut proxy = fake_proxy(&shard, b"test-password", "127.0.0.1:7702");
    expect_login_ok(&mut proxy, &shard);
    let mut login = fake_login(&shard);
    let socket_id = announce(&mut login, &mut proxy, "big", 1);
    let (mut player, state) = player_channel();
    proxy
        .send_frame(&encode_all(&[FProxyMsg::PlayerCryptchan {
            socket_id,
            addr: PLAYER_ADDR.parse().unwrap(),
            state: &state,
        }]))
        .unwrap();
    player_msgs(&mut proxy, &mut player, socket_id, 1);
    let mut four = Vec::new();
    for seq in 0..4 {
        four.extend(echo(seq, 30));
    }
    proxy
        .send_frame(&encode_all(&[FProxyMsg::PlayerPacket {
            socket_id,
            data: &four,
        }]))
        .unwrap();
    let msgs = player_msgs(&mut proxy, &mut player, socket_id, 4);
    for (seq, msg) in msgs.iter().enumerate() {
        assert!(matches!(
            ServerMsg::decode(msg).unwrap().unwrap().0,
            ServerMsg::Echo { seq: s, .. } if s == seq as u32
        ));
    }
}
