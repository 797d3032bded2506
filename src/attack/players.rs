//! The attacks of `muta-attack` that log in first (thesis §3.8.3's way in,
//! used against the proxy): authenticated flooders, slow readers, and
//! squatters who log in and never connect. Few attackers, each on a thread
//! of its own with the blocking client (`bot::client`). Port decision.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{AttackCfg, AttackReport, Class};
use crate::bot::client::{self, Account, Conn, Ticket};
use crate::proto::client::{ClientMsg, ECHO_DATA_MAX, ServerMsg};
use crate::proto::proxy_protocol::{ProxyHeader, encode_v2};

const T: Duration = Duration::from_secs(5);

/// The address and account of attacker `k`.
fn who(cfg: &AttackCfg, k: u64) -> (Option<IpAddr>, String) {
    let ip = (!cfg.bind_ips.is_empty()).then(|| cfg.bind_ips[k as usize % cfg.bind_ips.len()]);
    (ip, format!("atk{}", u64::from(cfg.first_account) + k))
}

/// How an attacker reaches the proxy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Through the forwarder, as players do.
    Forwarder,
    /// To the proxy itself from the forwarder's address (127.0.0.1), with a
    /// PROXY header naming its own, as the forwarder would: then the
    /// proxy's close reaches it at once (a forwarder holds the client side
    /// open while it still has bytes for it, which a reader that never
    /// reads never takes), with a kernel receive buffer of about this many
    /// bytes.
    AsForwarder(usize),
}

/// Logs attacker `k` in and enters the game; the welcome read.
fn enter(cfg: &AttackCfg, k: u64, via: Via) -> Result<Conn, String> {
    let (ip, name) = who(cfg, k);
    let account = Account {
        name: &name,
        password: &name,
        shard: &cfg.shard,
    };
    let login = cfg.login.to_string();
    let ticket = client::login_from(ip, &login, None, &account, T).map_err(|e| e.to_string())?;
    let mut conn = match via {
        Via::Forwarder => {
            let front = cfg.front.to_string();
            client::enter_from(ip, &front, &ticket, &name, &cfg.shard, T)
        }
        Via::AsForwarder(recv_buffer) => {
            let src = SocketAddr::new(ip.unwrap_or(IpAddr::from([127, 0, 0, 1])), 40_000);
            let mut header = Vec::new();
            let dst = cfg.front;
            encode_v2(&ProxyHeader::Proxy { src, dst }, &[], &mut header);
            let lo = Some(IpAddr::from([127, 0, 0, 1]));
            let proxy = cfg.proxy.to_string();
            Conn::connect_after(
                lo,
                Some(recv_buffer),
                &proxy,
                &header,
                Some(ticket.proxy_key),
                T,
            )
            .and_then(|mut conn| {
                client::send_proof(&mut conn, &ticket, &name, &cfg.shard)?;
                Ok(conn)
            })
        }
    }
    .map_err(|e| e.to_string())?;
    let frame = conn.recv_frame(T).map_err(|e| format!("no welcome: {e}"))?;
    match ServerMsg::decode(&frame) {
        Ok(Some((ServerMsg::Welcome { .. }, _))) => Ok(conn),
        other => Err(format!("expected the welcome, got {other:?}")),
    }
}

/// Starts attackers of `body` at `rate` a second for `duration`, at most
/// `max_open` at once (16 at most), each on its own thread, and puts their
/// outcomes together: `Some(ms)` cut off that long after its attack began,
/// `None` never cut off, `Err` could not attack.
fn waves(
    cfg: &AttackCfg,
    body: impl Fn(&AttackCfg, u64) -> Result<Option<u64>, String> + Sync,
) -> AttackReport {
    let report = Mutex::new(AttackReport::new(cfg.class));
    let running = AtomicUsize::new(0);
    let max_open = cfg.max_open.clamp(1, 16);
    let every = Duration::from_secs_f64(1.0 / f64::from(cfg.rate.max(1)));
    let start = Instant::now();
    thread::scope(|s| {
        let mut k = 0u64;
        while start.elapsed() < cfg.duration {
            if running.load(Ordering::Acquire) >= max_open {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            running.fetch_add(1, Ordering::AcqRel);
            let (report, body, running) = (&report, &body, &running);
            s.spawn(move || {
                let outcome = body(cfg, k);
                let mut r = report.lock().expect("no panics");
                match outcome {
                    Ok(Some(ms)) => {
                        r.attackers += 1;
                        r.cut(ms);
                    }
                    Ok(None) => {
                        r.attackers += 1;
                        r.still_open += 1;
                    }
                    Err(why) => {
                        r.errors += 1;
                        eprintln!("muta-attack: attacker {k}: {why}");
                    }
                }
                running.fetch_sub(1, Ordering::AcqRel);
            });
            k += 1;
            thread::sleep(every);
        }
    });
    report.into_inner().expect("no panics")
}

/// True if a write failed because the connection is gone (reset, closed),
/// not because the peer was slow to take it.
fn gone(err: &client::ClientError) -> bool {
    !matches!(err, client::ClientError::Io(e)
        if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock))
}

/// Authenticated flooders: each logs in, plays, then sends frames of 50
/// echoes as fast as its socket takes them, until the proxy cuts it off
/// (or `linger` passes).
pub(super) fn auth_flooders(cfg: &AttackCfg) -> AttackReport {
    waves(cfg, |cfg, k| {
        let mut conn = enter(cfg, k, Via::Forwarder)?;
        let mut frame = Vec::new();
        for seq in 0..50 {
            ClientMsg::Echo {
                seq,
                time_us: 0,
                data: &[0x55; 100],
            }
            .encode(&mut frame);
        }
        conn.set_write_timeout(Some(Duration::from_secs(1)));
        let start = Instant::now();
        let give_up = start + cfg.linger;
        while Instant::now() < give_up {
            let failed = conn.send_frame(&frame).err().is_some_and(|e| gone(&e));
            // It reads (and drops) its echoes: it sees the close.
            if failed || conn.peer_closed() {
                return Ok(Some(start.elapsed().as_millis() as u64));
            }
        }
        Ok(None)
    })
}

/// Slow readers: each logs in with a small receive buffer, then asks for
/// echoes of 1,000 bytes at 100 a second (within the message and byte
/// budgets) and never reads one, until the proxy cuts it off (or `linger`
/// passes).
pub(super) fn slow_readers(cfg: &AttackCfg) -> AttackReport {
    waves(cfg, |cfg, k| {
        let mut conn = enter(cfg, k, Via::AsForwarder(4096))?;
        conn.set_write_timeout(Some(Duration::from_secs(1)));
        let mut frame = Vec::new();
        let start = Instant::now();
        let give_up = start + cfg.linger;
        let mut seq = 0;
        while Instant::now() < give_up {
            frame.clear();
            ClientMsg::Echo {
                seq,
                time_us: 0,
                data: &[0x33; 1000][..1000.min(ECHO_DATA_MAX)],
            }
            .encode(&mut frame);
            seq += 1;
            if let Err(err) = conn.send_frame(&frame)
                && gone(&err)
            {
                return Ok(Some(start.elapsed().as_millis() as u64));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(None)
    })
}

/// Squatters: `rate` logins a second for `duration`, each from its address,
/// never followed by a connection. A login the proxy refuses (its
/// address's reservations at their cap) is cut off at once; a ticket
/// granted is probed once its reservation should have expired
/// (`reservation_timeout` + 1 s after the login): refused, its
/// reservation was released, and it counts as cut off then.
pub(super) fn squatters(cfg: &AttackCfg) -> AttackReport {
    let mut report = AttackReport::new(Class::Squatting);
    let mut tickets: Vec<(u64, Instant, Ticket)> = Vec::new();
    let start = Instant::now();
    let every = Duration::from_secs_f64(1.0 / f64::from(cfg.rate.max(1)));
    let mut k = 0u64;
    while start.elapsed() < cfg.duration {
        let (ip, name) = who(cfg, k);
        let account = Account {
            name: &name,
            password: &name,
            shard: &cfg.shard,
        };
        let began = Instant::now();
        match client::login_from(ip, &cfg.login.to_string(), None, &account, T) {
            Ok(ticket) => tickets.push((k, began, ticket)),
            Err(client::ClientError::Refused(_)) => {
                report.attackers += 1;
                report.cut(began.elapsed().as_millis() as u64);
            }
            Err(_) => report.errors += 1,
        }
        k += 1;
        thread::sleep(every.saturating_sub(began.elapsed()));
    }
    // Probes no faster than 4 a second from one address, so that what
    // refuses them is the expiry, not the address's rate.
    let mut last_probe: HashMap<Option<IpAddr>, Instant> = HashMap::new();
    for (k, began, ticket) in tickets {
        report.attackers += 1;
        let (ip, name) = who(cfg, k);
        let mut probe_at = began + cfg.reservation_timeout + Duration::from_secs(1);
        if let Some(&last) = last_probe.get(&ip) {
            probe_at = probe_at.max(last + Duration::from_millis(250));
        }
        thread::sleep(probe_at.saturating_duration_since(Instant::now()));
        last_probe.insert(ip, Instant::now());
        let front = cfg.front.to_string();
        let released = match client::enter_from(ip, &front, &ticket, &name, &cfg.shard, T) {
            Err(_) => true,
            Ok(mut conn) => conn.closed_within(T),
        };
        if released {
            report.cut(began.elapsed().as_millis() as u64);
        } else {
            report.still_open += 1;
        }
    }
    report
}
