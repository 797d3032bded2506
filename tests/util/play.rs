//! Playing through a ticket: enter, wait for the welcome, send messages and
//! wait for echoes (what most end-to-end tests do with a player).

use std::time::{Duration, Instant};

use muta_proxy::bot::client::{self, Conn, Ticket};
use muta_proxy::proto::client::{ClientMsg, ServerMsg};

const T: Duration = Duration::from_secs(10);

/// Enters through the ticket's proxy and waits for the shard's welcome.
pub fn play(ticket: &Ticket, account: &str, shard: &str) -> Conn {
    let mut conn =
        client::enter(ticket, account, shard, T).unwrap_or_else(|e| panic!("{account}: {e}"));
    let frame = conn
        .recv_frame(T)
        .unwrap_or_else(|e| panic!("{account}: no welcome: {e}"));
    match ServerMsg::decode(&frame) {
        Ok(Some((ServerMsg::Welcome { name, .. }, _))) => assert_eq!(name, account),
        other => panic!("{account}: expected SVMSG_WELCOME, got {other:?}"),
    }
    conn
}

pub fn send(conn: &mut Conn, msgs: &[ClientMsg<'_>]) {
    let mut frame = Vec::new();
    for m in msgs {
        m.encode(&mut frame);
    }
    conn.send_frame(&frame).unwrap();
}

/// Sends one echo and waits for it, skipping broadcasts.
pub fn echo(conn: &mut Conn, seq: u32) {
    send(
        conn,
        &[ClientMsg::Echo {
            seq,
            time_us: 7,
            data: b"ping",
        }],
    );
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        let frame = conn.recv_frame(T).unwrap();
        let mut at = 0;
        while at < frame.len() {
            let (msg, len) = ServerMsg::decode(&frame[at..]).unwrap().unwrap();
            at += len;
            if let ServerMsg::Echo { seq: s, data, .. } = msg {
                assert_eq!((s, data), (seq, &b"ping"[..]));
                return;
            }
        }
    }
    panic!("echo {seq} did not come back");
}
