//! `muta-otserv`: a game-server stand-in for the OTC front end (seed 002's
//! TFS with the gesior patch; no thesis section: a reference peer, as the
//! reference shard is for MUTA). It runs on the thesis runtime: one client
//! pool, one listener, a [`Server`] that touches no socket.
//!
//! What it does with a connection, in order:
//!
//! 1. The gesior prefix, if the connection starts with it: `0xFFFE`
//!    (little-endian) and an IPv4 address. That address is the client's; a
//!    connection without it is the TCP peer's (TFS's `getIP()`).
//! 2. It greets with one Tibia packet, `[u16 len] 'A' <address as text>`:
//!    the address it sees the client at, which the tests compare.
//! 3. Every Tibia packet `[u16 len][len bytes]` it receives is echoed back
//!    whole; one whose first byte is `'B'` goes to every connection instead
//!    (a broadcast: a game server's world updates). A length of 0 closes the
//!    connection, as TFS does.

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use log::{LevelFilter, info};
use mio::net::UnixStream;

use crate::cli::FlagArgs;
use crate::com::{ConnRef, PoolId};
use crate::conn::thread::IoCfg;
use crate::conn::{AnyPool, DisconnectReason, Pool, PoolCfg, Session};
use crate::netpoll;
use crate::process;
use crate::proto::otc;
use crate::runtime::{Node, Runtime, RuntimeCfg, Server};
use crate::secpool::SecpoolConfig;

/// Usage text for `--help`.
pub const USAGE: &str = "\
muta-otserv: a game-server stand-in (TFS with the OTC proxy patch) for muta-proxy's [otc] front end

Usage: muta-otserv [OPTIONS]

Options:
  --listen ADDR        where to accept [default: 127.0.0.1:7172]
  --max-conns N        most connections at once [default: 20000]
  --stats-every-ms N   log a statistics line this often, 0 never [default: 0]
  -h, --help           print this help and exit
  -V, --version        print the version (and the git revision) and exit

Each connection may start with 0xFFFE and an IPv4 address (the client's);
it is greeted with one packet 'A' + the address it is seen at, and every
packet is echoed back, or sent to every connection if it starts with 'B'.
";

/// The stand-in's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OtservCfg {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Most connections.
    pub max_conns: u32,
    /// How often a statistics line is logged (`None`: never).
    pub stats_every: Option<Duration>,
}

impl Default for OtservCfg {
    fn default() -> OtservCfg {
        OtservCfg {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 7172)),
            max_conns: 20_000,
            stats_every: None,
        }
    }
}

/// Where a connection is.
#[derive(Debug, Default)]
pub struct OtservConn {
    /// The address it was found to stand for, once known.
    client: Option<IpAddr>,
}

impl Session for OtservConn {}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OtservStats {
    /// Connections greeted.
    pub conns: u64,
    /// Of them, with the prefix.
    pub prefixed: u64,
    /// Packets echoed.
    pub echoed: u64,
    /// Packets broadcast (each to every connection).
    pub broadcast: u64,
}

/// The stand-in: its pool and counters.
#[derive(Debug)]
pub struct Otserv {
    conns: Pool<OtservConn>,
    stats: OtservStats,
    stats_every: Option<Duration>,
    next_stats: Option<Instant>,
    scratch: Vec<ConnRef>,
}

/// Bytes of the prefix.
const PREFIX_BYTES: usize = 6;
/// A packet's most bytes, its length included: what one OTC frame carries.
const PACKET_MAX: usize = otc::PACKET_MAX;

impl Otserv {
    fn new(cfg: &OtservCfg, now: Instant) -> Otserv {
        let pool = PoolCfg {
            max_conns: cfg.max_conns,
            out_buf_size: 4 << 20,
            idle_timeout: None,
            connect_timeout: Duration::from_secs(1),
        };
        Otserv {
            conns: Pool::new(PoolId::Client, &pool, now),
            stats: OtservStats::default(),
            stats_every: cfg.stats_every,
            next_stats: cfg.stats_every.map(|every| now + every),
            scratch: Vec::new(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> OtservStats {
        self.stats
    }

    /// Reads the prefix (or decides there is none) and greets. Returns how
    /// many bytes of `data` the prefix took, or `None` while incomplete.
    fn prefix(&mut self, conn: ConnRef, in_buf: &mut Vec<u8>, data: &[u8]) -> Option<usize> {
        let had = in_buf.len();
        in_buf.extend_from_slice(&data[..data.len().min(PREFIX_BYTES - had)]);
        if in_buf.len() < 2 {
            return None;
        }
        let magic = u16::from_le_bytes([in_buf[0], in_buf[1]]);
        let (client, used) = if magic == crate::proxy::otc::IP_PREFIX_MAGIC {
            if in_buf.len() < PREFIX_BYTES {
                return None;
            }
            let ip = Ipv4Addr::new(in_buf[2], in_buf[3], in_buf[4], in_buf[5]);
            self.stats.prefixed += 1;
            (IpAddr::V4(ip), PREFIX_BYTES - had)
        } else {
            let peer = self.conns.get(conn).map(|s| s.peer().ip())?;
            (peer, 0)
        };
        if used == 0 {
            // No prefix: what earlier reads gathered is the start of a
            // packet; this read's bytes are read as packets next.
            in_buf.truncate(had);
        } else {
            in_buf.clear();
        }
        if let Some(slot) = self.conns.get_mut(conn) {
            slot.session.client = Some(client);
        }
        self.stats.conns += 1;
        let text = client.to_string();
        let mut hello = Vec::with_capacity(3 + text.len());
        hello.extend_from_slice(&((1 + text.len()) as u16).to_le_bytes());
        hello.push(b'A');
        hello.extend_from_slice(text.as_bytes());
        self.conns.send(conn, &hello);
        Some(used)
    }

    /// Whole packets echoed or broadcast; a split one kept in `in_buf`.
    fn packets(&mut self, conn: ConnRef, in_buf: &mut Vec<u8>, mut data: &[u8]) -> Result<(), ()> {
        if !in_buf.is_empty() {
            if !otc::gather(in_buf, &mut data) {
                return Ok(());
            }
            let packet = std::mem::take(in_buf);
            self.packet(conn, &packet)?;
            *in_buf = packet;
            in_buf.clear();
        }
        while data.len() >= 2 {
            let n = 2 + usize::from(u16::from_le_bytes([data[0], data[1]]));
            if n > data.len() {
                break;
            }
            self.packet(conn, &data[..n])?;
            data = &data[n..];
        }
        in_buf.extend_from_slice(data);
        Ok(())
    }

    fn packet(&mut self, conn: ConnRef, packet: &[u8]) -> Result<(), ()> {
        if packet.len() <= 2 || packet.len() > PACKET_MAX {
            return Err(());
        }
        if packet[2] == b'B' {
            self.stats.broadcast += 1;
            let mut all = std::mem::take(&mut self.scratch);
            all.extend(self.conns.iter_live().map(|(c, _)| c));
            for &to in &all {
                if self
                    .conns
                    .get(to)
                    .is_some_and(|s| s.session.client.is_some())
                {
                    self.conns.send(to, packet);
                }
            }
            all.clear();
            self.scratch = all;
        } else {
            self.stats.echoed += 1;
            self.conns.send(conn, packet);
        }
        Ok(())
    }
}

impl Server for Otserv {
    fn pools(&mut self) -> (&mut dyn AnyPool, Option<&mut dyn AnyPool>) {
        (&mut self.conns, None)
    }

    fn on_accept(&mut self, listener: u32, peer: SocketAddr, now: Instant) -> Option<ConnRef> {
        self.conns.accept(listener, peer, now)
    }

    fn on_read(&mut self, conn: ConnRef, data: &mut [u8], now: Instant) {
        let Some(mut in_buf) = self.conns.begin_read(conn, data.len(), now) else {
            return;
        };
        let greeted = self
            .conns
            .get(conn)
            .is_some_and(|s| s.session.client.is_some());
        let mut rest: &[u8] = data;
        let ok = if greeted {
            self.packets(conn, &mut in_buf, rest)
        } else {
            match self.prefix(conn, &mut in_buf, rest) {
                None => Ok(()),
                Some(used) => {
                    rest = &rest[used..];
                    self.packets(conn, &mut in_buf, rest)
                }
            }
        };
        self.conns.end_read(conn, in_buf);
        if ok.is_err() {
            self.conns.disconnect(
                conn,
                DisconnectReason::Protocol("a packet of length 0 or too long".into()),
            );
        }
    }

    fn on_tick(&mut self, now: Instant) {
        if let (Some(every), Some(at)) = (self.stats_every, self.next_stats)
            && now >= at
        {
            let s = self.stats;
            info!(
                "otserv stats: {} connections; totals: {} greeted ({} with the prefix), \
                 {} echoed, {} broadcast",
                self.conns.in_use(),
                s.conns,
                s.prefixed,
                s.echoed,
                s.broadcast
            );
            self.next_stats = Some(now + every);
        }
    }

    fn settle(&mut self, _now: Instant) {
        self.conns.take_disconnected().for_each(drop);
    }
}

/// Binds the listener and starts the stand-in on its runtime.
pub fn start(cfg: OtservCfg, signals: Vec<(i32, UnixStream)>) -> io::Result<Node<Otserv>> {
    let listener = netpoll::listen(cfg.listen, 1024).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot listen on {}: {err}", cfg.listen),
        )
    })?;
    let runtime_cfg = RuntimeCfg {
        secpool: SecpoolConfig {
            bytes_max: 256 << 20,
            block_size_max: 64 * 1024,
            free_blocks_max: 256,
        },
        event_buffer_capacity: 1024,
        event_wait_max: 256,
        client: IoCfg {
            pool: PoolId::Client,
            max_conns: cfg.max_conns,
            read_size: 64 * 1024,
            reads_per_wakeup: 16,
            accepts_per_wakeup: 64,
            netpoll_events_max: 256,
            io_batch_max: 64,
            read_ahead_max: 0,
            send_buffer: 0,
            user_timeout_ms: 0,
        },
        shard: None,
    };
    let runtime = Runtime::start(&runtime_cfg, vec![listener], signals)?;
    info!("muta-otserv listening on {}", runtime.local_addr(0));
    Ok(Node {
        server: Otserv::new(&cfg, Instant::now()),
        runtime,
    })
}

/// Parses the flags; `None` for `--help`, `Some(Err)` never: errors are
/// returned as `Err`.
fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Option<OtservCfg>, String> {
    let mut cfg = OtservCfg::default();
    let mut args = FlagArgs::new(args)?;
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--listen" => cfg.listen = args.parse(&flag)?,
            "--max-conns" => cfg.max_conns = args.parse(&flag)?,
            "--stats-every-ms" => {
                let ms: u64 = args.parse(&flag)?;
                cfg.stats_every = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "--version" | "-V" => {
                println!("{}", crate::cli::version_line("muta-otserv"));
                return Ok(None);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(cfg))
}

/// The whole program: 0 after a signal, 1 if it cannot start, 2 on bad usage.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    let cfg = match parse_args(args) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => return 0,
        Err(msg) => {
            eprintln!("muta-otserv: {msg}\n\n{USAGE}");
            return 2;
        }
    };
    process::run_node("muta-otserv", LevelFilter::Info, move |signals| {
        start(cfg, signals)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_ones_are_refused() {
        let cfg = parse_args(["--listen", "127.0.0.1:0", "--max-conns=5"].map(OsString::from))
            .unwrap()
            .unwrap();
        assert_eq!(cfg.listen.port(), 0);
        assert_eq!(cfg.max_conns, 5);
        assert!(parse_args(["--bogus"].map(OsString::from)).is_err());
    }
}
