//! The shard's proxy module (thesis §3.6) seen from a proxy: a real
//! `muta-shard`, a scripted fake proxy and a scripted fake login server. The
//! module checks proxy passwords, opens a proxy socket on the proxy when the
//! login server announces a player and answers with that proxy's address and
//! key, encrypts what it sends the player with the stream the proxy hands
//! over, and runs the same size checks as the proxy on what it forwards,
//! closing the socket of a player whose messages fail them.

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
use util::system::{LOGIN_PASSWORD, start_shard};

const T: Duration = Duration::from_secs(10);

fn send<M>(conn: &mut Conn, msg: M, encode: impl Fn(&M, &mut Vec<u8>)) {
    let mut buf = Vec::new();
    encode(&msg, &mut buf);
    conn.send_frame(&buf).unwrap();
}

/// The messages of the next frame, each as its own byte string.
fn recv_msgs(conn: &mut Conn, len_of: impl Fn(&[u8]) -> usize) -> Vec<Vec<u8>> {
    let frame = conn.recv_frame(T).unwrap();
    let mut msgs = Vec::new();
    let mut at = 0;
    while at < frame.len() {
        let n = len_of(&frame[at..]);
        msgs.push(frame[at..at + n].to_vec());
        at += n;
    }
    msgs
}

fn tproxy_len(b: &[u8]) -> usize {
    TProxyMsg::decode(b).unwrap().unwrap().1
}

/// A player's two channel ends, joined in memory: the client's (which pulls
/// what the shard sends) and the proxy's (whose push stream is handed over).
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

/// Decrypts a frame the shard sealed for the player.
fn open_for_player(client: &mut Channel, data: &[u8]) -> Vec<u8> {
    let mut buf = data.to_vec();
    match client.next(&mut buf, &mut Vec::new()).unwrap() {
        Step::Frame { plaintext, .. } => plaintext.to_vec(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_proxy_module_serves_a_player_and_applies_the_size_checks() {
    let shard = start_shard("shard-m", loopback(0), loopback(0));

    // A proxy with the wrong password is refused.
    let mut bad = Conn::connect(&shard.proxy_addr.to_string(), Some(shard.key), T).unwrap();
    send(
        &mut bad,
        FProxyMsg::Login {
            password: b"wrong",
            public_address: "127.0.0.1:1",
            capacity: 10,
        },
        FProxyMsg::encode,
    );
    let reply = recv_msgs(&mut bad, tproxy_len);
    assert_eq!(
        TProxyMsg::decode(&reply[0]).unwrap().unwrap().0,
        TProxyMsg::LoginResult {
            result: LOGIN_RESULT_BAD_PASSWORD,
            shard_name: "shard-m"
        }
    );
    assert!(bad.closed_within(T));

    // The right password: the proxy is logged in.
    let mut proxy = Conn::connect(&shard.proxy_addr.to_string(), Some(shard.key), T).unwrap();
    send(
        &mut proxy,
        FProxyMsg::Login {
            password: b"test-password",
            public_address: "198.51.100.7:7702",
            capacity: 10,
        },
        FProxyMsg::encode,
    );
    let reply = recv_msgs(&mut proxy, tproxy_len);
    assert_eq!(
        TProxyMsg::decode(&reply[0]).unwrap().unwrap().0,
        TProxyMsg::LoginResult {
            result: LOGIN_RESULT_OK,
            shard_name: "shard-m"
        }
    );

    // A login server announces a player.
    let mut login = Conn::connect(&shard.login_addr.to_string(), Some(shard.key), T).unwrap();
    send(
        &mut login,
        ToShard::Login {
            password: LOGIN_PASSWORD.as_bytes(),
        },
        ToShard::encode,
    );
    let frame = login.recv_frame(T).unwrap();
    assert!(matches!(
        FromShard::decode(&frame).unwrap().unwrap().0,
        FromShard::LoginResult {
            result: RESULT_OK,
            ..
        }
    ));
    let token = [9u8; 64];
    send(
        &mut login,
        ToShard::Player {
            request_id: 42,
            account_id: 5,
            login_session_id: 6,
            ip: "127.0.0.1".parse().unwrap(),
            account_name: "zoe",
            token: &token,
        },
        ToShard::encode,
    );
    // The shard opens a proxy socket on the (only) proxy...
    let msg = recv_msgs(&mut proxy, tproxy_len).remove(0);
    let TProxyMsg::OpenedSocket {
        socket_id,
        account_name,
        token: got,
        ..
    } = TProxyMsg::decode(&msg).unwrap().unwrap().0
    else {
        panic!("expected TPROXY_MSG_OPENED_SOCKET");
    };
    assert_eq!((account_name, got), ("zoe", &token));
    send(
        &mut proxy,
        FProxyMsg::OpenedSocketResult {
            socket_id,
            result: OPENED_SOCKET_OK,
        },
        FProxyMsg::encode,
    );
    // ...and answers the login server with that proxy's address and key.
    let frame = login.recv_frame(T).unwrap();
    match FromShard::decode(&frame).unwrap().unwrap().0 {
        FromShard::PlayerResult {
            request_id: 42,
            result: RESULT_OK,
            ticket: Some(ticket),
        } => assert_eq!(ticket.address, "198.51.100.7:7702"),
        other => panic!("{other:?}"),
    }

    // The player authenticates at the proxy: the stream is handed over, and
    // the shard's welcome is encrypted with it.
    let (mut player, state) = player_channel();
    send(
        &mut proxy,
        FProxyMsg::PlayerCryptchan {
            socket_id,
            state: &state,
        },
        FProxyMsg::encode,
    );
    let msg = recv_msgs(&mut proxy, tproxy_len).remove(0);
    let TProxyMsg::PlayerPacket { socket_id: s, data } =
        TProxyMsg::decode(&msg).unwrap().unwrap().0
    else {
        panic!("expected TPROXY_MSG_PLAYER_PACKET");
    };
    assert_eq!(s, socket_id);
    let welcome = open_for_player(&mut player, data);
    assert!(matches!(
        ServerMsg::decode(&welcome).unwrap().unwrap().0,
        ServerMsg::Welcome { name: "zoe", .. }
    ));

    // Checked messages are played: an echo comes back.
    let mut echo = Vec::new();
    ClientMsg::Echo {
        seq: 3,
        time_us: 4,
        data: b"abc",
    }
    .encode(&mut echo);
    send(
        &mut proxy,
        FProxyMsg::PlayerPacket {
            socket_id,
            data: &echo,
        },
        FProxyMsg::encode,
    );
    let msg = recv_msgs(&mut proxy, tproxy_len).remove(0);
    let TProxyMsg::PlayerPacket { data, .. } = TProxyMsg::decode(&msg).unwrap().unwrap().0 else {
        panic!("expected TPROXY_MSG_PLAYER_PACKET");
    };
    let back = open_for_player(&mut player, data);
    assert_eq!(
        ServerMsg::decode(&back).unwrap().unwrap().0,
        ServerMsg::Echo {
            seq: 3,
            time_us: 4,
            data: b"abc"
        }
    );

    // A packet the proxy should have filtered: the shard's own checks drop
    // the player and tell the proxy.
    send(
        &mut proxy,
        FProxyMsg::PlayerPacket {
            socket_id,
            data: &[99, 1, 2],
        },
        FProxyMsg::encode,
    );
    let msg = recv_msgs(&mut proxy, tproxy_len).remove(0);
    assert_eq!(
        TProxyMsg::decode(&msg).unwrap().unwrap().0,
        TProxyMsg::ClosedSocket { socket_id }
    );
}
