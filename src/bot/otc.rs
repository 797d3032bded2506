//! `muta-bot --otc`: OTClient's multi-path proxy client, as the real client
//! behaves (seed 002; OTCv8's and OTClient Redemption's
//! `src/framework/proxy/`, MIT, read for compatibility and written anew), for
//! the tests and the benchmark. No thesis section: a reference peer.
//!
//! Each bot is one client process with one game session:
//!
//! - a connection (path) to every configured proxy, kept up: a ping every
//!   2.5 s (`CHECK_INTERVAL`), a path usable once its first pong came, cut
//!   after 7.5 s without one and dialled again at the next check;
//! - its session attached to the best two paths by ping (`maxActiveProxies`
//!   2), checked every 500 ms: an unattached path replaces the worst one
//!   only if it is 20 ms faster; a path attached gets every packet not yet
//!   acknowledged again; a path that goes is dropped from the set, and the
//!   next check attaches a spare (failover);
//! - every packet sent on each attached path, numbered from 1 with the last
//!   id received in order as its acknowledgement; packets from the backend
//!   taken once, in order (duplicates from the other path dropped).
//!
//! The game traffic: the stand-in (`muta-otserv`) greets with `'A'` and the
//! address it sees; the bot then sends `rate` packets `'E' seq time pad` a
//! second, which come back echoed. The report counts, at the application's
//! level, echoes lost, duplicated and out of order: what the multi-path
//! machinery must keep at zero while a forwarder dies. With `direct`, the
//! same bots speak plain Tibia framing straight to the stand-in: the
//! baseline of the benchmark.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpStream;

use super::{BUCKETS, bucket_of, quantile};
use crate::netpoll::{NETPOLL_ERR, NETPOLL_ET, NETPOLL_HUP, NETPOLL_READ, NETPOLL_WRITE, Netpoll};
use crate::proto::otc::{self, OtcFrame};

/// The client's check interval: pings and reconnects.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(2500);
/// The session's selection interval.
pub const SELECT_INTERVAL: Duration = Duration::from_millis(500);
/// A path without a pong this long is cut (3 checks, less 50 ms).
pub const PING_TIMEOUT: Duration = Duration::from_millis(7450);
/// How often a worker walks its bots (timers, sends, writes).
const SWEEP_EVERY: Duration = Duration::from_millis(1);
/// A path is replaced only by one this much faster.
pub const HYSTERESIS_MS: u32 = 20;

/// How an OTC load run is shaped.
#[derive(Clone, Debug)]
pub struct OtcBotCfg {
    /// The proxies (forwarders) each bot keeps a path to; with `direct`,
    /// the game server.
    pub proxies: Vec<SocketAddr>,
    /// Plain Tibia framing straight to `proxies[0]` (the baseline).
    pub direct: bool,
    /// Bots (sessions).
    pub sessions: u32,
    /// The game-server port the session asks for.
    pub port: u16,
    /// Packets per second per bot.
    pub rate: f64,
    /// Bytes of padding per packet.
    pub size: usize,
    /// How long each bot sends, from its greeting.
    pub duration: Duration,
    /// Bots start spread over this long.
    pub ramp: Duration,
    /// How long to wait for the last echoes.
    pub drain: Duration,
    /// Paths a session is attached to at once (`maxActiveProxies`).
    pub max_active: usize,
    /// Worker threads.
    pub threads: usize,
    /// Local addresses the bots connect from, one each in turn.
    pub bind_ips: Vec<IpAddr>,
    /// Give up on a bot not greeted by then.
    pub greet_timeout: Duration,
}

impl Default for OtcBotCfg {
    fn default() -> OtcBotCfg {
        OtcBotCfg {
            proxies: Vec::new(),
            direct: false,
            sessions: 10,
            port: 7172,
            rate: 10.0,
            size: 32,
            duration: Duration::from_secs(10),
            ramp: Duration::from_secs(1),
            drain: Duration::from_secs(5),
            max_active: 2,
            threads: 2,
            bind_ips: Vec::new(),
            greet_timeout: Duration::from_secs(20),
        }
    }
}

/// What an OTC run measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtcReport {
    /// Bots started.
    pub sessions: u32,
    /// Bots the game server greeted.
    pub greeted: u32,
    /// Greetings that named another address than the bot's own.
    pub wrong_addr: u32,
    /// Packets sent.
    pub sent: u64,
    /// Echoes received (each once).
    pub received: u64,
    /// Echoes never received.
    pub lost: u64,
    /// Echoes received twice or more.
    pub duplicated: u64,
    /// Echoes received out of order.
    pub reordered: u64,
    /// Bots whose session ended or that were never greeted.
    pub errors: u32,
    /// Paths attached (beyond the first two of each session: failovers).
    pub attaches: u64,
    /// Round trips, µs.
    pub latency_us: super::Latency,
}

impl OtcReport {
    /// One JSON object.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"sessions\":{},\"greeted\":{},\"wrong_addr\":{},\"sent\":{},\"received\":{},\
             \"lost\":{},\"duplicated\":{},\"reordered\":{},\"errors\":{},\"attaches\":{},\
             \"latency_us\":{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}}}}",
            self.sessions,
            self.greeted,
            self.wrong_addr,
            self.sent,
            self.received,
            self.lost,
            self.duplicated,
            self.reordered,
            self.errors,
            self.attaches,
            self.latency_us.p50,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max
        )
    }

    /// Every bot greeted from its own address, every echo back once, in
    /// order.
    pub fn ok(&self) -> bool {
        self.sessions > 0
            && self.greeted == self.sessions
            && self.errors == 0
            && self.wrong_addr == 0
            && self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.received == self.sent
    }

    fn merge(&mut self, o: &OtcReport) {
        self.sessions += o.sessions;
        self.greeted += o.greeted;
        self.wrong_addr += o.wrong_addr;
        self.sent += o.sent;
        self.received += o.received;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.errors += o.errors;
        self.attaches += o.attaches;
    }
}

/// Where a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathState {
    /// Not connected; dialled at the next check.
    Down,
    /// Connecting, or connected and waiting for the first pong.
    Waiting,
    /// Pinged back: usable.
    Up,
}

/// One connection to one proxy.
#[derive(Debug)]
struct Path {
    stream: Option<TcpStream>,
    state: PathState,
    ping_ms: u32,
    ping_sent: Instant,
    waiting_ping: bool,
    in_buf: Vec<u8>,
    out: Vec<u8>,
}

/// One bot: its paths and its session.
#[derive(Debug)]
struct Bot {
    bind: Option<IpAddr>,
    paths: Vec<Path>,
    session: u32,
    started: bool,
    attached: Vec<usize>,
    /// Client-to-server frames not yet acknowledged, by packet id.
    send_queue: BTreeMap<u32, Vec<u8>>,
    next_out: u32,
    next_in: u32,
    held: BTreeMap<u32, Vec<u8>>,
    greeted: bool,
    failed: bool,
    next_check: Instant,
    /// Each session's own selection timer, from its start (the real
    /// client's run from each session's creation: sessions do not attach,
    /// and so do not send, in step).
    next_select: Instant,
    next_send: Instant,
    stop_sending_at: Option<Instant>,
    seq_sent: u32,
    seq_expected: u32,
}

/// A worker: some of the bots on one netpoll.
struct Worker {
    cfg: OtcBotCfg,
    np: Netpoll,
    bots: Vec<Bot>,
    report: OtcReport,
    hist: Vec<u64>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
}

fn micros(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

impl Worker {
    fn new(
        cfg: &OtcBotCfg,
        ids: std::ops::Range<u32>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Worker> {
        let now = Instant::now();
        let n = ids.len().max(1) as u32;
        let base = session_base();
        let bots = ids
            .clone()
            .map(|i| {
                let start_at = now + cfg.ramp.mul_f64(f64::from(i - ids.start) / f64::from(n));
                Bot {
                    bind: (!cfg.bind_ips.is_empty())
                        .then(|| cfg.bind_ips[i as usize % cfg.bind_ips.len()]),
                    paths: (0..if cfg.direct { 1 } else { cfg.proxies.len() })
                        .map(|_| Path {
                            stream: None,
                            state: PathState::Down,
                            ping_ms: 5000,
                            ping_sent: now,
                            waiting_ping: false,
                            in_buf: Vec::new(),
                            out: Vec::new(),
                        })
                        .collect(),
                    session: base.wrapping_add(i).max(1),
                    started: false,
                    attached: Vec::new(),
                    send_queue: BTreeMap::from([(1, hello_frame(base.wrapping_add(i).max(1)))]),
                    next_out: 2,
                    next_in: 1,
                    held: BTreeMap::new(),
                    greeted: false,
                    failed: false,
                    next_check: start_at,
                    next_select: start_at,
                    next_send: start_at,
                    stop_sending_at: None,
                    seq_sent: 0,
                    seq_expected: 1,
                }
            })
            .collect();
        Ok(Worker {
            cfg: cfg.clone(),
            np: Netpoll::init(1024)?,
            bots,
            report: OtcReport {
                sessions: ids.len() as u32,
                ..OtcReport::default()
            },
            hist: vec![0; BUCKETS],
            epoch: now,
            stop,
        })
    }

    fn token(&self, bot: usize, path: usize) -> u64 {
        (bot * self.cfg.proxies.len().max(1) + path) as u64
    }

    /// Dials a path (the client re-dials at the next check).
    fn dial(&mut self, b: usize, p: usize) {
        let addr = self.cfg.proxies[p];
        let token = self.token(b, p);
        let bot = &mut self.bots[b];
        let opened = match bot.bind {
            Some(from) => crate::netpoll::connect_from(from, addr),
            None => TcpStream::connect(addr),
        };
        let Ok(stream) = opened else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let flags = NETPOLL_READ | NETPOLL_WRITE | NETPOLL_ET;
        if self.np.add(&stream, flags, token).is_err() {
            return;
        }
        let path = &mut bot.paths[p];
        path.stream = Some(stream);
        path.state = PathState::Waiting;
        path.in_buf.clear();
        path.out.clear();
        if self.cfg.direct {
            // A Tibia client speaks first; the game server greets then.
            path.out.extend_from_slice(&HELLO);
        } else {
            path.ping_sent = Instant::now();
            path.waiting_ping = true;
            ping(&mut path.out, path.ping_ms);
        }
    }

    fn drop_path(&mut self, b: usize, p: usize) {
        let bot = &mut self.bots[b];
        let path = &mut bot.paths[p];
        if let Some(stream) = path.stream.take() {
            let _ = self.np.del(&stream);
        }
        path.state = PathState::Down;
        path.ping_ms = 2 * CHECK_INTERVAL.as_millis() as u32;
        path.out.clear();
        bot.attached.retain(|&a| a != p);
        if self.cfg.direct && !bot.failed && bot.stop_sending_at.is_none() {
            bot.failed = true;
        }
    }

    /// Each bot's check, every 2.5 s from its start: dial what is down,
    /// ping what is up, cut what is silent.
    fn check(&mut self, b: usize, now: Instant) {
        if now < self.bots[b].next_check || self.bots[b].failed {
            return;
        }
        self.bots[b].next_check = now + CHECK_INTERVAL;
        let first = !self.bots[b].started;
        self.bots[b].started = true;
        for p in 0..self.bots[b].paths.len() {
            let path = &self.bots[b].paths[p];
            let (state, waiting, since) = (path.state, path.waiting_ping, path.ping_sent);
            match state {
                // A direct bot has one connection, never dialled again.
                PathState::Down if self.cfg.direct && !first => {}
                PathState::Down => self.dial(b, p),
                _ if self.cfg.direct => {}
                _ if waiting => {
                    if now.duration_since(since) > PING_TIMEOUT {
                        self.drop_path(b, p);
                    }
                }
                PathState::Up => {
                    let path = &mut self.bots[b].paths[p];
                    path.ping_sent = now;
                    path.waiting_ping = true;
                    ping(&mut path.out, path.ping_ms);
                }
                PathState::Waiting => {}
            }
        }
    }

    /// Every 500 ms: the client's `selectProxies`, one change at most.
    fn select(&mut self, b: usize) {
        let max = self.cfg.max_active;
        let bot = &mut self.bots[b];
        if bot.failed || self.cfg.direct {
            return;
        }
        let paths = &bot.paths;
        bot.attached.retain(|&p| paths[p].state == PathState::Up);
        let candidate = (0..paths.len())
            .filter(|&p| paths[p].state == PathState::Up && !bot.attached.contains(&p))
            .min_by_key(|&p| paths[p].ping_ms);
        let Some(candidate) = candidate else {
            return;
        };
        let best = bot
            .attached
            .iter()
            .copied()
            .min_by_key(|&p| paths[p].ping_ms);
        let worst = bot
            .attached
            .iter()
            .copied()
            .max_by_key(|&p| paths[p].ping_ms);
        let replace_worst = match (best, worst) {
            (Some(best), Some(worst)) => {
                worst != best && paths[worst].ping_ms > paths[candidate].ping_ms + HYSTERESIS_MS
            }
            _ => false,
        };
        if bot.attached.len() != max || replace_worst {
            let path = &mut bot.paths[candidate];
            put_frame(
                &mut path.out,
                bot.session,
                otc::PACKET_ID_OPEN,
                u32::from(self.cfg.port),
                &[],
            );
            for frame in bot.send_queue.values() {
                path.out.extend_from_slice(frame);
            }
            bot.attached.push(candidate);
            self.report.attaches += 1;
        }
        if bot.attached.len() > max
            && let Some(worst) = worst
        {
            let path = &mut bot.paths[worst];
            put_frame(&mut path.out, bot.session, otc::PACKET_ID_END, 0, &[]);
            bot.attached.retain(|&p| p != worst);
        }
    }

    /// The bot's next game packet, if it is due.
    fn send_due(&mut self, b: usize, now: Instant) {
        let cfg = &self.cfg;
        let bot = &mut self.bots[b];
        if !bot.greeted || bot.failed || bot.stop_sending_at.is_some_and(|at| now >= at) {
            return;
        }
        while bot.next_send <= now && bot.stop_sending_at.is_none_or(|at| bot.next_send < at) {
            bot.seq_sent += 1;
            let mut packet = Vec::with_capacity(2 + 13 + cfg.size);
            packet.extend_from_slice(&((13 + cfg.size) as u16).to_le_bytes());
            packet.push(b'E');
            packet.extend_from_slice(&bot.seq_sent.to_le_bytes());
            packet.extend_from_slice(&micros(self.epoch).to_le_bytes());
            packet.resize(2 + 13 + cfg.size, 0x5a);
            self.report.sent += 1;
            bot.next_send += Duration::from_secs_f64(1.0 / cfg.rate);
            if cfg.direct {
                bot.paths[0].out.extend_from_slice(&packet);
                continue;
            }
            let mut frame = Vec::with_capacity(14 + packet.len());
            put_frame(
                &mut frame,
                bot.session,
                bot.next_out,
                bot.next_in - 1,
                &packet,
            );
            bot.next_out += 1;
            for &p in &bot.attached {
                bot.paths[p].out.extend_from_slice(&frame);
            }
            bot.send_queue.insert(bot.next_out - 1, frame);
        }
    }
}

/// The session's first frame: [`HELLO`] as packet 1.
fn hello_frame(session: u32) -> Vec<u8> {
    let mut frame = Vec::new();
    put_frame(&mut frame, session, 1, 0, &HELLO);
    frame
}

/// Session ids differ from run to run, as the client's do.
fn session_base() -> u32 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u32).wrapping_mul(2_654_435_761)
}

/// The first packet of a bot: a Tibia client speaks first, and a game
/// server without the prefix learns only from it that none comes. Echoed
/// back, and ignored.
const HELLO: [u8; 3] = [1, 0, b'H'];

fn put_frame(out: &mut Vec<u8>, session: u32, packet_id: u32, arg: u32, rest: &[u8]) {
    otc::put_header(out, rest.len(), session, packet_id, arg);
    out.extend_from_slice(rest);
}

fn ping(out: &mut Vec<u8>, last_ms: u32) {
    OtcFrame::Ping {
        uid: 0x6d75_7461,
        last_ping_ms: Some(last_ms),
    }
    .encode(out);
}

impl Worker {
    /// Reads a path until it would block; false if it closed or failed.
    fn read_path(&mut self, b: usize, p: usize) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let Some(stream) = self.bots[b].paths[p].stream.as_mut() else {
                return false;
            };
            match stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    if !self.bytes_in(b, p, &buf[..n]) {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    fn bytes_in(&mut self, b: usize, p: usize, mut data: &[u8]) -> bool {
        let mut in_buf = std::mem::take(&mut self.bots[b].paths[p].in_buf);
        let mut ok = true;
        while ok && !data.is_empty() {
            if !otc::gather(&mut in_buf, &mut data) {
                break;
            }
            ok = if self.cfg.direct {
                self.app_packet(b, &in_buf);
                true
            } else {
                self.frame_in(b, p, &in_buf)
            };
            in_buf.clear();
        }
        self.bots[b].paths[p].in_buf = in_buf;
        ok
    }

    fn frame_in(&mut self, b: usize, p: usize, bytes: &[u8]) -> bool {
        let Ok(Some((frame, _))) = OtcFrame::decode(bytes) else {
            return false;
        };
        let bot = &mut self.bots[b];
        match frame {
            OtcFrame::Ping { .. } => {
                let path = &mut bot.paths[p];
                path.waiting_ping = false;
                path.ping_ms = path.ping_sent.elapsed().as_millis() as u32;
                path.state = PathState::Up;
            }
            OtcFrame::Open { .. } => return false,
            OtcFrame::End { session } => {
                // The session ended before the bot had every echo back.
                if session == bot.session && bot.seq_expected <= bot.seq_sent.max(1) {
                    bot.failed = true;
                    bot.attached.clear();
                }
            }
            OtcFrame::Data {
                session,
                packet_id,
                ack,
                packet,
            } if session == bot.session => {
                while bot
                    .send_queue
                    .first_key_value()
                    .is_some_and(|(&id, _)| id <= ack)
                {
                    bot.send_queue.pop_first();
                }
                if packet_id < bot.next_in || bot.held.contains_key(&packet_id) {
                    return true; // the other path's copy
                }
                bot.held.insert(packet_id, packet.to_vec());
                loop {
                    let next = self.bots[b].next_in;
                    let Some(packet) = self.bots[b].held.remove(&next) else {
                        break;
                    };
                    self.bots[b].next_in += 1;
                    self.app_packet(b, &packet);
                }
            }
            OtcFrame::Data { .. } => {}
        }
        true
    }

    /// One Tibia packet from the game server, in order.
    fn app_packet(&mut self, b: usize, packet: &[u8]) {
        let bot = &mut self.bots[b];
        match packet.get(2) {
            Some(b'A') => {
                bot.greeted = true;
                self.report.greeted += 1;
                let now = Instant::now();
                bot.next_send = now;
                bot.stop_sending_at = Some(now + self.cfg.duration);
                let seen = std::str::from_utf8(&packet[3..]).unwrap_or("");
                if let Some(ip) = bot.bind
                    && seen != ip.to_string()
                {
                    self.report.wrong_addr += 1;
                }
            }
            Some(b'E') if packet.len() >= 15 => {
                let seq = u32::from_le_bytes(packet[3..7].try_into().expect("4 bytes"));
                let sent = u64::from_le_bytes(packet[7..15].try_into().expect("8 bytes"));
                if seq == bot.seq_expected {
                    bot.seq_expected += 1;
                    self.report.received += 1;
                    self.hist[bucket_of(micros(self.epoch).saturating_sub(sent))] += 1;
                } else if seq < bot.seq_expected {
                    self.report.duplicated += 1;
                } else {
                    self.report.reordered += 1;
                    self.report.received += 1;
                    bot.seq_expected = seq + 1;
                }
            }
            _ => {}
        }
    }

    fn flush(&mut self) {
        for b in 0..self.bots.len() {
            for p in 0..self.bots[b].paths.len() {
                let path = &mut self.bots[b].paths[p];
                let Some(stream) = path.stream.as_mut() else {
                    continue;
                };
                if path.out.is_empty() {
                    continue;
                }
                match stream.write(&path.out) {
                    Ok(n) => {
                        path.out.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => self.drop_path(b, p),
                }
            }
        }
    }

    /// The loop: reads as they come; the sweeps over every bot (checks,
    /// selections, sends, then the writes) once a millisecond, so a worker's
    /// cost per wake-up does not grow with its bots (the bots produce output
    /// only in the sweeps: an echo needs no answer). A packet's time is
    /// taken when it is sent, so the pacing's millisecond is not latency.
    fn run(mut self) -> (OtcReport, Vec<u64>) {
        let mut events = Vec::with_capacity(1024);
        let until = self.epoch + self.cfg.ramp + self.cfg.greet_timeout;
        let (mut next_sweep, mut next_done_check) = (Instant::now(), Instant::now());
        loop {
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + SWEEP_EVERY;
            }
            if now >= next_done_check {
                if self.finished(now, until) {
                    break;
                }
                next_done_check = now + Duration::from_millis(50);
            }
            events.clear();
            let wait_ms = next_sweep
                .saturating_duration_since(Instant::now())
                .as_millis()
                .max(1) as i32;
            let _ = self.np.wait(&mut events, wait_ms);
            for ev in events.drain(..) {
                let bot = ev.data as usize / self.cfg.proxies.len().max(1);
                let path = ev.data as usize % self.cfg.proxies.len().max(1);
                if ev.events & (NETPOLL_READ | NETPOLL_HUP | NETPOLL_ERR) != 0
                    && !self.read_path(bot, path)
                {
                    self.drop_path(bot, path);
                }
            }
        }
        self.finish()
    }

    /// Every bot's timers, then every path's output.
    fn sweep(&mut self, now: Instant) {
        let stopping = self.stop.load(Ordering::Relaxed);
        for b in 0..self.bots.len() {
            self.check(b, now);
            if now >= self.bots[b].next_select {
                self.bots[b].next_select = now + SELECT_INTERVAL;
                self.select(b);
            }
            if stopping && self.bots[b].stop_sending_at.is_none_or(|at| at > now) {
                self.bots[b].stop_sending_at = Some(now);
            }
            self.send_due(b, now);
        }
        self.flush();
    }

    /// True once every bot is done (failed, or sent all and got every echo
    /// or its drain passed), or no greeting can come any more.
    fn finished(&self, now: Instant, greet_until: Instant) -> bool {
        self.bots.iter().all(|bot| {
            bot.failed
                || (!bot.greeted && now >= greet_until)
                || bot.stop_sending_at.is_some_and(|at| {
                    now >= at && (bot.seq_expected > bot.seq_sent || now >= at + self.cfg.drain)
                })
        })
    }

    fn finish(mut self) -> (OtcReport, Vec<u64>) {
        for bot in &self.bots {
            if bot.failed || !bot.greeted {
                self.report.errors += 1;
            }
            self.report.lost += u64::from(bot.seq_sent.saturating_sub(bot.seq_expected - 1));
        }
        (self.report, self.hist)
    }
}

/// Runs the bots on `cfg.threads` workers until done or `stop`.
pub fn run_until(cfg: &OtcBotCfg, stop: Arc<AtomicBool>) -> OtcReport {
    let threads = cfg.threads.clamp(1, cfg.sessions.max(1) as usize) as u32;
    let per = cfg.sessions.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let ids = (t * per).min(cfg.sessions)..((t + 1) * per).min(cfg.sessions);
            let (cfg, stop) = (cfg.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("otc-bot-{t}"))
                .spawn(move || Worker::new(&cfg, ids, stop).map(Worker::run))
                .expect("spawn a worker")
        })
        .collect();
    let mut report = OtcReport::default();
    let mut hist = vec![0u64; BUCKETS];
    for handle in handles {
        match handle.join() {
            Ok(Ok((r, h))) => {
                report.merge(&r);
                hist.iter_mut().zip(h).for_each(|(a, b)| *a += b);
            }
            _ => report.errors += per,
        }
    }
    report.latency_us = super::Latency {
        p50: quantile(&hist, 0.5),
        p99: quantile(&hist, 0.99),
        p999: quantile(&hist, 0.999),
        max: quantile(&hist, 1.0),
    };
    report
}

/// Runs the bots to the end.
pub fn run(cfg: &OtcBotCfg) -> OtcReport {
    run_until(cfg, Arc::new(AtomicBool::new(false)))
}

/// Usage of the OTC mode.
pub const USAGE: &str = "\
muta-bot --otc: OTClient-style multi-path bots through muta-proxy's [otc] front end

Usage: muta-bot --otc ADDR[,ADDR...] [OPTIONS]
       muta-bot --otc-direct ADDR [OPTIONS]

  --otc ADDR,...         the proxies (forwarders) every bot keeps a path to
  --otc-direct ADDR      plain Tibia framing straight to the game server (baseline)
  --sessions N           bots, one game session each [default: 10]
  --port P               the game-server port the sessions ask for [default: 7172]
  --rate R               packets per second per bot [default: 10]
  --size N               bytes of padding per packet [default: 32]
  --duration S           seconds each bot sends, from its greeting [default: 10]
  --ramp S               bots start spread over this long [default: 1]
  --drain S              seconds to wait for the last echoes [default: 5]
  --max-active N         paths a session uses at once [default: 2]
  --threads N            worker threads [default: 2]
  --bind-ips FIRST-LAST  connect bot K from the K-th address of this IPv4 range
  --json                 print the report as one JSON object

Exit status: 0 if every bot was greeted from its own address and got every
echo back once and in order, 1 otherwise.
";

fn parse_args(args: Vec<std::ffi::OsString>) -> Result<Option<(OtcBotCfg, bool)>, String> {
    let mut cfg = OtcBotCfg::default();
    let mut json = false;
    let mut args = crate::cli::FlagArgs::new(args)?;
    let secs = |v: f64| {
        (v.is_finite() && v >= 0.0)
            .then(|| Duration::from_secs_f64(v))
            .ok_or_else(|| "a duration must be a non-negative number of seconds".to_string())
    };
    let addrs = |text: String| -> Result<Vec<SocketAddr>, String> {
        text.split(',')
            .map(|a| {
                a.trim()
                    .parse()
                    .map_err(|_| format!("`{a}` is not an IP:PORT"))
            })
            .collect()
    };
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--otc" => cfg.proxies = addrs(args.value(&flag)?)?,
            "--otc-direct" => {
                cfg.proxies = addrs(args.value(&flag)?)?;
                cfg.direct = true;
            }
            "--sessions" => cfg.sessions = args.parse(&flag)?,
            "--port" => cfg.port = args.parse(&flag)?,
            "--rate" => cfg.rate = args.parse(&flag)?,
            "--size" => cfg.size = args.parse(&flag)?,
            "--duration" => cfg.duration = secs(args.parse(&flag)?)?,
            "--ramp" => cfg.ramp = secs(args.parse(&flag)?)?,
            "--drain" => cfg.drain = secs(args.parse(&flag)?)?,
            "--max-active" => cfg.max_active = args.parse(&flag)?,
            "--threads" => cfg.threads = args.parse(&flag)?,
            "--bind-ips" => cfg.bind_ips = crate::cli::parse_ip_range(&flag, &args.value(&flag)?)?,
            "--json" => json = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if cfg.proxies.is_empty() || (cfg.direct && cfg.proxies.len() != 1) {
        return Err("--otc needs at least one address, --otc-direct exactly one".to_string());
    }
    if !(cfg.rate > 0.0 && cfg.rate.is_finite()) || cfg.size > 60_000 || cfg.max_active == 0 {
        return Err("--rate must be above 0, --size at most 60000, --max-active at least 1".into());
    }
    Ok(Some((cfg, json)))
}

/// `muta-bot --otc`'s `main`.
pub fn main_with_args(args: Vec<std::ffi::OsString>) -> i32 {
    let (cfg, json) = match parse_args(args) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            print!("{USAGE}");
            return 0;
        }
        Err(msg) => {
            eprintln!("muta-bot: {msg}\n\n{USAGE}");
            return 2;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(err) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("muta-bot: cannot handle signals: {err}");
        }
    }
    let report = run_until(&cfg, stop);
    if json {
        println!("{}", report.to_json());
    } else {
        println!(
            "{} sessions, {} greeted, {} sent, {} received, {} lost, {} duplicated, {} reordered, \
             {} failed; latency p50 {} us, p99 {} us",
            report.sessions,
            report.greeted,
            report.sent,
            report.received,
            report.lost,
            report.duplicated,
            report.reordered,
            report.errors,
            report.latency_us.p50,
            report.latency_us.p99
        );
    }
    if report.ok() { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_a_bad_set_is_refused() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let (cfg, json) = parse_args(args(&[
            "--otc",
            "127.0.0.1:1,127.0.0.1:2",
            "--sessions=3",
            "--json",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (cfg.proxies.len(), cfg.sessions, cfg.direct, json),
            (2, 3, false, true)
        );
        assert!(parse_args(args(&["--otc-direct", "127.0.0.1:1,127.0.0.1:2"])).is_err());
        assert!(parse_args(args(&["--sessions", "3"])).is_err());
    }
}
