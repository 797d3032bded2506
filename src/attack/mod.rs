//! `muta-attack`: the attacks the proxy exists to survive (thesis §2.1.1,
//! "DDoS"; seed 002's forwarders), one class at a time, for `make attack` and
//! `tests/attack.rs`. Port decision: the thesis's tests (§3.7) are honest
//! clients only; this is the hostile half, a tool of the project's own.
//!
//! A class is run for a duration at a rate, from a range of local addresses
//! (each attacker an address of its own in 127.0.0.0/8, as the honest bots
//! are), then given a while to be cut off. What it measured is one JSON line:
//!
//! ```text
//! {"class":"..","attackers":N,"cut_off":N,"cut_off_p50_ms":..,"cut_off_max_ms":..,
//!  "still_open":N,"errors":N}
//! ```
//!
//! `attackers`: the connections (or logins) the class made; `cut_off`: those
//! the proxy closed or refused, and how long after their start (p50, max);
//! `still_open`: those not cut off when the tool gave up; `errors`: attempts
//! that failed on this side (a local address out of ports, a connect that
//! never reached the forwarder).
//!
//! The classes (`Class`) and what each attacker does:
//!
//! | class | through | each attacker |
//! |---|---|---|
//! | `conn-flood` | forwarder | connects from one of many addresses and sends nothing |
//! | `one-addr-flood` | forwarder | the same, every connection from one address |
//! | `slowloris` | forwarder | trickles a valid handshake, a byte every 500 ms |
//! | `idle` | forwarder | finishes the key exchange, then sends nothing |
//! | `garbage` | forwarder | sends 256 random bytes |
//! | `bad-first-byte` | forwarder | sends `GET / HTTP/1.1` |
//! | `oversized-frame` | forwarder | key exchange, then a frame length of 65,535 |
//! | `bad-mac` | forwarder | key exchange, then a frame with one bit flipped |
//! | `guessed-proof` | forwarder | key exchange, then an auth proof with a random token |
//! | `untrusted-proxy-header` | the proxy itself | a PROXY v2 header from outside `trusted_forwarders` |
//! | `malformed-proxy-header` | the proxy itself, from 127.0.0.1 | a malformed PROXY header |
//! | `auth-flooder` | forwarder | logs in, plays, sends as fast as it can |
//! | `slow-reader` | forwarder | logs in, asks for echoes, never reads |
//! | `squatting` | the login server | logs in, never connects (then probes its ticket) |
//! | `otc-bad-frames` | the OTC forwarder | a frame under 12 bytes, an inner length that lies, or a session-0 frame with a packet id |
//! | `otc-port-scan` | the OTC forwarder | a session towards 22, 25, 3306, 6379, 5432 or 11211 |
//! | `otc-far-future` | the OTC forwarder | a session, then packet id 1,000,000 (cut off: its session ends) |
//! | `otc-unacked-flood` | the OTC forwarder | a session, then 400 KiB echoed and never acknowledged (cut off: its session ends) |
//! | `otc-session-flood` | the OTC forwarder | 40 sessions at once (cut off: one is refused with a session end) |

mod conns;
mod players;

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A class of attack (the module docs say what each does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Connections from many addresses, silent.
    ConnFlood,
    /// Connections from one address, silent.
    OneAddrFlood,
    /// A handshake trickled a byte at a time.
    Slowloris,
    /// The key exchange, then silence.
    Idle,
    /// Random bytes.
    Garbage,
    /// A first byte that cannot begin a handshake.
    BadFirstByte,
    /// A frame length over any limit.
    OversizedFrame,
    /// A frame that fails its MAC.
    BadMac,
    /// An auth proof with a guessed token.
    GuessedProof,
    /// A PROXY header from an address that is no forwarder.
    UntrustedProxyHeader,
    /// A malformed PROXY header from a forwarder's address.
    MalformedProxyHeader,
    /// An authenticated player sending as fast as it can.
    AuthFlooder,
    /// An authenticated player that never reads.
    SlowReader,
    /// Logins never followed by a connection.
    Squatting,
    /// OTC: frames under 12 bytes, inner lengths that lie, session-0
    /// frames with a packet id.
    OtcBadFrames,
    /// OTC: sessions towards ports off `otc.allowed_ports`.
    OtcPortScan,
    /// OTC: a session, then a packet id far past the reorder window.
    OtcFarFuture,
    /// OTC: a session echoing what is never acknowledged.
    OtcUnackedFlood,
    /// OTC: sessions opened as fast as frames go.
    OtcSessionFlood,
}

impl Class {
    /// Every class, in the order `make attack` runs them.
    pub const ALL: [Class; 19] = [
        Class::ConnFlood,
        Class::OneAddrFlood,
        Class::Slowloris,
        Class::Idle,
        Class::Garbage,
        Class::BadFirstByte,
        Class::OversizedFrame,
        Class::BadMac,
        Class::GuessedProof,
        Class::UntrustedProxyHeader,
        Class::MalformedProxyHeader,
        Class::AuthFlooder,
        Class::SlowReader,
        Class::Squatting,
        Class::OtcBadFrames,
        Class::OtcPortScan,
        Class::OtcFarFuture,
        Class::OtcUnackedFlood,
        Class::OtcSessionFlood,
    ];

    /// The class's name on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::ConnFlood => "conn-flood",
            Class::OneAddrFlood => "one-addr-flood",
            Class::Slowloris => "slowloris",
            Class::Idle => "idle",
            Class::Garbage => "garbage",
            Class::BadFirstByte => "bad-first-byte",
            Class::OversizedFrame => "oversized-frame",
            Class::BadMac => "bad-mac",
            Class::GuessedProof => "guessed-proof",
            Class::UntrustedProxyHeader => "untrusted-proxy-header",
            Class::MalformedProxyHeader => "malformed-proxy-header",
            Class::AuthFlooder => "auth-flooder",
            Class::SlowReader => "slow-reader",
            Class::Squatting => "squatting",
            Class::OtcBadFrames => "otc-bad-frames",
            Class::OtcPortScan => "otc-port-scan",
            Class::OtcFarFuture => "otc-far-future",
            Class::OtcUnackedFlood => "otc-unacked-flood",
            Class::OtcSessionFlood => "otc-session-flood",
        }
    }

    /// True for the classes against the `[otc]` front end.
    pub fn is_otc(self) -> bool {
        matches!(
            self,
            Class::OtcBadFrames
                | Class::OtcPortScan
                | Class::OtcFarFuture
                | Class::OtcUnackedFlood
                | Class::OtcSessionFlood
        )
    }

    /// The class named `name`.
    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// One attack run.
#[derive(Clone, Debug)]
pub struct AttackCfg {
    /// What to do.
    pub class: Class,
    /// Where players connect: the forwarder (HAProxy) in front of the proxy.
    pub front: SocketAddr,
    /// The proxy's own listener, past the forwarder.
    pub proxy: SocketAddr,
    /// The login server (authenticated classes and squatting).
    pub login: SocketAddr,
    /// The shard players ask for.
    pub shard: String,
    /// How long new attackers start.
    pub duration: Duration,
    /// New attackers a second.
    pub rate: u32,
    /// Most attackers at once (open connections, or authenticated players).
    pub max_open: usize,
    /// Local addresses, one per attacker in turn.
    pub bind_ips: Vec<IpAddr>,
    /// After `duration`, how long to wait for the proxy to cut off the rest.
    pub linger: Duration,
    /// Accounts are `atk{first_account + k}`.
    pub first_account: u32,
    /// The proxy's `client.reservation_timeout_ms` (squatting probes after it).
    pub reservation_timeout: Duration,
    /// The forwarder in front of the proxy's `[otc]` listener.
    pub otc_front: SocketAddr,
    /// A game-server port on `otc.allowed_ports`.
    pub otc_port: u16,
}

impl Default for AttackCfg {
    fn default() -> AttackCfg {
        let lo = |port| SocketAddr::from(([127, 0, 0, 1], port));
        AttackCfg {
            class: Class::ConnFlood,
            front: lo(7000),
            proxy: lo(7702),
            login: lo(7700),
            shard: "shard-1".to_string(),
            duration: Duration::from_secs(10),
            rate: 500,
            max_open: 2000,
            bind_ips: Vec::new(),
            linger: Duration::from_secs(8),
            first_account: 0,
            reservation_timeout: Duration::from_secs(30),
            otc_front: lo(7162),
            otc_port: 7172,
        }
    }
}

/// What a run measured (the JSON line in the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttackReport {
    /// The class.
    pub class: String,
    /// Connections or logins made.
    pub attackers: u64,
    /// Those the proxy closed or refused.
    pub cut_off: u64,
    /// How long after its start each cut-off came, in ms.
    pub cut_off_ms: Vec<u64>,
    /// Not cut off when the tool gave up.
    pub still_open: u64,
    /// Attempts that failed on this side.
    pub errors: u64,
}

impl AttackReport {
    fn new(class: Class) -> AttackReport {
        AttackReport {
            class: class.as_str().to_string(),
            ..AttackReport::default()
        }
    }

    /// Records an attacker the proxy cut off `ms` after its start.
    fn cut(&mut self, ms: u64) {
        self.cut_off += 1;
        self.cut_off_ms.push(ms);
    }

    /// The median cut-off time, in ms (0 if none).
    pub fn cut_off_p50_ms(&self) -> u64 {
        let mut ms = self.cut_off_ms.clone();
        ms.sort_unstable();
        ms.get(ms.len().saturating_sub(1) / 2).copied().unwrap_or(0)
    }

    /// The JSON line.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"class\":\"{}\",\"attackers\":{},\"cut_off\":{},\"cut_off_p50_ms\":{},\
             \"cut_off_max_ms\":{},\"still_open\":{},\"errors\":{}}}",
            self.class,
            self.attackers,
            self.cut_off,
            self.cut_off_p50_ms(),
            self.cut_off_ms.iter().max().copied().unwrap_or(0),
            self.still_open,
            self.errors
        )
    }
}

/// Runs one attack to its end.
pub fn run(cfg: &AttackCfg) -> AttackReport {
    crate::cryptchan::init().expect("libsodium");
    match cfg.class {
        Class::AuthFlooder => players::auth_flooders(cfg),
        Class::SlowReader => players::slow_readers(cfg),
        Class::Squatting => players::squatters(cfg),
        _ => conns::run(cfg),
    }
}

/// `muta-attack --help`.
pub const USAGE: &str = "\
muta-attack: runs one class of attack against a proxy (make attack)

Usage: muta-attack --class NAME [OPTIONS]

Options:
  --class NAME           conn-flood, one-addr-flood, slowloris, idle, garbage,
                         bad-first-byte, oversized-frame, bad-mac, guessed-proof,
                         untrusted-proxy-header, malformed-proxy-header,
                         auth-flooder, slow-reader, squatting,
                         otc-bad-frames, otc-port-scan, otc-far-future,
                         otc-unacked-flood, otc-session-flood
  --front ADDR           the forwarder players connect to [default: 127.0.0.1:7000]
  --proxy ADDR           the proxy's own listener [default: 127.0.0.1:7702]
  --otc-front ADDR       the forwarder of the [otc] listener [default: 127.0.0.1:7162]
  --otc-port P           a game port on otc.allowed_ports [default: 7172]
  --login ADDR           the login server [default: 127.0.0.1:7700]
  --shard NAME           the shard to ask for [default: shard-1]
  --duration S           seconds new attackers start [default: 10]
  --rate N               new attackers a second [default: 500]
  --max-open N           most attackers at once [default: 2000]
  --bind-ips FIRST-LAST  local addresses, one per attacker in turn
  --linger S             seconds to wait for the last cut-offs [default: 8]
  --first-account K      accounts atkK.. [default: 0]
  --reservation-timeout-ms MS
                         the proxy's client.reservation_timeout_ms [default: 30000]
  -h, --help             print this help
  -V, --version          print the version (and the git revision) and exit

Prints one JSON line: {\"class\",\"attackers\",\"cut_off\",\"cut_off_p50_ms\",
\"cut_off_max_ms\",\"still_open\",\"errors\"}. Exit status 0, 2 on bad usage.
";

fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Option<AttackCfg>, String> {
    let mut cfg = AttackCfg::default();
    let mut class = None;
    let mut args = crate::cli::FlagArgs::new(args)?;
    let secs = |v: f64| {
        (v.is_finite() && v >= 0.0)
            .then(|| Duration::from_secs_f64(v))
            .ok_or_else(|| "a duration must be a non-negative number of seconds".to_string())
    };
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--class" => {
                let name = args.value(&flag)?;
                class = Some(Class::from_name(&name).ok_or(format!("unknown class `{name}`"))?);
            }
            "--front" => cfg.front = args.parse(&flag)?,
            "--proxy" => cfg.proxy = args.parse(&flag)?,
            "--login" => cfg.login = args.parse(&flag)?,
            "--shard" => cfg.shard = args.value(&flag)?,
            "--duration" => cfg.duration = secs(args.parse(&flag)?)?,
            "--rate" => cfg.rate = args.parse(&flag)?,
            "--max-open" => cfg.max_open = args.parse(&flag)?,
            "--bind-ips" => cfg.bind_ips = crate::cli::parse_ip_range(&flag, &args.value(&flag)?)?,
            "--linger" => cfg.linger = secs(args.parse(&flag)?)?,
            "--first-account" => cfg.first_account = args.parse(&flag)?,
            "--otc-front" => cfg.otc_front = args.parse(&flag)?,
            "--otc-port" => cfg.otc_port = args.parse(&flag)?,
            "--reservation-timeout-ms" => {
                cfg.reservation_timeout = Duration::from_millis(args.parse(&flag)?)
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    cfg.class = class.ok_or("--class is required")?;
    if cfg.rate == 0 {
        return Err("--rate must be above 0".to_string());
    }
    Ok(Some(cfg))
}

/// `muta-attack`'s `main`.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    match parse_args(args) {
        Ok(Some(cfg)) => {
            println!("{}", run(&cfg).to_json());
            0
        }
        Ok(None) => {
            print!("{USAGE}");
            0
        }
        Err(msg) => {
            eprintln!("muta-attack: {msg}\n\n{USAGE}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_a_name_that_finds_it() {
        for class in Class::ALL {
            assert_eq!(Class::from_name(class.as_str()), Some(class));
            assert!(USAGE.contains(class.as_str()), "{class:?} not in --help");
        }
        let mut r = AttackReport::new(Class::Garbage);
        for ms in [5, 1, 9] {
            r.cut(ms);
        }
        assert_eq!(r.cut_off_p50_ms(), 5);
        assert!(
            r.to_json()
                .contains("\"cut_off\":3,\"cut_off_p50_ms\":5,\"cut_off_max_ms\":9")
        );
    }
}
