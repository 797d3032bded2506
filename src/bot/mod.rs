//! `muta-bot`: the MUTA client library ([`client`]) and a load client that
//! plays many players at once against a login server, its shards and their
//! proxies (thesis §3.7 "Testing", §3.8.5 "More thorough testing").
//!
//! Each bot logs in (account `bot{i}`, password the same), is sent to a proxy
//! by its shard, connects to that proxy (refusing any key but the one the
//! login server named), proves its token, waits for the shard's welcome, and
//! then sends `rate` echo messages a second for `duration` seconds — exactly
//! `round(rate * duration)` of them — and optionally chat lines (broadcast to
//! every player). Every echo must come back once and in order; its round trip
//! is the latency measured. A bot with an error, a missing or reordered echo,
//! or no welcome has failed.
//!
//! The bots run on a few worker threads, each an event loop over netpoll with
//! non-blocking sockets (thousands of bots per thread). The report is one
//! JSON object (the contract other checks build on):
//!
//! ```text
//! {"clients":N,"authenticated":A,"sent":S,"received":R,"errors":E,
//!  "latency_us":{"p50":..,"p99":..,"p999":..,"max":..}}
//! ```
//!
//! `sent` and `received` count echo messages; `errors` counts failed bots.
//! SIGINT or SIGTERM stops sending early: the bots drain their last replies
//! and the report covers the bots that started playing.
//!
//! SIGUSR1 marks the start of a measurement window: the report's latency
//! percentiles then cover only the echoes sent after it (`make bench` sends
//! it once every bot plays, so log-ins and the ramp do not count); `sent` and
//! `received` still count every echo.
//!
//! With `--storm` (a connection storm), every bot logs in first and waits
//! with its ticket; when all have one, all connect to their proxies at once,
//! and the report gains `"storm":{"handshakes":H,"seconds":S,"per_s":P}`:
//! how many were welcomed, how long from the first connect to the last
//! welcome, and handshakes (key exchange, auth proof, the shard's welcome)
//! per second.

pub mod client;
pub mod otc;
mod rejoin;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::cryptchan::{KeyPair, PublicKey, TOKEN_BYTES};
use crate::netpoll::{
    NETPOLL_ERR, NETPOLL_ET, NETPOLL_HUP, NETPOLL_READ, NETPOLL_WRITE, Netpoll, NetpollEvent,
};
use crate::proto::client::{AuthProof, ClientMsg, ServerMsg};
use crate::proto::frame::{Channel, Frames, Unit};
use crate::proto::login::{FromLogin, RESULT_OK, ToLogin};
use crate::proto::messages;

/// How a load run is shaped.
#[derive(Clone, Debug)]
pub struct BotCfg {
    /// The login server.
    pub login: String,
    /// The login server's key, if pinned.
    pub login_key: Option<PublicKey>,
    /// The shard to ask for.
    pub shard: String,
    /// Number of bots.
    pub clients: u32,
    /// First account number (`bot{first}`..).
    pub first_account: u32,
    /// Echo messages per second per bot.
    pub rate: f64,
    /// Chat lines per second per bot (broadcast to every player).
    pub chat_rate: f64,
    /// How long each bot sends, from its welcome.
    pub duration: Duration,
    /// Bytes of echo padding.
    pub size: usize,
    /// Bots start spread over this long.
    pub ramp: Duration,
    /// How long to wait for the last replies.
    pub drain: Duration,
    /// Worker threads.
    pub threads: usize,
    /// Give up on a bot that has not been welcomed by then.
    pub connect_timeout: Duration,
    /// Print one progress line per second on stderr.
    pub progress: bool,
    /// A connection storm: log every bot in first, then connect all at once.
    pub storm: bool,
    /// Local addresses the bots connect from, one each in turn (empty: the
    /// kernel's choice): players of their own addresses, for per-address
    /// limits and forwarders.
    pub bind_ips: Vec<IpAddr>,
    /// `--rejoin`: a bot whose connection ends logs in again and plays on
    /// (`bot::rejoin`).
    pub rejoin: bool,
    /// `--churn R`: with `rejoin`, each playing bot leaves on purpose about
    /// R times a second, and comes back.
    pub churn_per_s: f64,
}

impl Default for BotCfg {
    fn default() -> BotCfg {
        BotCfg {
            login: "127.0.0.1:7700".to_string(),
            login_key: None,
            shard: "shard-1".to_string(),
            clients: 10,
            first_account: 0,
            rate: 10.0,
            chat_rate: 0.0,
            duration: Duration::from_secs(10),
            size: 32,
            ramp: Duration::from_secs(1),
            drain: Duration::from_secs(5),
            threads: 2,
            connect_timeout: Duration::from_secs(20),
            progress: false,
            storm: false,
            bind_ips: Vec::new(),
            rejoin: false,
            churn_per_s: 0.0,
        }
    }
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BotReport {
    /// Bots started.
    pub clients: u32,
    /// Bots the shard welcomed.
    pub authenticated: u32,
    /// Echo messages sent.
    pub sent: u64,
    /// Echo messages received back.
    pub received: u64,
    /// Bots that failed.
    pub errors: u32,
    /// Echoes sent and never received: outstanding when their bot failed,
    /// or skipped over (not part of the JSON contract's first keys).
    pub lost: u64,
    /// Echo round trips.
    pub latency_us: Latency,
    /// Echoes the latency figures cover (all, or those sent after the mark;
    /// not part of the JSON contract).
    pub latency_samples: u64,
    /// Broadcast messages received (chat, moves, emotes).
    pub broadcasts: u64,
    /// Why bots failed, with counts (not part of the JSON contract).
    pub failures: Vec<(String, u32)>,
    /// A storm's handshakes and microseconds, first connect to last welcome.
    pub storm: Option<(u32, u64)>,
    /// When the last bot was welcomed (not part of the JSON contract).
    pub last_welcome: Option<Instant>,
    /// `--rejoin`'s counts (`bot::rejoin`), in the JSON as `"rejoin"`.
    pub rejoin: Option<RejoinCounts>,
}

/// What `--rejoin` counts (see `bot::rejoin`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RejoinCounts {
    /// Connections cut while playing.
    pub cuts: u64,
    /// Echoes in flight on those connections.
    pub cut_in_flight: u64,
    /// Bots welcomed again after a cut.
    pub rejoins: u64,
    /// Planned departures (`--churn`).
    pub churns: u64,
    /// The longest time from a cut to the welcome again.
    pub comeback_max_ms: u64,
    /// Bots still out at the end, cut longer ago than the grace.
    pub not_back: u32,
    /// Echoes that came back twice.
    pub duplicated: u64,
    /// Echoes that came after a later one.
    pub reordered: u64,
    /// Why connections were cut, with counts.
    pub cut_reasons: Vec<(String, u32)>,
}

impl BotReport {
    /// The JSON contract line (a storm adds its own key at the end).
    pub fn to_json(&self) -> String {
        let storm = match self.storm {
            Some((handshakes, us)) => format!(
                ",\"storm\":{{\"handshakes\":{handshakes},\"seconds\":{seconds:.3},\"per_s\":{:.0}}}",
                f64::from(handshakes) / (us as f64 / 1e6).max(1e-6),
                seconds = us as f64 / 1e6
            ),
            None => String::new(),
        };
        let storm = storm + &self.rejoin.as_ref().map_or(String::new(), rejoin_json);
        format!(
            "{{\"clients\":{},\"authenticated\":{},\"sent\":{},\"received\":{},\"errors\":{},\
             \"latency_us\":{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}},\"lost\":{}{storm}}}",
            self.clients,
            self.authenticated,
            self.sent,
            self.received,
            self.errors,
            self.latency_us.p50,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max,
            self.lost
        )
    }

    /// True when at least one bot ran, and every bot was welcomed and got
    /// every echo back. (A run stopped before any bot was welcomed measured
    /// nothing: not a success.)
    pub fn ok(&self) -> bool {
        if let Some(r) = &self.rejoin {
            // Echoes of cut connections are not lost; nothing else may be.
            return self.clients > 0
                && self.errors == 0
                && self.authenticated == self.clients
                && self.lost == 0
                && r.duplicated == 0
                && r.reordered == 0
                && r.not_back == 0;
        }
        self.clients > 0
            && self.errors == 0
            && self.authenticated == self.clients
            && self.received == self.sent
    }
}

fn rejoin_json(r: &RejoinCounts) -> String {
    let reasons: Vec<String> = r
        .cut_reasons
        .iter()
        .map(|(why, n)| format!("{}:{n}", json_string(why)))
        .collect();
    format!(
        ",\"rejoin\":{{\"cuts\":{},\"cut_in_flight\":{},\"rejoins\":{},\"churns\":{},\
         \"comeback_max_ms\":{},\"not_back\":{},\"duplicated\":{},\"reordered\":{},\
         \"cut_reasons\":{{{}}}}}",
        r.cuts,
        r.cut_in_flight,
        r.rejoins,
        r.churns,
        r.comeback_max_ms,
        r.not_back,
        r.duplicated,
        r.reordered,
        reasons.join(",")
    )
}

fn json_string(s: &str) -> String {
    let escaped: String = s
        .chars()
        .map(|c| match c {
            '"' => "\\\"".to_string(),
            '\\' => "\\\\".to_string(),
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
            c => c.to_string(),
        })
        .collect();
    format!("\"{escaped}\"")
}

/// Counters the workers update, read for progress lines.
#[derive(Debug)]
struct Live {
    authenticated: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
    /// Round trips by log bucket, for live percentiles (the report uses
    /// exact samples).
    buckets: Vec<AtomicU64>,
    /// Set by SIGUSR2: end the current window (print its line), start the
    /// next.
    window: Arc<AtomicBool>,
    /// Set by SIGINT/SIGTERM: stop sending, drain, report.
    stop: Arc<AtomicBool>,
    /// Set by SIGUSR1: latency counts from now on.
    mark: Arc<AtomicBool>,
    /// When the mark was seen, in µs since the epoch, plus one (0: none):
    /// echoes sent before it are left out of the latency samples.
    measure_from_us: AtomicU64,
    /// Storm: bots holding a ticket (or failed before getting one).
    ticketed: AtomicU64,
    /// Storm: when the bots were let go, in µs since the epoch, plus one (0:
    /// not yet).
    go_us: AtomicU64,
}

/// The most bytes of one frame from a proxy or the login server, with its
/// length.
const IN_BUF_MAX: usize = 70 * 1024;

/// The live histogram has 2^SUB_BITS buckets per power of two of
/// microseconds: a value is known within 1/16 (6 %).
const SUB_BITS: usize = 4;
const SUBS: usize = 1 << SUB_BITS;
/// Buckets of the live histogram, up to 2^40 µs.
pub(crate) const BUCKETS: usize = SUBS * 40;

pub(crate) fn bucket_of(us: u64) -> usize {
    let us = us.max(1);
    let e = 63 - us.leading_zeros() as usize;
    // The SUB_BITS bits below the leading one (fewer for small values).
    let sub = if e >= SUB_BITS {
        (us >> (e - SUB_BITS)) as usize & (SUBS - 1)
    } else {
        (us << (SUB_BITS - e)) as usize & (SUBS - 1)
    };
    (e * SUBS + sub).min(BUCKETS - 1)
}

/// The largest value of a bucket.
fn bucket_top(i: usize) -> u64 {
    let (e, sub) = (i / SUBS, (i % SUBS) as u64);
    if e >= SUB_BITS {
        ((SUBS as u64 + sub + 1) << (e - SUB_BITS)) - 1
    } else {
        (SUBS as u64 + sub) >> (SUB_BITS - e)
    }
}

/// The `q` quantile of a histogram's counts, as its bucket's top (0 if
/// empty).
pub(crate) fn quantile(counts: &[u64], q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= want {
            return bucket_top(i);
        }
    }
    bucket_top(BUCKETS - 1)
}

impl Live {
    fn new(stop: Arc<AtomicBool>, mark: Arc<AtomicBool>, window: Arc<AtomicBool>) -> Live {
        Live {
            mark,
            window,
            lost: AtomicU64::new(0),
            measure_from_us: AtomicU64::new(0),
            authenticated: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            stop,
            ticketed: AtomicU64::new(0),
            go_us: AtomicU64::new(0),
        }
    }

    /// The bucket counts recorded since `last` (the counts then), which it
    /// updates.
    fn counts_since(&self, last: &mut [u64]) -> Vec<u64> {
        let now: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let delta: Vec<u64> = now.iter().zip(last.iter()).map(|(n, l)| n - l).collect();
        last.copy_from_slice(&now);
        delta
    }

    /// The p99 of the samples recorded since `last`, which it updates.
    fn p99_since(&self, last: &mut [u64]) -> u64 {
        quantile(&self.counts_since(last), 0.99)
    }

    /// The counters a window line differences: sent, received, errors, lost.
    fn counters(&self) -> [u64; 4] {
        [&self.sent, &self.received, &self.errors, &self.lost].map(|c| c.load(Ordering::Relaxed))
    }
}

/// Runs the bots and returns what they measured.
pub fn run(cfg: &BotCfg) -> BotReport {
    run_until(cfg, Arc::new(AtomicBool::new(false)))
}

/// As [`run`]; setting `stop` ends sending early (the bots drain and report).
pub fn run_until(cfg: &BotCfg, stop: Arc<AtomicBool>) -> BotReport {
    run_marked(cfg, stop, Arc::new(AtomicBool::new(false)))
}

/// As [`run_until`]; setting `mark` starts the latency measurement: echoes
/// sent before it are left out of the percentiles.
pub fn run_marked(cfg: &BotCfg, stop: Arc<AtomicBool>, mark: Arc<AtomicBool>) -> BotReport {
    run_windowed(cfg, stop, mark, Arc::new(AtomicBool::new(false)))
}

/// As [`run_marked`]; each time `window` is set, a window line is printed
/// on stderr: what happened since the last one (`docs/attack.md`).
pub fn run_windowed(
    cfg: &BotCfg,
    stop: Arc<AtomicBool>,
    mark: Arc<AtomicBool>,
    window: Arc<AtomicBool>,
) -> BotReport {
    crate::cryptchan::init().expect("libsodium");
    let live = Arc::new(Live::new(stop, mark, window));
    let epoch = Instant::now();
    let threads = cfg.threads.clamp(1, 64).min(cfg.clients.max(1) as usize);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let cfg = cfg.clone();
            let live = live.clone();
            let bots: Vec<u32> = (0..cfg.clients)
                .filter(|i| *i as usize % threads == t)
                .collect();
            thread::Builder::new()
                .name(format!("bot-{t}"))
                .spawn(move || Worker::new(cfg, bots, epoch, live).run())
                .expect("spawn a bot worker")
        })
        .collect();
    let progress = cfg
        .progress
        .then(|| Progress::start(live.clone(), cfg.clients, epoch));
    let windows = Progress::windows(live.clone(), epoch);
    let results: Vec<WorkerResult> = handles
        .into_iter()
        .map(|h| h.join().expect("bot worker panicked"))
        .collect();
    if let Some(progress) = progress {
        progress.stop();
    }
    windows.stop();
    let mut report = BotReport::from_workers(cfg.clients, results);
    if !cfg.rejoin {
        report.rejoin = None;
    }
    let go_us = live.go_us.load(Ordering::Relaxed);
    if cfg.storm && go_us > 0 {
        let go = epoch + Duration::from_micros(go_us - 1);
        let last = report.last_welcome;
        let us = last.map_or(0, |t| t.saturating_duration_since(go).as_micros() as u64);
        report.storm = Some((report.authenticated, us));
    }
    report
}

/// The thread printing one JSON progress line a second (`--progress`).
struct Progress {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Progress {
    fn start(live: Arc<Live>, total: u32, epoch: Instant) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let (mut last_sent, mut last_recv) = (0, 0);
            let mut last_buckets = vec![0u64; BUCKETS];
            while !stopping.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_secs(1));
                let sent = live.sent.load(Ordering::Relaxed);
                let recv = live.received.load(Ordering::Relaxed);
                let p99 = live.p99_since(&mut last_buckets);
                eprintln!(
                    "{{\"progress\":true,\"t_ms\":{},\"clients\":{total},\"authenticated\":{},\"sent_per_s\":{},\"received_per_s\":{},\"p99_us\":{p99},\"errors\":{}}}",
                    epoch.elapsed().as_millis(),
                    live.authenticated.load(Ordering::Relaxed),
                    sent - last_sent,
                    recv - last_recv,
                    live.errors.load(Ordering::Relaxed)
                );
                (last_sent, last_recv) = (sent, recv);
            }
        });
        Progress { stop, thread }
    }

    /// The thread that prints a window line each time `live.window` is
    /// set: echoes received since the last line and their p50 and p99 (from
    /// the live histogram, within 6 %), and the counters' increase:
    ///
    /// ```text
    /// {"window":K,"t_ms":..,"echoes":N,"p50_us":..,"p99_us":..,"sent":..,"received":..,"errors":..,"lost":..}
    /// ```
    fn windows(live: Arc<Live>, epoch: Instant) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let mut last_buckets = vec![0u64; BUCKETS];
            let mut last = live.counters();
            let mut k = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(10));
                if !live.window.swap(false, Ordering::AcqRel) {
                    continue;
                }
                let counts = live.counts_since(&mut last_buckets);
                let now = live.counters();
                let d: Vec<u64> = now.iter().zip(last).map(|(n, l)| n - l).collect();
                eprintln!(
                    "{{\"window\":{k},\"t_ms\":{},\"echoes\":{},\"p50_us\":{},\"p99_us\":{},\"sent\":{},\"received\":{},\"errors\":{},\"lost\":{}}}",
                    epoch.elapsed().as_millis(),
                    counts.iter().sum::<u64>(),
                    quantile(&counts, 0.50),
                    quantile(&counts, 0.99),
                    d[0],
                    d[1],
                    d[2],
                    d[3]
                );
                last = now;
                k += 1;
            }
        });
        Progress { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

impl BotReport {
    /// The workers' results together: sums, the latency percentiles of
    /// every sample, failures by count.
    fn from_workers(clients: u32, results: Vec<WorkerResult>) -> BotReport {
        let mut report = BotReport {
            clients,
            ..BotReport::default()
        };
        let mut samples: Vec<u32> = Vec::new();
        let mut failures: HashMap<String, u32> = HashMap::new();
        let mut rejoin = RejoinCounts::default();
        let mut cut_reasons: HashMap<String, u32> = HashMap::new();
        for r in results {
            rejoin.cuts += r.cuts;
            rejoin.cut_in_flight += r.cut_in_flight;
            rejoin.rejoins += r.rejoins;
            rejoin.churns += r.churns;
            rejoin.comeback_max_ms = rejoin.comeback_max_ms.max(r.comeback_max_ms);
            rejoin.not_back += r.not_back;
            rejoin.duplicated += r.duplicated;
            rejoin.reordered += r.reordered;
            for (why, n) in &r.cut_reasons {
                *cut_reasons.entry(why.clone()).or_insert(0) += n;
            }
            report.last_welcome = report.last_welcome.max(r.last_welcome);
            report.authenticated += r.authenticated;
            report.clients -= r.stopped;
            report.sent += r.sent;
            report.received += r.received;
            report.errors += r.errors;
            report.lost += r.lost;
            report.broadcasts += r.broadcasts;
            samples.extend_from_slice(&r.samples);
            for (why, n) in r.failures {
                *failures.entry(why).or_insert(0) += n;
            }
        }
        samples.sort_unstable();
        report.latency_samples = samples.len() as u64;
        let pick = |q: f64| -> u64 {
            if samples.is_empty() {
                return 0;
            }
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            u64::from(samples[i])
        };
        report.latency_us = Latency {
            p50: pick(0.50),
            p99: pick(0.99),
            p999: pick(0.999),
            max: samples.last().map_or(0, |&v| u64::from(v)),
        };
        let mut failures: Vec<(String, u32)> = failures.into_iter().collect();
        failures.sort_by_key(|f| std::cmp::Reverse(f.1));
        report.failures = failures;
        let mut cut_reasons: Vec<(String, u32)> = cut_reasons.into_iter().collect();
        cut_reasons.sort_by_key(|f| std::cmp::Reverse(f.1));
        rejoin.cut_reasons = cut_reasons;
        report.rejoin = Some(rejoin);
        report
    }
}

/// Where one bot is.
enum Phase {
    /// Not started; starts at its ramp time.
    Idle,
    /// Talking to the login server.
    Login,
    /// Storm: holding a ticket, waiting for every other bot to have one.
    Ticketed,
    /// Talking to the proxy, before the shard's welcome.
    Enter,
    /// Welcomed: sending and checking echoes.
    Playing,
    /// All echoes sent; waiting for the last replies.
    Draining,
    /// Finished well.
    Done,
    /// Failed (counted once).
    Failed,
}

struct Bot {
    account: String,
    phase: Phase,
    stream: Option<TcpStream>,
    chan: Option<Channel>,
    in_buf: Vec<u8>,
    out: Vec<u8>,
    /// The login exchange: 0 waiting for the login result, 1 for the shard result.
    login_step: u8,
    ticket: Option<(String, PublicKey, [u8; TOKEN_BYTES])>,
    /// Echoes to send in all, sent so far, and the next expected back.
    to_send: u64,
    next_seq: u32,
    next_expect: u32,
    chats_sent: u64,
    started: Instant,
    playing_since: Instant,
    deadline: Instant,
    /// The local address it connects from, if it has its own.
    bind: Option<IpAddr>,
    /// `--rejoin`: when its play ends, whatever its connections.
    end: Instant,
    /// `--rejoin`: cut (or not yet let in) since then.
    cut_at: Option<Instant>,
    /// `--churn`: when it leaves on purpose next.
    leave_at: Option<Instant>,
    /// `--churn`: leaving on purpose (draining, then rejoining).
    leaving: bool,
    /// Welcomed at least once (counted once in `authenticated`).
    welcomed_once: bool,
}

#[derive(Default)]
struct WorkerResult {
    /// Bots stopped by a signal before they were welcomed.
    stopped: u32,
    authenticated: u32,
    sent: u64,
    received: u64,
    errors: u32,
    lost: u64,
    broadcasts: u64,
    samples: Vec<u32>,
    failures: HashMap<String, u32>,
    /// When the last bot of this worker was welcomed.
    last_welcome: Option<Instant>,
    cuts: u64,
    cut_in_flight: u64,
    rejoins: u64,
    churns: u64,
    comeback_max_ms: u64,
    not_back: u32,
    duplicated: u64,
    reordered: u64,
    cut_reasons: HashMap<String, u32>,
}

struct Worker {
    cfg: BotCfg,
    np: Netpoll,
    ev_list: Vec<NetpollEvent>,
    bots: Vec<Bot>,
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    epoch: Instant,
    live: Arc<Live>,
    login_addr: Option<SocketAddr>,
    padding: Vec<u8>,
    msg: Vec<u8>,
    read_buf: Vec<u8>,
    result: WorkerResult,
    active: usize,
    /// Storm: the bots have been let go.
    stormed: bool,
    /// The measurement mark has been seen.
    marked: bool,
    /// A stop was asked for: no bot rejoins.
    stopping: bool,
    /// `bot::rejoin`'s random numbers.
    rng: u64,
}

impl Worker {
    fn new(cfg: BotCfg, ids: Vec<u32>, epoch: Instant, live: Arc<Live>) -> Worker {
        let n = cfg.clients.max(1) as f64;
        let to_send = (cfg.rate * cfg.duration.as_secs_f64()).round() as u64;
        let mut timers = BinaryHeap::new();
        let bots: Vec<Bot> = ids
            .iter()
            .enumerate()
            .map(|(local, &i)| {
                let start = epoch + cfg.ramp.mul_f64(f64::from(i) / n);
                timers.push(Reverse((start, local as u32)));
                Bot {
                    account: format!("bot{}", cfg.first_account + i),
                    phase: Phase::Idle,
                    stream: None,
                    chan: None,
                    in_buf: Vec::new(),
                    out: Vec::new(),
                    login_step: 0,
                    ticket: None,
                    to_send,
                    next_seq: 0,
                    next_expect: 0,
                    chats_sent: 0,
                    started: start,
                    playing_since: start,
                    deadline: start + cfg.connect_timeout,
                    bind: (!cfg.bind_ips.is_empty())
                        .then(|| cfg.bind_ips[i as usize % cfg.bind_ips.len()]),
                    end: start + cfg.duration,
                    cut_at: None,
                    leave_at: None,
                    leaving: false,
                    welcomed_once: false,
                }
            })
            .collect();
        let active = bots.len();
        let login_addr = cfg.login.to_socket_addrs().ok().and_then(|mut a| a.next());
        Worker {
            padding: vec![0x42; cfg.size],
            cfg,
            np: Netpoll::init(1024).expect("netpoll"),
            ev_list: Vec::with_capacity(1024),
            bots,
            timers,
            epoch,
            live,
            login_addr,
            msg: Vec::new(),
            read_buf: vec![0; 64 * 1024],
            result: WorkerResult::default(),
            active,
            stormed: false,
            marked: false,
            stopping: false,
            rng: 0x9E37_79B9_7F4A_7C15
                ^ u64::from(ids.first().copied().unwrap_or(0)).wrapping_mul(0x100_0000_01B3)
                | 1,
        }
    }

    fn run(mut self) -> WorkerResult {
        while self.active > 0 {
            if !self.stopping && self.live.stop.load(Ordering::Relaxed) {
                self.stopping = true;
                self.stop_all();
                if self.active == 0 {
                    break;
                }
            }
            if self.cfg.storm && !self.stormed && !self.stopping {
                self.storm_check();
            }
            if !self.marked && self.live.mark.load(Ordering::Relaxed) {
                // The first worker to see the mark sets its time; each drops
                // the samples it took before it.
                let now_us = self.epoch.elapsed().as_micros() as u64 + 1;
                let _ = self.live.measure_from_us.compare_exchange(
                    0,
                    now_us,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                self.result.samples.clear();
                self.marked = true;
            }
            let now = Instant::now();
            // Wake at least every 100 ms to notice a stop request (every
            // millisecond while a storm waits to be let go).
            let most = if self.cfg.storm && !self.stormed {
                1
            } else {
                100
            };
            let timeout = match self.timers.peek() {
                Some(Reverse((at, _))) => {
                    (at.saturating_duration_since(now).as_millis() as i32 + 1).min(most)
                }
                None => most,
            };
            if self.np.wait(&mut self.ev_list, timeout).is_err() {
                continue;
            }
            for i in 0..self.ev_list.len() {
                let ev = self.ev_list[i];
                let b = ev.data as u32;
                if ev.events & (NETPOLL_READ | NETPOLL_HUP | NETPOLL_ERR) != 0 {
                    self.readable(b);
                }
                if ev.events & NETPOLL_WRITE != 0 {
                    self.flush(b);
                }
            }
            let now = Instant::now();
            while let Some(&Reverse((at, b))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                self.timer(b, now);
            }
        }
        self.result
    }

    /// Storm: once every bot holds a ticket (or failed), lets this worker's
    /// bots go, all at once.
    fn storm_check(&mut self) {
        let live = &self.live;
        if live.go_us.load(Ordering::Acquire) == 0 {
            if live.ticketed.load(Ordering::Acquire) < u64::from(self.cfg.clients) {
                return;
            }
            let now_us = self.epoch.elapsed().as_micros() as u64 + 1;
            let _ = live
                .go_us
                .compare_exchange(0, now_us, Ordering::AcqRel, Ordering::Acquire);
        }
        self.stormed = true;
        let now = Instant::now();
        for b in 0..self.bots.len() as u32 {
            let bot = &mut self.bots[b as usize];
            if !matches!(bot.phase, Phase::Ticketed) {
                continue;
            }
            let (address, key, _) = bot.ticket.clone().expect("a ticketed bot has a ticket");
            bot.phase = Phase::Enter;
            bot.deadline = now + self.cfg.connect_timeout;
            let deadline = bot.deadline;
            self.timers.push(Reverse((deadline, b)));
            self.enter(b, &address, key);
        }
    }

    /// Connects to the ticket's proxy; the handshake goes on from there.
    fn enter(&mut self, b: u32, address: &str, key: PublicKey) {
        let Some(addr) = address.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
            return self.fail(b, "cannot resolve the proxy's address");
        };
        if !self.connect(b, addr, Some(key)) {
            return self.fail(b, "cannot connect to the proxy");
        }
        self.flush(b);
    }

    /// Stops sending: bots that play drain, bots not yet welcomed are done
    /// (stopped, not failed).
    fn stop_all(&mut self) {
        let now = Instant::now();
        if self.cfg.rejoin {
            self.count_not_back(now);
        }
        for b in 0..self.bots.len() as u32 {
            let bot = &mut self.bots[b as usize];
            match bot.phase {
                Phase::Playing => {
                    bot.to_send = u64::from(bot.next_seq);
                    bot.phase = Phase::Draining;
                    bot.deadline = now + self.cfg.drain;
                    let deadline = bot.deadline;
                    if bot.next_expect == bot.next_seq {
                        self.done(b);
                    } else {
                        self.timers.push(Reverse((deadline, b)));
                    }
                }
                Phase::Idle | Phase::Login | Phase::Ticketed | Phase::Enter => {
                    // (A bot out between two connections played already.)
                    if !bot.welcomed_once {
                        self.result.stopped += 1;
                    }
                    self.done(b);
                }
                _ => {}
            }
        }
    }

    fn fail(&mut self, b: u32, why: &str) {
        let bot = &mut self.bots[b as usize];
        if matches!(bot.phase, Phase::Done | Phase::Failed) {
            return;
        }
        if self.rejoin(b, why, true) {
            return;
        }
        let bot = &mut self.bots[b as usize];
        if self.cfg.storm && matches!(bot.phase, Phase::Idle | Phase::Login) {
            // It will never hold a ticket: the storm must not wait for it.
            self.live.ticketed.fetch_add(1, Ordering::AcqRel);
        }
        if matches!(bot.phase, Phase::Playing | Phase::Draining) {
            // Its echoes in flight will never come back.
            let lost = u64::from(bot.next_seq - bot.next_expect);
            self.result.lost += lost;
            self.live.lost.fetch_add(lost, Ordering::Relaxed);
        }
        bot.phase = Phase::Failed;
        if let Some(stream) = bot.stream.take() {
            let _ = self.np.del(&stream);
        }
        bot.chan = None;
        self.result.errors += 1;
        self.live.errors.fetch_add(1, Ordering::Relaxed);
        *self.result.failures.entry(why.to_string()).or_insert(0) += 1;
        self.active -= 1;
    }

    fn done(&mut self, b: u32) {
        if self.bots[b as usize].leaving && self.rejoin(b, "left on purpose", false) {
            return;
        }
        let bot = &mut self.bots[b as usize];
        bot.phase = Phase::Done;
        if let Some(stream) = bot.stream.take() {
            let _ = self.np.del(&stream);
        }
        bot.chan = None;
        self.active -= 1;
    }

    fn connect(&mut self, b: u32, addr: SocketAddr, expected: Option<PublicKey>) -> bool {
        let opened = match self.bots[b as usize].bind {
            Some(from) => crate::netpoll::connect_from(from, addr),
            None => TcpStream::connect(addr),
        };
        let Ok(stream) = opened else {
            return false;
        };
        let _ = stream.set_nodelay(true);
        if self
            .np
            .add(
                &stream,
                NETPOLL_READ | NETPOLL_WRITE | NETPOLL_ET,
                u64::from(b),
            )
            .is_err()
        {
            return false;
        }
        let bot = &mut self.bots[b as usize];
        bot.in_buf.clear();
        bot.out.clear();
        bot.chan = Some(Channel::initiator(
            Arc::new(KeyPair::generate()),
            expected,
            &mut bot.out,
        ));
        bot.stream = Some(stream);
        true
    }

    fn timer(&mut self, b: u32, now: Instant) {
        let bot = &self.bots[b as usize];
        match bot.phase {
            Phase::Idle if now >= bot.started => {
                let Some(addr) = self.login_addr else {
                    return self.fail(b, "cannot resolve the login server's address");
                };
                if !self.connect(b, addr, self.cfg.login_key) {
                    return self.fail(b, "cannot connect to the login server");
                }
                let bot = &mut self.bots[b as usize];
                bot.phase = Phase::Login;
                let deadline = bot.deadline;
                self.timers.push(Reverse((deadline, b)));
            }
            Phase::Login | Phase::Enter if now >= bot.deadline => {
                self.fail(b, "not welcomed by the shard in time")
            }
            Phase::Playing => self.send_due(b, now),
            Phase::Draining if now >= bot.deadline => {
                let missing = u64::from(bot.next_seq - bot.next_expect);
                if missing > 0 && bot.leaving {
                    // Lost on a connection nobody cut.
                    self.result.lost += missing;
                    self.live.lost.fetch_add(missing, Ordering::Relaxed);
                    self.done(b);
                } else if missing > 0 {
                    self.fail(b, "echo replies missing at the end");
                } else {
                    self.done(b);
                }
            }
            _ => {}
        }
    }

    /// Sends the echoes and chat lines due by `now`, then schedules the next.
    fn send_due(&mut self, b: u32, now: Instant) {
        if self.cfg.churn_per_s > 0.0 {
            self.maybe_leave(b, now);
        }
        let rate = self.cfg.rate;
        let chat_rate = self.cfg.chat_rate;
        let bot = &mut self.bots[b as usize];
        let elapsed = now.duration_since(bot.playing_since).as_secs_f64();
        let due_echo = ((elapsed * rate).floor() as u64 + 1).min(bot.to_send);
        let due_chat = if chat_rate > 0.0 {
            ((elapsed * chat_rate).floor() as u64 + 1)
                .min((chat_rate * self.cfg.duration.as_secs_f64()).round() as u64)
        } else {
            0
        };
        let mut sent = 0;
        self.msg.clear();
        while u64::from(bot.next_seq) < due_echo {
            ClientMsg::Echo {
                seq: bot.next_seq,
                time_us: self.epoch.elapsed().as_micros() as u64,
                data: &self.padding,
            }
            .encode(&mut self.msg);
            bot.next_seq += 1;
            sent += 1;
        }
        while bot.chats_sent < due_chat {
            ClientMsg::Chat {
                text: b"hello from a bot",
            }
            .encode(&mut self.msg);
            bot.chats_sent += 1;
        }
        if !self.msg.is_empty() {
            let chan = bot.chan.as_mut().expect("playing bots have a channel");
            if chan.send(&mut bot.out, &self.msg).is_err() {
                return self.fail(b, "cannot encrypt");
            }
            self.result.sent += sent;
            self.live.sent.fetch_add(sent, Ordering::Relaxed);
            self.flush(b);
        }
        let bot = &mut self.bots[b as usize];
        if !matches!(bot.phase, Phase::Playing) {
            return;
        }
        if u64::from(bot.next_seq) >= bot.to_send {
            bot.phase = Phase::Draining;
            bot.deadline = now + self.cfg.drain;
            let deadline = bot.deadline;
            self.timers.push(Reverse((deadline, b)));
            // A bot with nothing left to wait for ends at once.
            if bot.next_expect == bot.next_seq {
                self.done(b);
            }
            return;
        }
        let next_echo =
            bot.playing_since + Duration::from_secs_f64(f64::from(bot.next_seq) / rate.max(1e-9));
        self.timers.push(Reverse((next_echo.max(now), b)));
    }

    fn flush(&mut self, b: u32) {
        let bot = &mut self.bots[b as usize];
        let (Some(stream), Some(chan)) = (&bot.stream, &mut bot.chan) else {
            return;
        };
        if chan.seal(&mut bot.out).is_err() {
            return self.fail(b, "cannot encrypt");
        }
        while !bot.out.is_empty() {
            match (&*stream).write(&bot.out) {
                Ok(n) => {
                    bot.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(b, "write failed"),
            }
        }
    }

    fn readable(&mut self, b: u32) {
        loop {
            let bot = &mut self.bots[b as usize];
            let Some(stream) = &bot.stream else {
                return;
            };
            match (&*stream).read(&mut self.read_buf) {
                Ok(0) => {
                    let why = match bot.phase {
                        Phase::Login => "the login server closed the connection",
                        Phase::Enter => "the proxy closed the connection before the welcome",
                        _ => "the proxy closed the connection",
                    };
                    return self.fail(b, why);
                }
                Ok(n) => {
                    if !self.process(b, n) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(b, "connection reset"),
            }
        }
    }

    /// Runs the `n` bytes just read through the bot's channel (the frame
    /// driver, as on every link). False if the bot stopped (failed, done,
    /// or moved to another connection).
    fn process(&mut self, b: u32, n: usize) -> bool {
        let mut data = std::mem::take(&mut self.read_buf);
        let mut in_buf = std::mem::take(&mut self.bots[b as usize].in_buf);
        let mut frames = Frames::new(&mut in_buf, &mut data[..n], IN_BUF_MAX);
        let going_on = self.units(b, &mut frames);
        drop(frames);
        if !going_on {
            // What is left belongs to a connection that is gone.
            in_buf.clear();
        }
        self.bots[b as usize].in_buf = in_buf;
        self.read_buf = data;
        going_on
    }

    fn units(&mut self, b: u32, frames: &mut Frames<'_>) -> bool {
        loop {
            let bot = &mut self.bots[b as usize];
            let Some(chan) = bot.chan.as_mut() else {
                return false;
            };
            match frames.next(chan, &mut bot.out) {
                Err(e) => {
                    self.fail(b, &format!("channel error: {e}"));
                    return false;
                }
                Ok(None) => break,
                Ok(Some(Unit::Opened)) => self.opened(b),
                Ok(Some(Unit::Frame(frame))) => {
                    if !self.frame(b, frame) {
                        return false;
                    }
                }
            }
        }
        self.flush(b);
        true
    }

    /// The handshake ended: the first message goes out (the login, or the
    /// auth proof to the proxy).
    fn opened(&mut self, b: u32) {
        self.msg.clear();
        let bot = &mut self.bots[b as usize];
        match bot.phase {
            Phase::Login => ToLogin::Login {
                account_name: &bot.account,
                password: bot.account.as_bytes(),
            }
            .encode(&mut self.msg),
            _ => {
                let (_, _, token) = bot.ticket.as_ref().expect("entering with a ticket");
                AuthProof {
                    account_name: &bot.account,
                    shard_name: &self.cfg.shard,
                    token,
                }
                .encode(&mut self.msg)
            }
        }
        let chan = bot.chan.as_mut().expect("open");
        let _ = chan.send(&mut bot.out, &self.msg);
        self.flush(b);
    }

    /// One decrypted frame, message by message; false if the bot stopped.
    fn frame(&mut self, b: u32, frame: &[u8]) -> bool {
        if matches!(self.bots[b as usize].phase, Phase::Login) {
            for msg in messages::<FromLogin<'_>>(frame) {
                let Ok(msg) = msg else {
                    self.fail(b, "undecodable message from the login server");
                    return false;
                };
                if !self.login_msg(b, msg) {
                    return false;
                }
            }
            return true;
        }
        for msg in messages::<ServerMsg<'_>>(frame) {
            let Ok(msg) = msg else {
                self.fail(b, "undecodable message from the shard");
                return false;
            };
            if !self.server_msg(b, msg) {
                return false;
            }
        }
        true
    }

    /// One message of the shard; false if the bot stopped.
    fn server_msg(&mut self, b: u32, msg: ServerMsg<'_>) -> bool {
        let bot = &self.bots[b as usize];
        match msg {
            ServerMsg::Welcome { .. } if matches!(bot.phase, Phase::Enter) => self.welcomed(b),
            ServerMsg::Echo { seq, time_us, .. } => self.echoed(b, seq, time_us),
            ServerMsg::Chat { .. } | ServerMsg::Moved { .. } | ServerMsg::Emote { .. } => {
                self.result.broadcasts += 1;
                true
            }
            ServerMsg::Pong { .. } | ServerMsg::Welcome { .. } => true,
        }
    }

    /// The shard's welcome: the bot plays from now on.
    fn welcomed(&mut self, b: u32) -> bool {
        let now = Instant::now();
        if self.cfg.rejoin {
            self.rejoined(b, now);
        }
        let bot = &mut self.bots[b as usize];
        bot.phase = Phase::Playing;
        bot.playing_since = now;
        self.result.last_welcome = self.result.last_welcome.max(Some(now));
        if !bot.welcomed_once {
            bot.welcomed_once = true;
            self.result.authenticated += 1;
            self.live.authenticated.fetch_add(1, Ordering::Relaxed);
        }
        if bot.to_send == 0 {
            bot.phase = Phase::Draining;
            self.done(b);
            return false;
        }
        self.timers.push(Reverse((now, b)));
        true
    }

    /// An echo came back: in order, once, its round trip recorded.
    fn echoed(&mut self, b: u32, seq: u32, time_us: u64) -> bool {
        let bot = &mut self.bots[b as usize];
        if seq != bot.next_expect && self.cfg.rejoin {
            // Counted, not failed: a soak reports every one.
            if seq < bot.next_expect {
                self.result.duplicated += 1;
                return true;
            }
            self.result.reordered += 1;
            bot.next_expect = seq;
        }
        if seq != bot.next_expect {
            let why = if seq < bot.next_expect {
                "an echo came back twice"
            } else {
                "an echo was lost or reordered"
            };
            self.fail(b, why);
            return false;
        }
        bot.next_expect += 1;
        let rtt = (self.epoch.elapsed().as_micros() as u64).saturating_sub(time_us);
        if time_us + 1 >= self.live.measure_from_us.load(Ordering::Relaxed) {
            self.result
                .samples
                .push(rtt.min(u64::from(u32::MAX)) as u32);
        }
        self.live.buckets[bucket_of(rtt)].fetch_add(1, Ordering::Relaxed);
        self.result.received += 1;
        self.live.received.fetch_add(1, Ordering::Relaxed);
        if matches!(bot.phase, Phase::Draining) && bot.next_expect == bot.next_seq {
            self.done(b);
            return false;
        }
        true
    }

    /// One message of the login server; false if the bot left it (failed,
    /// or on to its proxy).
    fn login_msg(&mut self, b: u32, msg: FromLogin<'_>) -> bool {
        match (msg, self.bots[b as usize].login_step) {
            (
                FromLogin::LoginResult {
                    result: RESULT_OK, ..
                },
                0,
            ) => self.logged_in(b),
            (
                FromLogin::ShardResult {
                    ticket: Some((ticket, token)),
                    ..
                },
                1,
            ) => self.ticketed(b, ticket.address.to_string(), ticket.key, *token),
            (FromLogin::LoginResult { .. }, _) => {
                self.fail(b, "the login server refused the account");
                false
            }
            (FromLogin::ShardResult { .. }, _) => {
                self.fail(b, "the login server found no proxy for the shard");
                false
            }
        }
    }

    /// `FLOGIN_MSG_LOGIN_RESULT` OK: ask for the shard.
    fn logged_in(&mut self, b: u32) -> bool {
        let bot = &mut self.bots[b as usize];
        bot.login_step = 1;
        self.msg.clear();
        ToLogin::SelectShard {
            shard_name: &self.cfg.shard,
        }
        .encode(&mut self.msg);
        let chan = bot.chan.as_mut().expect("open");
        let _ = chan.send(&mut bot.out, &self.msg);
        true
    }

    /// `FLOGIN_MSG_SHARD_RESULT` with a ticket: leave the login server and
    /// connect to the proxy (in a storm, once every bot holds a ticket).
    /// False: the bot has left this connection.
    fn ticketed(
        &mut self,
        b: u32,
        address: String,
        key: PublicKey,
        token: [u8; TOKEN_BYTES],
    ) -> bool {
        let bot = &mut self.bots[b as usize];
        bot.ticket = Some((address.clone(), key, token));
        if let Some(stream) = bot.stream.take() {
            let _ = self.np.del(&stream);
        }
        bot.chan = None;
        if self.cfg.storm {
            bot.phase = Phase::Ticketed;
            self.live.ticketed.fetch_add(1, Ordering::AcqRel);
            return false;
        }
        bot.phase = Phase::Enter;
        self.enter(b, &address, key);
        false
    }
}

/// `muta-bot`'s usage text.
pub const USAGE: &str = "\
muta-bot: MUTA load client: logs players in, plays them through the proxies, measures echo latency

Usage: muta-bot [OPTIONS]

Options:
  --login HOST:PORT      the login server [default: 127.0.0.1:7700]
  --login-key HEX        the login server's public key (64 hex digits), to pin it
  --shard NAME           the shard to play on [default: shard-1]
  --clients N            bots (accounts botK..) [default: 10]
  --first-account K      first account number [default: 0]
  --rate R               echo messages per second per bot [default: 10]
  --chat-rate R          chat lines per second per bot, broadcast to all [default: 0]
  --duration S           seconds each bot sends, from its welcome [default: 10]
  --size B               echo padding bytes [default: 32]
  --ramp S               spread bot starts over S seconds [default: 1]
  --drain S              seconds to wait for the last replies [default: 5]
  --threads T            worker threads [default: 2]
  --progress             print a JSON progress line per second on stderr
  --storm                a connection storm: log every bot in first, then
                         connect all at once; the report adds handshakes/s
  --bind-ips FIRST-LAST  connect bot K from the K-th address of this IPv4
                         range (in turn), to the login server and the proxy:
                         players with addresses of their own (127.0.0.0/8)
  --rejoin               a bot whose connection ends logs in again after a
                         short pause and plays on, until --duration from its
                         start (make soak); the report adds `rejoin`: cuts,
                         echoes in flight on them, comebacks, duplicated and
                         reordered echoes
  --churn R              with --rejoin: each playing bot leaves on purpose
                         about R times a second (drains, closes, comes back)
  --json                 print the report as one JSON line (the contract)
  -h, --help             print this help
  -V, --version          print the version (and the git revision) and exit

Signals: SIGINT or SIGTERM stops sending (the bots drain and report); SIGUSR1
starts the latency measurement (echoes sent before it are left out); SIGUSR2
prints a window line on stderr (echoes since the last one, their p50 and p99,
errors and lost echoes) and starts the next window.

Exit status: 0 if every bot was welcomed and got every echo back, 1 otherwise.

With --otc or --otc-direct, the bots are OTClient multi-path clients
instead (see `muta-bot --otc x --help`).
";

/// Parses `muta-bot`'s flags: the run's shape and whether to print JSON,
/// or `None` for `--help`.
fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Option<(BotCfg, bool)>, String> {
    let mut cfg = BotCfg::default();
    let mut json = false;
    let mut args = crate::cli::FlagArgs::new(args)?;
    let secs = |v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err("a duration must be a non-negative number of seconds".to_string())
        }
    };
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--login" => cfg.login = args.value(&flag)?,
            "--login-key" => {
                cfg.login_key = Some(
                    PublicKey::from_hex(&args.value(&flag)?)
                        .ok_or("--login-key needs 64 hex digits")?,
                )
            }
            "--shard" => cfg.shard = args.value(&flag)?,
            "--clients" => cfg.clients = args.parse(&flag)?,
            "--first-account" => cfg.first_account = args.parse(&flag)?,
            "--rate" => cfg.rate = args.parse(&flag)?,
            "--chat-rate" => cfg.chat_rate = args.parse(&flag)?,
            "--duration" => cfg.duration = secs(args.parse(&flag)?)?,
            "--size" => cfg.size = args.parse(&flag)?,
            "--ramp" => cfg.ramp = secs(args.parse(&flag)?)?,
            "--drain" => cfg.drain = secs(args.parse(&flag)?)?,
            "--threads" => cfg.threads = args.parse(&flag)?,
            "--progress" => cfg.progress = true,
            "--storm" => cfg.storm = true,
            "--bind-ips" => cfg.bind_ips = crate::cli::parse_ip_range(&flag, &args.value(&flag)?)?,
            "--rejoin" => cfg.rejoin = true,
            "--churn" => cfg.churn_per_s = args.parse(&flag)?,
            "--json" => json = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if !(cfg.rate > 0.0 && cfg.rate.is_finite()) {
        return Err("--rate must be above 0".to_string());
    }
    if cfg.size > crate::proto::client::ECHO_DATA_MAX {
        return Err(format!(
            "--size is at most {}",
            crate::proto::client::ECHO_DATA_MAX
        ));
    }
    Ok(Some((cfg, json)))
}

/// `muta-bot`'s `main`.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    let args: Vec<OsString> = args.into_iter().collect();
    let otc_flag = |a: &OsString| {
        let a = a.to_string_lossy();
        a.split('=')
            .next()
            .is_some_and(|f| f == "--otc" || f == "--otc-direct")
    };
    if args.iter().any(otc_flag) {
        return otc::main_with_args(args);
    }
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
    let mark = Arc::new(AtomicBool::new(false));
    if let Err(err) = signal_hook::flag::register(signal_hook::consts::SIGUSR1, mark.clone()) {
        eprintln!("muta-bot: cannot handle SIGUSR1: {err}");
    }
    let window = Arc::new(AtomicBool::new(false));
    if let Err(err) = signal_hook::flag::register(signal_hook::consts::SIGUSR2, window.clone()) {
        eprintln!("muta-bot: cannot handle SIGUSR2: {err}");
    }
    let report = run_windowed(&cfg, stop, mark, window);
    for (why, n) in &report.failures {
        eprintln!("muta-bot: {n} bot(s) failed: {why}");
    }
    if json {
        println!("{}", report.to_json());
    } else {
        println!(
            "{} bots, {} welcomed, {} echoes sent, {} received, {} failed; latency p50 {} us, p99 {} us, p99.9 {} us, max {} us",
            report.clients,
            report.authenticated,
            report.sent,
            report.received,
            report.errors,
            report.latency_us.p50,
            report.latency_us.p99,
            report.latency_us.p999,
            report.latency_us.max
        );
    }
    if report.ok() { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_a_bucket_whose_top_is_within_a_sixteenth() {
        let mut last_bucket = 0;
        for us in 1..200_000u64 {
            let b = bucket_of(us);
            assert!(b >= last_bucket, "buckets grow with the value ({us})");
            last_bucket = b;
            let top = bucket_top(b);
            assert!(top >= us, "{us} above its bucket's top {top}");
            assert!(top - us <= us / 16 + 1, "{us}: top {top} too far");
        }
    }

    #[test]
    fn quantiles_of_a_histogram() {
        let mut counts = vec![0u64; BUCKETS];
        for us in 1..=100u64 {
            counts[bucket_of(us * 10)] += 1;
        }
        let p50 = quantile(&counts, 0.5);
        assert!((500..=532).contains(&p50), "{p50}");
        let p99 = quantile(&counts, 0.99);
        assert!((990..=1054).contains(&p99), "{p99}");
        assert_eq!(quantile(&vec![0; BUCKETS], 0.5), 0);
    }
}
