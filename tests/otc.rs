//! The OTC front end end to end (seed 002): OTClient-style bots
//! (`muta-bot`'s OTC mode) through two and three real HAProxy forwarders
//! with `send-proxy-v2` into the proxy's `[otc]` listener, on to the game
//! server stand-in; and hostile paths, each refused alone while an honest
//! client plays on. Every address is in 127.0.0.0/8, one per client.

mod util;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::Duration;

use muta_proxy::bot::otc::{self as otc_bot, OtcBotCfg};
use muta_proxy::config::{Cidr, Networks, ProxyProtocol};
use muta_proxy::proto::otc::PACKET_ID_END;
use util::haproxy::Haproxy;
use util::otc::{RawPath, start_otc_proxy, start_otserv};

const T: Duration = Duration::from_secs(5);

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[test]
fn sessions_play_through_three_forwarders_and_lose_nothing_when_one_is_killed() {
    let game = start_otserv();
    let proxy = start_otc_proxy(game.addr, |cfg| {
        cfg.otc.proxy_protocol = ProxyProtocol::Required;
        cfg.otc.trusted_forwarders = Networks(vec![Cidr::parse("127.0.0.1/32").unwrap()]);
    });
    let mut forwarders: Vec<Option<Haproxy>> = (0..3)
        .map(|_| Some(Haproxy::start(proxy.addr, "send-proxy-v2")))
        .collect();
    let cfg = OtcBotCfg {
        proxies: forwarders
            .iter()
            .map(|f| f.as_ref().unwrap().front)
            .collect(),
        sessions: 8,
        port: game.addr.port(),
        rate: 40.0,
        duration: Duration::from_secs(7),
        ramp: Duration::from_millis(500),
        drain: Duration::from_secs(5),
        threads: 1,
        bind_ips: (0..8).map(|i| ip(60 + i)).collect(),
        ..OtcBotCfg::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let run = thread::spawn({
        let cfg = cfg.clone();
        move || otc_bot::run_until(&cfg, stop)
    });
    // Mid-stream, the first forwarder (every session's first choice: the
    // pings tie and the client takes the first) dies.
    thread::sleep(Duration::from_secs(4));
    forwarders[0] = None;
    let report = run.join().unwrap();
    assert!(report.ok(), "{}", report.to_json());
    assert!(report.sent >= 8 * 200, "{}", report.to_json());
    assert!(
        report.attaches > 2 * 8,
        "no session failed over to the spare: {}",
        report.to_json()
    );
}

#[test]
fn bots_straight_to_the_stand_in_and_through_the_proxy_without_forwarders_both_play() {
    let game = start_otserv();
    let proxy = start_otc_proxy(game.addr, |_| {});
    for (direct, to) in [(true, game.addr), (false, proxy.addr)] {
        let cfg = OtcBotCfg {
            proxies: vec![to],
            direct,
            sessions: 4,
            port: game.addr.port(),
            rate: 50.0,
            duration: Duration::from_secs(2),
            ramp: Duration::from_millis(100),
            threads: 2,
            bind_ips: (0..4).map(|i| ip(70 + i)).collect(),
            ..OtcBotCfg::default()
        };
        let report = otc_bot::run(&cfg);
        assert!(report.ok(), "direct {direct}: {}", report.to_json());
    }
}

/// An honest client: a path from `from`, session `session` opened and
/// greeted with its own address.
fn honest(from: IpAddr, proxy: std::net::SocketAddr, session: u32, port: u16) -> RawPath {
    let mut path = RawPath::connect(from, proxy, None);
    assert!(path.open(session, port));
    let (_, id, _, packet) = path.recv_data(session, T).expect("a greeting");
    assert_eq!(id, 1);
    assert_eq!(&packet[2..], format!("A{from}").as_bytes());
    path
}

/// The honest client's packet `n` (its id n) comes back echoed as the
/// server's packet n + 1 (the greeting is 1).
fn echo(path: &mut RawPath, session: u32, n: u32) {
    let body = format!("Eping {n}");
    assert!(path.data(session, n, n, body.as_bytes()));
    let (_, id, ack, packet) = path.recv_data(session, T).expect("an echo");
    assert_eq!((id, ack), (n + 1, n));
    assert_eq!(&packet[2..], body.as_bytes());
}

#[test]
fn a_session_id_from_another_address_a_port_off_the_list_and_broken_frames_are_refused_alone() {
    let game = start_otserv();
    let proxy = start_otc_proxy(game.addr, |_| {});
    let port = game.addr.port();
    let session = 0x5eed_0001;
    let mut victim = honest(ip(80), proxy.addr, session, port);
    echo(&mut victim, session, 1);
    // An attach, a data frame and a detach for the victim's session from
    // another address: each path cut, the session untouched.
    let attacks: [&dyn Fn(&mut RawPath) -> bool; 3] = [
        &|p| p.open(session, port),
        &|p| p.data(session, 2, 0, b"Einjected"),
        &|p| p.send(session, PACKET_ID_END, 0, &[]),
    ];
    for attack in attacks {
        let mut attacker = RawPath::connect(ip(81), proxy.addr, None);
        attack(&mut attacker);
        assert!(
            attacker.closed_within(T),
            "a foreign session's frame was served"
        );
    }
    echo(&mut victim, session, 2);
    // A port off otc.allowed_ports (an open relay to loopback services in
    // the backend it replaces), frames under 12 bytes, an inner length that
    // disagrees with the frame, data on a path not attached.
    let mut bad_frames: Vec<Vec<u8>> = vec![
        // open towards port 22
        [12u8, 0]
            .iter()
            .chain(&7u32.to_le_bytes())
            .chain(&0u32.to_le_bytes())
            .chain(&22u32.to_le_bytes())
            .copied()
            .collect(),
        vec![4, 0, 1, 2, 3, 4],
    ];
    let mut lying = vec![18u8, 0];
    lying.extend_from_slice(&8u32.to_le_bytes());
    lying.extend_from_slice(&1u32.to_le_bytes());
    lying.extend_from_slice(&0u32.to_le_bytes());
    lying.extend_from_slice(&[200, 0, b'E', b'x', b'y', b'z']); // inner length 200 in 6 bytes
    bad_frames.push(lying);
    for (i, frame) in bad_frames.iter().enumerate() {
        let mut bad = RawPath::connect(ip(82), proxy.addr, None);
        bad.send_raw(frame);
        assert!(bad.closed_within(T), "bad frame {i} was served");
    }
    // Data on a path of the owner that is not attached: dropped (it would
    // have been packet 1; the honest path's packet 1 is still the first).
    let mut owner = honest(ip(83), proxy.addr, 0x5eed_0002, port);
    let mut second = RawPath::connect(ip(83), proxy.addr, None);
    assert!(second.data(0x5eed_0002, 1, 1, b"Enot attached here"));
    assert!(
        second
            .recv_data(0x5eed_0002, Duration::from_millis(300))
            .is_none()
    );
    echo(&mut owner, 0x5eed_0002, 1);
    echo(&mut victim, session, 3);
}

#[test]
fn a_far_future_packet_id_and_a_client_that_never_acknowledges_end_their_own_session_only() {
    let game = start_otserv();
    let proxy = start_otc_proxy(game.addr, |cfg| {
        cfg.otc.unacked_bytes_max = 64 * 1024;
    });
    let port = game.addr.port();
    let mut bystander = honest(ip(90), proxy.addr, 0xb0_0001, port);
    // Far ahead of the reorder window: the session ends.
    let mut far = honest(ip(91), proxy.addr, 0xb0_0002, port);
    far.data(0xb0_0002, 1_000_000, 0, b"Efar");
    let end = loop {
        match far.recv(T) {
            Some((0xb0_0002, PACKET_ID_END, _, _)) => break true,
            Some(_) => {}
            None => break false,
        }
    };
    assert!(end, "a far-future packet id did not end the session");
    // Never acknowledging what it is sent: past otc.unacked_bytes_max, the
    // session ends.
    let mut greedy = honest(ip(92), proxy.addr, 0xb0_0003, port);
    let body = vec![b'E'; 1024];
    let mut ended = false;
    for n in 1..200 {
        greedy.data(0xb0_0003, n, 0, &body);
        if let Some((s, PACKET_ID_END, _, _)) = greedy.recv(Duration::from_millis(20)) {
            ended = s == 0xb0_0003;
            break;
        }
    }
    assert!(
        ended || {
            loop {
                match greedy.recv(T) {
                    Some((0xb0_0003, PACKET_ID_END, _, _)) => break true,
                    Some(_) => {}
                    None => break false,
                }
            }
        },
        "an unacknowledged flood did not end its session"
    );
    echo(&mut bystander, 0xb0_0001, 1);
}

#[test]
fn opening_and_ending_sessions_in_a_loop_dials_the_game_server_at_most_at_the_address_rate() {
    let game = start_otserv();
    let proxy = start_otc_proxy(game.addr, |_| {});
    let port = game.addr.port();
    let mut churn = RawPath::connect(ip(110), proxy.addr, None);
    let (mut greeted, mut refused) = (0, 0);
    for n in 0..40u32 {
        let session = 0xd0_0000 + n;
        churn.open(session, port);
        // Greeted (a game connection was made), or ended at once (refused).
        match churn.recv(T) {
            Some((s, 1, _, _)) if s == session => {
                greeted += 1;
                churn.data(session, 1_000_000, 1, b"Eend it"); // ends it
                while let Some((s, id, _, _)) = churn.recv(T) {
                    if s == session && id == PACKET_ID_END {
                        break;
                    }
                }
            }
            Some((s, PACKET_ID_END, _, _)) if s == session => refused += 1,
            other => panic!("session {n}: {other:?}"),
        }
    }
    // otc.new_sessions_per_addr_burst (10) and 2 a second over the test.
    assert!(
        (10..=16).contains(&greeted),
        "{greeted} game connections from one address"
    );
    assert_eq!(greeted + refused, 40);
}

#[test]
fn a_client_that_never_reads_is_cut_and_the_others_play_on() {
    let game = start_otserv();
    let proxy = start_otc_proxy(game.addr, |cfg| {
        cfg.otc.path_out_buf_size = 128 * 1024;
        cfg.otc.unacked_bytes_max = 64 * 1024;
        cfg.otc.session_bytes_per_s = 64 << 20;
        cfg.otc.session_bytes_burst = 64 << 20;
    });
    let port = game.addr.port();
    let mut bystander = honest(ip(100), proxy.addr, 0xc0_0001, port);
    let mut sleeper = RawPath::connect(ip(101), proxy.addr, Some(4096));
    // Eight sessions on one path, each echoing 60 KiB it never reads: each
    // stays within its unacknowledged bytes, the path's output does not.
    let body = vec![b'E'; 30 * 1024];
    'flood: for s in 0..8u32 {
        let session = 0xc0_0100 + s;
        if !sleeper.open(session, port) {
            break;
        }
        for n in 1..=2 {
            if !sleeper.data(session, n, 0, &body) {
                break 'flood;
            }
        }
    }
    echo(&mut bystander, 0xc0_0001, 1);
    assert!(
        sleeper.closed_within(Duration::from_secs(10)),
        "a client that never reads was kept"
    );
    echo(&mut bystander, 0xc0_0001, 2);
}

#[test]
fn every_otc_class_of_muta_attack_is_cut_off_and_an_honest_session_plays_on() {
    use muta_proxy::attack::{self, AttackCfg, Class};
    let game = start_otserv();
    let proxy = start_otc_proxy(game.addr, |cfg| {
        cfg.otc.proxy_protocol = ProxyProtocol::Required;
        cfg.otc.trusted_forwarders = Networks(vec![Cidr::parse("127.0.0.1/32").unwrap()]);
    });
    let forwarder = Haproxy::start(proxy.addr, "send-proxy-v2");
    let port = game.addr.port();
    // The honest client straight to the proxy would be refused: it goes
    // through the forwarder too.
    let mut honest_path = honest(ip(120), forwarder.front, 0xe0_0001, port);
    let classes = Class::ALL.into_iter().filter(|c| c.is_otc());
    for (k, class) in classes.enumerate() {
        let cfg = AttackCfg {
            class,
            otc_front: forwarder.front,
            otc_port: port,
            duration: Duration::from_millis(800),
            rate: 40,
            max_open: 200,
            bind_ips: (1..=20)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 21 + k as u8, i)))
                .collect(),
            linger: Duration::from_secs(5),
            ..AttackCfg::default()
        };
        let report = attack::run(&cfg);
        assert!(
            report.attackers > 0,
            "{}: {}",
            class.as_str(),
            report.to_json()
        );
        assert_eq!(
            (report.cut_off, report.still_open),
            (report.attackers, 0),
            "{}: {}",
            class.as_str(),
            report.to_json()
        );
        echo(&mut honest_path, 0xe0_0001, k as u32 + 1);
    }
}
