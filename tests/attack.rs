//! Each class of `muta-attack` (issue "Under attack"), short, against the
//! system as `make attack` runs it: a proxy with `client.proxy_protocol =
//! "required"` behind a real HAProxy (`send-proxy-v2`), honest players each
//! from its own 127.0.0.x. Every attacker must be cut off, the honest
//! players must play on (no echo lost, the shard link up), and the proxy's
//! counters must name the defence that answered. `make attack` runs the
//! same classes longer and measures them (`docs/attack.md`). Last, one
//! defence no class needs HAProxy for: a player that keeps its window shut
//! while it still sends, cut by `client.tcp_user_timeout_ms`.

mod util;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use muta_proxy::attack::{self, AttackCfg, AttackReport, Class};
use muta_proxy::bot::client::{self, Conn};
use muta_proxy::config::{Cidr, Config, Networks, ProxyProtocol};
use muta_proxy::proto::client::{ClientMsg, ServerMsg};
use util::haproxy::Haproxy;
use util::play::echo;
use util::system::{
    LoginNode, ProxyNode, ShardNode, login_until_from, start_login, start_proxy, start_shard,
};
use util::{free_port, loopback};

const T: Duration = Duration::from_secs(10);
const HONEST: u8 = 3;

/// The system under attack, with its honest players playing.
struct Target {
    honest: Vec<Conn>,
    haproxy: Haproxy,
    proxy: ProxyNode,
    login: LoginNode,
    _shard: ShardNode,
}

/// The proxy as `make attack` configures it, made quick: short deadlines
/// and a small output queue, so that each defence answers within a test.
fn attack_config(cfg: &mut Config, front: u16) {
    let defaults = Config::default().client;
    cfg.proxy.public_address = loopback(front).to_string();
    cfg.client.proxy_protocol = ProxyProtocol::Required;
    cfg.client.trusted_forwarders = Networks(vec![Cidr::parse("127.0.0.1/32").unwrap()]);
    cfg.client.require_announced_ip = false;
    cfg.client.handshake_timeout_ms = 1000;
    cfg.client.reservation_timeout_ms = 1000;
    cfg.client.out_buf_size = 32 * 1024;
    // The per-address limits as shipped (the other tests lift them).
    cfg.client.max_conns_per_addr = defaults.max_conns_per_addr;
    cfg.client.new_conns_per_addr_per_s = defaults.new_conns_per_addr_per_s;
    cfg.client.new_conns_per_addr_burst = defaults.new_conns_per_addr_burst;
}

fn honest_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 200 + i))
}

impl Target {
    fn start() -> Target {
        let shard = start_shard("shard-1", loopback(0), loopback(0));
        let login = start_login(&[shard.login_addr]);
        let front = free_port();
        let proxy = start_proxy(&[shard.proxy_addr], 0, |cfg| attack_config(cfg, front));
        let haproxy = Haproxy::start_at(loopback(front), proxy.addr, "send-proxy-v2");
        let mut target = Target {
            honest: Vec::new(),
            haproxy,
            proxy,
            login,
            _shard: shard,
        };
        for i in 0..HONEST {
            let conn = target.player(honest_ip(i), &format!("honest-{i}"));
            target.honest.push(conn);
        }
        target
    }

    /// A player logged in from `ip` and welcomed through HAProxy.
    fn player(&self, ip: IpAddr, account: &str) -> Conn {
        let ticket = login_until_from(Some(ip), self.login.addr, account, "shard-1", T)
            .unwrap_or_else(|e| panic!("login of {account}: {e}"));
        let front = self.haproxy.front.to_string();
        let mut conn = client::enter_from(Some(ip), &front, &ticket, account, "shard-1", T)
            .unwrap_or_else(|e| panic!("{account}: {e}"));
        let frame = conn.recv_frame(T).unwrap();
        assert!(matches!(
            ServerMsg::decode(&frame),
            Ok(Some((ServerMsg::Welcome { .. }, _)))
        ));
        conn
    }

    fn cfg(&self, class: Class, rate: u32, max_open: usize, ips: &str) -> AttackCfg {
        AttackCfg {
            class,
            front: self.haproxy.front,
            proxy: self.proxy.addr,
            login: self.login.addr,
            shard: "shard-1".to_string(),
            duration: Duration::from_millis(1500),
            rate,
            max_open,
            bind_ips: muta_proxy::cli::parse_ip_range("ips", ips).unwrap(),
            linger: Duration::from_secs(5),
            first_account: 0,
            reservation_timeout: Duration::from_secs(1),
            ..AttackCfg::default()
        }
    }

    /// Runs the attack, checks every attacker was cut off, and that the
    /// honest players still play (each echo comes back: none lost, the
    /// shard link up).
    fn attack(&mut self, cfg: &AttackCfg) -> AttackReport {
        let report = attack::run(cfg);
        assert!(report.attackers > 0, "{report:?}");
        assert_eq!(report.still_open, 0, "attackers left standing: {report:?}");
        assert_eq!(report.cut_off, report.attackers, "{report:?}");
        for (i, conn) in self.honest.iter_mut().enumerate() {
            echo(conn, 1000 + i as u32);
        }
        report
    }
}

#[test]
fn connection_floods_from_many_addresses_and_from_one() {
    let mut t = Target::start();
    t.attack(&t.cfg(Class::ConnFlood, 400, 600, "127.0.1.1-127.0.1.250"));
    t.attack(&t.cfg(Class::OneAddrFlood, 400, 600, "127.0.2.1"));
}

#[test]
fn slowloris_and_idle_connections_are_cut_at_the_handshake_deadline() {
    let mut t = Target::start();
    let report = t.attack(&t.cfg(Class::Slowloris, 50, 100, "127.0.3.1-127.0.3.50"));
    // Each held until its deadline (1 s here), not at once, not for ever.
    assert!(report.cut_off_p50_ms() >= 900, "{report:?}");
    t.attack(&t.cfg(Class::Idle, 50, 100, "127.0.4.1-127.0.4.50"));
}

#[test]
fn garbage_bad_first_bytes_oversized_frames_bad_macs_and_guessed_proofs_are_cut_at_once() {
    let mut t = Target::start();
    for (class, ips) in [
        (Class::Garbage, "127.0.5.1-127.0.5.50"),
        (Class::BadFirstByte, "127.0.6.1-127.0.6.50"),
        (Class::OversizedFrame, "127.0.7.1-127.0.7.50"),
        (Class::BadMac, "127.0.8.1-127.0.8.50"),
        (Class::GuessedProof, "127.0.9.1-127.0.9.50"),
    ] {
        let report = t.attack(&t.cfg(class, 100, 200, ips));
        assert!(report.cut_off_p50_ms() < 500, "{class:?}: {report:?}");
    }
}

#[test]
fn proxy_headers_from_untrusted_addresses_and_malformed_ones_from_trusted_are_refused() {
    let mut t = Target::start();
    t.attack(&t.cfg(
        Class::UntrustedProxyHeader,
        100,
        200,
        "127.0.10.1-127.0.10.50",
    ));
    t.attack(&t.cfg(Class::MalformedProxyHeader, 100, 200, "127.0.0.1"));
}

#[test]
fn an_authenticated_flooder_and_a_slow_reader_are_cut_off_and_the_link_stays() {
    let mut t = Target::start();
    t.attack(&t.cfg(Class::AuthFlooder, 2, 1, "127.0.11.1-127.0.11.4"));
    t.attack(&t.cfg(Class::SlowReader, 2, 2, "127.0.12.1-127.0.12.4"));
    // The shard link never dropped: a new player still gets in and plays.
    let mut late = t.player(honest_ip(50), "late");
    echo(&mut late, 1);
}

#[test]
fn squatted_reservations_expire_and_one_address_holds_no_more_than_its_cap() {
    let mut t = Target::start();
    let cfg = AttackCfg {
        duration: Duration::from_secs(2),
        ..t.cfg(Class::Squatting, 60, 1, "127.0.13.1")
    };
    let report = t.attack(&cfg);
    // 120 logins from one address: the cap (32) held, the rest refused at
    // the login; the held ones released by their timeout.
    assert!(report.attackers >= 40, "{report:?}");
    let quick = report.cut_off_ms.iter().filter(|&&ms| ms < 1000).count();
    assert!(
        quick >= 10,
        "logins past the cap were not refused: {report:?}"
    );
    // After the squat, a new player logs in from that very address.
    let squatter: SocketAddr = "127.0.13.1:0".parse().unwrap();
    let mut conn = t.player(squatter.ip(), "after-squat");
    echo(&mut conn, 1);
}

/// Whether the proxy, with `client.tcp_user_timeout_ms = user_timeout_ms`,
/// cuts a player that keeps its window shut. No other rule can answer it
/// here: the idle timeout is a minute away and the output it leaves
/// untaken is far under `client.out_buf_size`. (Linux 5.11 or later: from
/// then on the user timeout ends a window that stays shut.)
fn a_shut_window_is_cut(user_timeout_ms: u64) -> bool {
    let shard = start_shard("shard-1", loopback(0), loopback(0));
    let proxy = start_proxy(&[shard.proxy_addr], 0, |cfg| {
        cfg.client.tcp_user_timeout_ms = user_timeout_ms;
    });
    let login = start_login(&[shard.login_addr]);
    let ticket = login_until_from(None, login.addr, "stalled", "shard-1", T).unwrap();
    // A receive buffer of 4 KiB from before the connect, so that the window
    // it offers is small from the start.
    let addr = proxy.addr.to_string();
    let mut conn =
        Conn::connect_after(None, Some(4096), &addr, &[], Some(ticket.proxy_key), T).unwrap();
    client::send_proof(&mut conn, &ticket, "stalled", "shard-1").unwrap();
    conn.recv_frame(T).unwrap(); // the welcome
    // 40 KB of echoes asked for and none read: the window shuts with the
    // rest queued in the proxy's socket, which probes the shut window.
    let mut frame = Vec::new();
    for seq in 0..40 {
        frame.clear();
        ClientMsg::Echo {
            seq,
            time_us: 0,
            data: &[0x77; 1000],
        }
        .encode(&mut frame);
        conn.send_frame(&frame).unwrap();
    }
    // With a user timeout of 1 s the proxy's kernel ends the connection
    // about a second after the window shut, well within these 4 s. It sends
    // nothing when it does: the player learns it when it next sends (a
    // reset). Reading opens the window again, so it reads only then.
    std::thread::sleep(Duration::from_secs(4));
    let mut ping = Vec::new();
    ClientMsg::Ping { time: 1 }.encode(&mut ping);
    conn.send_frame(&ping).is_err() || conn.closed_within(Duration::from_secs(5))
}

#[test]
fn a_player_that_keeps_its_window_shut_is_cut_by_the_tcp_user_timeout() {
    // The same player without the timeout, beside it: the timeout is what
    // cuts it.
    let without = std::thread::spawn(|| a_shut_window_is_cut(0));
    assert!(
        a_shut_window_is_cut(1000),
        "the proxy kept a player whose window stayed shut past the user timeout"
    );
    assert!(
        !without.join().unwrap(),
        "without a user timeout the player was cut all the same: by another rule"
    );
}
