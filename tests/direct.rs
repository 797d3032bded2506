//! The shard's direct listener: MUTA's shard before proxies (thesis §2.3),
//! the baseline `make bench` measures the proxy against. Players log in as
//! usual, get a ticket naming the shard itself, and play with the same
//! protocol and the same checks as through a proxy. Also the game's areas,
//! which bound a broadcast's fan-out.

mod util;

use std::time::Duration;

use muta_proxy::bot::{self, BotCfg, client};
use muta_proxy::proto::client::{ClientMsg, ServerMsg};
use util::loopback;
use util::play::{echo, play, send};
use util::system::{ShardNode, login_until, start_login, start_shard_with};

const T: Duration = Duration::from_secs(10);

/// A shard with a direct listener (and `tweak`), and a login server for it.
fn direct_shard(
    tweak: impl FnOnce(&mut muta_proxy::shard_server::ShardServerCfg),
) -> (ShardNode, util::system::LoginNode) {
    let shard = start_shard_with("shard-d", loopback(0), loopback(0), |cfg| {
        cfg.direct_listen = Some(loopback(0));
        tweak(cfg);
    });
    let login = start_login(&[shard.login_addr]);
    (shard, login)
}

#[test]
fn a_player_plays_on_the_shard_itself_with_the_checks_a_proxy_makes() {
    let (shard, login) = direct_shard(|_| {});
    let direct = shard.direct_addr.expect("a direct listener");
    let mut ticket = login_until(login.addr, "dora", "shard-d", T).unwrap();
    assert_eq!(ticket.proxy_address, direct.to_string());
    assert_eq!(
        ticket.proxy_key, shard.key,
        "the ticket names the shard's own key"
    );

    // A wrong token is refused, and the reservation survives it.
    let good = ticket.token;
    ticket.token[5] ^= 0x40;
    let mut wrong = client::enter(&ticket, "dora", "shard-d", T).unwrap();
    assert!(wrong.closed_within(T), "a wrong token must be refused");
    ticket.token = good;
    let mut dora = play(&ticket, "dora", "shard-d");
    for seq in 0..10 {
        echo(&mut dora, seq);
    }
    // A replay finds no reservation.
    let mut replay = client::enter(&ticket, "dora", "shard-d", T).unwrap();
    assert!(replay.closed_within(T), "a replayed token must be refused");

    // A message the filter refuses drops that player alone.
    let mut eve = play(
        &login_until(login.addr, "eve", "shard-d", T).unwrap(),
        "eve",
        "shard-d",
    );
    eve.send_frame(&[0xEE, 1, 2, 3]).unwrap();
    assert!(
        eve.closed_within(T),
        "an unknown message type must drop eve"
    );
    echo(&mut dora, 10);
}

#[test]
fn the_direct_public_address_is_what_players_are_told() {
    let (_shard, login) = direct_shard(|cfg| cfg.direct_public = Some("10.1.2.3:4567".into()));
    let ticket = login_until(login.addr, "fwd", "shard-d", T).unwrap();
    assert_eq!(ticket.proxy_address, "10.1.2.3:4567");
}

#[test]
fn bots_play_directly_with_nothing_lost_or_reordered() {
    let (_shard, login) = direct_shard(|_| {});
    login_until(login.addr, "warm-up", "shard-d", T).unwrap(); // linked
    let report = bot::run(&BotCfg {
        login: login.addr.to_string(),
        shard: "shard-d".to_string(),
        clients: 20,
        rate: 50.0,
        chat_rate: 1.0,
        duration: Duration::from_secs(2),
        ramp: Duration::from_millis(200),
        drain: Duration::from_secs(5),
        ..BotCfg::default()
    });
    assert_eq!(report.failures, Vec::new());
    assert_eq!((report.clients, report.authenticated), (20, 20));
    assert_eq!(report.sent, 2_000);
    assert_eq!(report.received, 2_000);
    assert_eq!(report.latency_samples, 2_000, "no mark: every echo counts");
}

#[test]
fn the_mark_starts_the_latency_measurement() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_shard, login) = direct_shard(|_| {});
    login_until(login.addr, "warm-up", "shard-d", T).unwrap();
    let mark = Arc::new(AtomicBool::new(false));
    let setter = {
        let mark = mark.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            mark.store(true, Ordering::Relaxed); // what SIGUSR1 does
        })
    };
    let cfg = BotCfg {
        login: login.addr.to_string(),
        shard: "shard-d".to_string(),
        clients: 5,
        rate: 50.0,
        duration: Duration::from_secs(3),
        ramp: Duration::from_millis(100),
        ..BotCfg::default()
    };
    let report = bot::run_marked(&cfg, Arc::new(AtomicBool::new(false)), mark);
    setter.join().unwrap();
    assert_eq!(report.received, 750);
    // Echoes sent before the mark are left out of the latency figures.
    assert!(
        report.latency_samples > 0 && report.latency_samples < 600,
        "{} samples",
        report.latency_samples
    );
}

#[test]
fn a_broadcast_reaches_only_the_senders_area() {
    let (_shard, login) = direct_shard(|cfg| cfg.area_players = 2);
    // Areas of two, filled in order: a0 and a1 share one, b0 is alone.
    let mut players: Vec<_> = ["a0", "a1", "b0"]
        .iter()
        .map(|name| {
            play(
                &login_until(login.addr, name, "shard-d", T).unwrap(),
                name,
                "shard-d",
            )
        })
        .collect();
    send(&mut players[0], &[ClientMsg::Chat { text: b"area talk" }]);
    for (i, conn) in players.iter_mut().enumerate().take(2) {
        match ServerMsg::decode(&conn.recv_frame(T).unwrap())
            .unwrap()
            .unwrap()
            .0
        {
            ServerMsg::Chat { text, .. } => assert_eq!(text, b"area talk", "player {i}"),
            other => panic!("player {i}: {other:?}"),
        }
    }
    // b0's next message is its own echo, not the chat.
    send(
        &mut players[2],
        &[ClientMsg::Echo {
            seq: 1,
            time_us: 0,
            data: b"x",
        }],
    );
    match ServerMsg::decode(&players[2].recv_frame(T).unwrap())
        .unwrap()
        .unwrap()
        .0
    {
        ServerMsg::Echo { seq: 1, .. } => {}
        other => panic!("b0 heard another area's broadcast: {other:?}"),
    }
}

#[test]
fn direct_players_cannot_take_the_slots_the_links_need() {
    use std::io::Read;
    let shard = start_shard_with("shard-d", loopback(0), loopback(0), |cfg| {
        cfg.direct_listen = Some(loopback(0));
        cfg.max_direct = 2;
        cfg.max_links = 2;
    });
    let direct = shard.direct_addr.unwrap();
    // Four idle connections, as many as the whole pool has slots: two hold
    // every direct slot, the other two are closed at once.
    let mut idle: Vec<_> = (0..4)
        .map(|_| {
            let s = std::net::TcpStream::connect(direct).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        })
        .collect();
    let mut buf = [0u8; 64];
    let closed = idle
        .iter_mut()
        .map(|s| matches!(s.read(&mut buf), Ok(0)))
        .filter(|&c| c)
        .count();
    assert_eq!(closed, 2, "connections over --max-direct must be closed");
    // ...and a login server still links to the shard and gets tickets.
    let login = start_login(&[shard.login_addr]);
    let ticket = login_until(login.addr, "linked", "shard-d", T).unwrap();
    assert_eq!(ticket.proxy_address, direct.to_string());
}
