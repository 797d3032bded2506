//! Configuration (thesis §3.8.1): `proxy.cfg` in TOML, and `shards.cfg` in the
//! thesis's own line format, `shard = 127.0.0.1`.
//!
//! `proxy.cfg` has four sections, `[proxy]`, `[client]`, `[shard]` and
//! `[runtime]`. Every key is optional and has a named default (`DEFAULT_*`
//! below), except `shard.password`; every limit the daemon enforces is one of
//! these keys. Unknown sections and keys are errors. The pipeline is
//! text → toml's spanned table → [`Config`] with range checks per key → the
//! cross-key checks of [`Config::validate`]; each error names the file, the
//! line and the problem ([`ConfigError`]).
//!
//! `shards.cfg` has one `shard = HOST[:PORT] [key=HEX]` line per shard (the
//! key repeats, which is why it is not TOML), `#` comments and blank lines.
//! HOST is an IPv4 address, a bracketed IPv6 address or a DNS name, resolved
//! at every connect attempt; PORT defaults to [`DEFAULT_SHARD_PORT`]; `key=`
//! pins the shard's public key.
//!
//! Nothing here does I/O except [`load`], which reads the two files.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};

use log::LevelFilter;
use toml::de::{DeTable, DeValue};

/// Upper bound on `client.max_clients`; also keeps client indices clear of the
/// reserved netpoll data words.
pub const MAX_CLIENTS_LIMIT: u32 = 1_000_000;
/// The port a `shards.cfg` line without one connects to (port decision).
pub const DEFAULT_SHARD_PORT: u16 = 7701;

/// `proxy.listen`: where the client thread accepts players.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7702";
/// `proxy.public_address`: what the shard tells the login server, which tells
/// the players.
pub const DEFAULT_PUBLIC_ADDRESS: &str = "127.0.0.1:7702";
/// `proxy.log_level`, when `RUST_LOG` is not set.
pub const DEFAULT_LOG_LEVEL: LevelFilter = LevelFilter::Info;

/// `client.max_clients`: size of the fixed client pool.
pub const DEFAULT_MAX_CLIENTS: u32 = 1024;
/// `client.in_buf_size`: most bytes of incomplete messages held per client
/// (thesis `CL_IN_BUF_SZ`).
pub const DEFAULT_CLIENT_IN_BUF_SIZE: usize = 8 * 1024;
/// `client.out_buf_size`: most bytes queued to one client before it is
/// dropped as a slow reader (thesis `CL_OUT_BUF_SZ`).
pub const DEFAULT_CLIENT_OUT_BUF_SIZE: usize = 256 * 1024;
/// `client.read_size`: most bytes one read on the client thread takes.
pub const DEFAULT_CLIENT_READ_SIZE: usize = 16 * 1024;
/// `client.reads_per_wakeup`: reads of one client per netpoll wake-up before
/// the others get their turn.
pub const DEFAULT_CLIENT_READS_PER_WAKEUP: u32 = 4;
/// `client.accepts_per_wakeup`: accepts per netpoll wake-up.
pub const DEFAULT_CLIENT_ACCEPTS_PER_WAKEUP: u32 = 64;
/// `client.listen_backlog`: the kernel's queue of connections not yet accepted.
pub const DEFAULT_CLIENT_LISTEN_BACKLOG: u32 = 1024;
/// `client.idle_timeout_ms`: a client that sends nothing for this long is
/// disconnected (thesis §3.8.5 "Timing clients out").
pub const DEFAULT_CLIENT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// `client.handshake_timeout_ms`: the absolute deadline from accept to a valid
/// auth proof; a client that trickles its handshake is cut off here, whatever
/// it sends (slowloris).
pub const DEFAULT_CLIENT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// `client.reservation_timeout_ms`: a slot a shard reserved
/// (`TPROXY_MSG_OPENED_SOCKET`) that no player claims in this time is released
/// (thesis §3.8.5).
pub const DEFAULT_CLIENT_RESERVATION_TIMEOUT_MS: u64 = 30_000;
/// `client.require_announced_ip`: refuse at accept a client whose IP no shard
/// announced (thesis §3.8.3); `false` is the thesis's planned relaxation for
/// players whose address changes (§3.8.5).
pub const DEFAULT_CLIENT_REQUIRE_ANNOUNCED_IP: bool = true;

/// `shard.connect_retry_ms`: time between connect attempts (thesis §3.8.1:
/// "every two seconds").
pub const DEFAULT_SHARD_CONNECT_RETRY_MS: u64 = 2_000;
/// `shard.connect_timeout_ms`: how long one blocking connect may take.
pub const DEFAULT_SHARD_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// `shard.in_buf_size`: most bytes of incomplete messages held per shard.
pub const DEFAULT_SHARD_IN_BUF_SIZE: usize = 1024 * 1024;
/// `shard.out_buf_size`: most bytes queued to one shard; a shard that falls
/// this far behind is disconnected and reconnected.
pub const DEFAULT_SHARD_OUT_BUF_SIZE: usize = 4 * 1024 * 1024;
/// `shard.read_size`: most bytes one read on the shard thread takes.
pub const DEFAULT_SHARD_READ_SIZE: usize = 32 * 1024;
/// `shard.reads_per_wakeup`: reads of one shard per netpoll wake-up. Higher
/// than a client's: one shard link carries every player's traffic.
pub const DEFAULT_SHARD_READS_PER_WAKEUP: u32 = 16;

/// `runtime.event_buffer_capacity`: events the main thread's event buffer holds
/// before `event_push` blocks.
pub const DEFAULT_EVENT_BUFFER_CAPACITY: usize = 1024;
/// `runtime.event_wait_max`: most events the main thread takes per `event_wait`.
pub const DEFAULT_EVENT_WAIT_MAX: usize = 256;
/// `runtime.io_batch_max`: most events an I/O thread collects before pushing.
pub const DEFAULT_IO_BATCH_MAX: usize = 64;
/// `runtime.netpoll_events_max`: most events per `netpoll_wait`.
pub const DEFAULT_NETPOLL_EVENTS_MAX: usize = 256;
/// `runtime.secpool_bytes_max`: cap on the bytes secpool holds.
pub const DEFAULT_SECPOOL_BYTES_MAX: usize = 64 * 1024 * 1024;
/// `runtime.secpool_free_blocks_max`: most free blocks kept per size class.
pub const DEFAULT_SECPOOL_FREE_BLOCKS_MAX: usize = 1024;

/// The smallest `client.in_buf_size`: a frame holding the largest client
/// message (`CLMSG_ECHO` with 1 KiB of data), with its length and MAC.
pub const CLIENT_IN_BUF_MIN: usize = 2048;
/// The smallest `shard.in_buf_size`: one full frame (65,535 + 2 bytes).
pub const SHARD_IN_BUF_MIN: usize = 65_537;

/// The sections of `proxy.cfg`.
const SECTIONS: [&str; 4] = ["proxy", "client", "shard", "runtime"];

/// A password that does not print itself.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `[proxy]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyCfg {
    /// Client listen address.
    pub listen: SocketAddr,
    /// The public `HOST:PORT` clients are told to connect to.
    pub public_address: String,
    /// Log level when `RUST_LOG` is unset.
    pub log_level: LevelFilter,
}

/// `[client]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientCfg {
    /// Size of the client pool.
    pub max_clients: u32,
    /// Thesis `CL_IN_BUF_SZ`.
    pub in_buf_size: usize,
    /// Thesis `CL_OUT_BUF_SZ`.
    pub out_buf_size: usize,
    /// Bytes per read on the client thread.
    pub read_size: usize,
    /// Reads of one client per wake-up.
    pub reads_per_wakeup: u32,
    /// Accepts per wake-up.
    pub accepts_per_wakeup: u32,
    /// Kernel listen backlog.
    pub listen_backlog: u32,
    /// Idle timeout.
    pub idle_timeout_ms: u64,
    /// Deadline from accept to a valid auth proof.
    pub handshake_timeout_ms: u64,
    /// Lifetime of an unclaimed reservation.
    pub reservation_timeout_ms: u64,
    /// Refuse clients from IPs no shard announced.
    pub require_announced_ip: bool,
}

/// `[shard]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardCfg {
    /// The password sent in `FPROXY_MSG_LOGIN`.
    pub password: Secret,
    /// Time between connect attempts.
    pub connect_retry_ms: u64,
    /// Timeout of one connect.
    pub connect_timeout_ms: u64,
    /// Incomplete-message buffer per shard.
    pub in_buf_size: usize,
    /// Output queue per shard.
    pub out_buf_size: usize,
    /// Bytes per read on the shard thread.
    pub read_size: usize,
    /// Reads of one shard per wake-up.
    pub reads_per_wakeup: u32,
}

/// `[runtime]`: the event buffer, netpoll and secpool.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeCfg {
    /// Event buffer capacity.
    pub event_buffer_capacity: usize,
    /// Events per `event_wait`.
    pub event_wait_max: usize,
    /// Events an I/O thread collects before pushing.
    pub io_batch_max: usize,
    /// Events per `netpoll_wait`.
    pub netpoll_events_max: usize,
    /// secpool's byte cap.
    pub secpool_bytes_max: usize,
    /// Free blocks kept per secpool class.
    pub secpool_free_blocks_max: usize,
}

/// The whole of `proxy.cfg`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `[proxy]`
    pub proxy: ProxyCfg,
    /// `[client]`
    pub client: ClientCfg,
    /// `[shard]`
    pub shard: ShardCfg,
    /// `[runtime]`
    pub runtime: RuntimeCfg,
}

impl Default for Config {
    /// Every key at its default; `shard.password` empty, which
    /// [`Config::validate`] refuses.
    fn default() -> Config {
        Config {
            proxy: ProxyCfg {
                listen: DEFAULT_LISTEN.parse().expect("DEFAULT_LISTEN parses"),
                public_address: DEFAULT_PUBLIC_ADDRESS.to_string(),
                log_level: DEFAULT_LOG_LEVEL,
            },
            client: ClientCfg {
                max_clients: DEFAULT_MAX_CLIENTS,
                in_buf_size: DEFAULT_CLIENT_IN_BUF_SIZE,
                out_buf_size: DEFAULT_CLIENT_OUT_BUF_SIZE,
                read_size: DEFAULT_CLIENT_READ_SIZE,
                reads_per_wakeup: DEFAULT_CLIENT_READS_PER_WAKEUP,
                accepts_per_wakeup: DEFAULT_CLIENT_ACCEPTS_PER_WAKEUP,
                listen_backlog: DEFAULT_CLIENT_LISTEN_BACKLOG,
                idle_timeout_ms: DEFAULT_CLIENT_IDLE_TIMEOUT_MS,
                handshake_timeout_ms: DEFAULT_CLIENT_HANDSHAKE_TIMEOUT_MS,
                reservation_timeout_ms: DEFAULT_CLIENT_RESERVATION_TIMEOUT_MS,
                require_announced_ip: DEFAULT_CLIENT_REQUIRE_ANNOUNCED_IP,
            },
            shard: ShardCfg {
                password: Secret::default(),
                connect_retry_ms: DEFAULT_SHARD_CONNECT_RETRY_MS,
                connect_timeout_ms: DEFAULT_SHARD_CONNECT_TIMEOUT_MS,
                in_buf_size: DEFAULT_SHARD_IN_BUF_SIZE,
                out_buf_size: DEFAULT_SHARD_OUT_BUF_SIZE,
                read_size: DEFAULT_SHARD_READ_SIZE,
                reads_per_wakeup: DEFAULT_SHARD_READS_PER_WAKEUP,
            },
            runtime: RuntimeCfg {
                event_buffer_capacity: DEFAULT_EVENT_BUFFER_CAPACITY,
                event_wait_max: DEFAULT_EVENT_WAIT_MAX,
                io_batch_max: DEFAULT_IO_BATCH_MAX,
                netpoll_events_max: DEFAULT_NETPOLL_EVENTS_MAX,
                secpool_bytes_max: DEFAULT_SECPOOL_BYTES_MAX,
                secpool_free_blocks_max: DEFAULT_SECPOOL_FREE_BLOCKS_MAX,
            },
        }
    }
}

impl Config {
    /// Parses and validates the text of a `proxy.cfg`; `file` is only used in
    /// error messages.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let doc = Doc { file, text };
        let root = DeTable::parse(text).map_err(|err| {
            let line = err.span().map(|span| doc.line_of(span.start));
            ConfigError::new(file, line, err.message().trim_end().to_string())
        })?;
        let mut cfg = Config::default();
        let mut lines: HashMap<&'static str, usize> = HashMap::new();
        for (section, value) in in_file_order(root.get_ref()) {
            let DeValue::Table(table) = value.get_ref() else {
                return Err(doc.error(
                    section.span(),
                    format!(
                        "`{}` is not a section; every key belongs in [proxy], [client], [shard] or [runtime]",
                        section.get_ref()
                    ),
                ));
            };
            let section_name = section.get_ref().as_ref();
            if !SECTIONS.contains(&section_name) {
                return Err(doc.error(
                    section.span(),
                    format!(
                        "unknown section [{section_name}]; expected [proxy], [client], [shard] or [runtime]"
                    ),
                ));
            }
            for (key, value) in in_file_order(table) {
                let v = Val {
                    doc: &doc,
                    section: section_name,
                    key: key.get_ref(),
                    value,
                };
                let name =
                    cfg.set(section_name, key.get_ref(), &v)
                        .map_err(|problem| match problem {
                            Problem::Key(message) => doc.error(key.span(), message),
                            Problem::Value(message) => doc.error(value.span(), message),
                        })?;
                lines.insert(name, doc.line_of(key.span().start));
            }
        }
        cfg.validate()
            .map_err(|(key, message)| ConfigError::new(file, lines.get(key).copied(), message))?;
        Ok(cfg)
    }

    /// Sets one key; returns its qualified name, or the problem.
    fn set(&mut self, section: &str, key: &str, v: &Val<'_, '_>) -> Result<&'static str, Problem> {
        let p = &mut self.proxy;
        let c = &mut self.client;
        let s = &mut self.shard;
        let r = &mut self.runtime;
        let kib = 1024;
        let mib = 1024 * 1024;
        Ok(match (section, key) {
            ("proxy", "listen") => {
                p.listen = v.socket_addr()?;
                "proxy.listen"
            }
            ("proxy", "public_address") => {
                let text = v.string()?;
                let (host, port) = parse_host_port(&text, None)
                    .map_err(|e| format!("proxy.public_address: {e}"))?;
                if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
                    return Err(Problem::Value(format!(
                        "proxy.public_address: `{text}` is not an address a client can connect to"
                    )));
                }
                p.public_address = format_host_port(&host, port);
                "proxy.public_address"
            }
            ("proxy", "log_level") => {
                p.log_level = v.log_level()?;
                "proxy.log_level"
            }
            ("client", "max_clients") => {
                c.max_clients = v.int(1..=u64::from(MAX_CLIENTS_LIMIT))? as u32;
                "client.max_clients"
            }
            ("client", "in_buf_size") => {
                c.in_buf_size = v.int(256..=16 * mib)? as usize;
                "client.in_buf_size"
            }
            ("client", "out_buf_size") => {
                c.out_buf_size = v.int(kib..=64 * mib)? as usize;
                "client.out_buf_size"
            }
            ("client", "read_size") => {
                c.read_size = v.int(256..=mib)? as usize;
                "client.read_size"
            }
            ("client", "reads_per_wakeup") => {
                c.reads_per_wakeup = v.int(1..=1024)? as u32;
                "client.reads_per_wakeup"
            }
            ("client", "accepts_per_wakeup") => {
                c.accepts_per_wakeup = v.int(1..=65536)? as u32;
                "client.accepts_per_wakeup"
            }
            ("client", "listen_backlog") => {
                c.listen_backlog = v.int(1..=65535)? as u32;
                "client.listen_backlog"
            }
            ("client", "idle_timeout_ms") => {
                c.idle_timeout_ms = v.int(1000..=86_400_000)?;
                "client.idle_timeout_ms"
            }
            ("client", "handshake_timeout_ms") => {
                c.handshake_timeout_ms = v.int(100..=600_000)?;
                "client.handshake_timeout_ms"
            }
            ("client", "reservation_timeout_ms") => {
                c.reservation_timeout_ms = v.int(1000..=3_600_000)?;
                "client.reservation_timeout_ms"
            }
            ("client", "require_announced_ip") => {
                c.require_announced_ip = v.boolean()?;
                "client.require_announced_ip"
            }
            ("shard", "password") => {
                s.password = Secret::new(v.string()?);
                "shard.password"
            }
            ("shard", "connect_retry_ms") => {
                s.connect_retry_ms = v.int(100..=3_600_000)?;
                "shard.connect_retry_ms"
            }
            ("shard", "connect_timeout_ms") => {
                s.connect_timeout_ms = v.int(100..=600_000)?;
                "shard.connect_timeout_ms"
            }
            ("shard", "in_buf_size") => {
                s.in_buf_size = v.int(kib..=256 * mib)? as usize;
                "shard.in_buf_size"
            }
            ("shard", "out_buf_size") => {
                s.out_buf_size = v.int(kib..=1024 * mib)? as usize;
                "shard.out_buf_size"
            }
            ("shard", "read_size") => {
                s.read_size = v.int(256..=4 * mib)? as usize;
                "shard.read_size"
            }
            ("shard", "reads_per_wakeup") => {
                s.reads_per_wakeup = v.int(1..=1024)? as u32;
                "shard.reads_per_wakeup"
            }
            ("runtime", "event_buffer_capacity") => {
                r.event_buffer_capacity = v.int(1..=1 << 20)? as usize;
                "runtime.event_buffer_capacity"
            }
            ("runtime", "event_wait_max") => {
                r.event_wait_max = v.int(1..=1 << 16)? as usize;
                "runtime.event_wait_max"
            }
            ("runtime", "io_batch_max") => {
                r.io_batch_max = v.int(1..=1 << 16)? as usize;
                "runtime.io_batch_max"
            }
            ("runtime", "netpoll_events_max") => {
                r.netpoll_events_max = v.int(1..=1 << 16)? as usize;
                "runtime.netpoll_events_max"
            }
            ("runtime", "secpool_bytes_max") => {
                r.secpool_bytes_max = v.int(64 * kib..=1 << 40)? as usize;
                "runtime.secpool_bytes_max"
            }
            ("runtime", "secpool_free_blocks_max") => {
                r.secpool_free_blocks_max = v.int(1..=1 << 20)? as usize;
                "runtime.secpool_free_blocks_max"
            }
            _ => return Err(Problem::Key(format!("unknown key `{key}` in [{section}]"))),
        })
    }

    /// Checks that hold between keys. The error names the key to change.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.shard.password.expose().is_empty() {
            return Err((
                "shard.password",
                "shard.password is empty; set the password the shards expect".to_string(),
            ));
        }
        if self.client.in_buf_size < CLIENT_IN_BUF_MIN {
            return Err((
                "client.in_buf_size",
                format!(
                    "client.in_buf_size = {} cannot hold the largest client message; at least {CLIENT_IN_BUF_MIN}",
                    self.client.in_buf_size
                ),
            ));
        }
        if self.shard.in_buf_size < SHARD_IN_BUF_MIN {
            return Err((
                "shard.in_buf_size",
                format!(
                    "shard.in_buf_size = {} cannot hold a full frame; at least {SHARD_IN_BUF_MIN}",
                    self.shard.in_buf_size
                ),
            ));
        }
        let needed = self.secpool_bytes_needed();
        if self.runtime.secpool_bytes_max < needed {
            return Err((
                "runtime.secpool_bytes_max",
                format!(
                    "runtime.secpool_bytes_max = {} is below {needed}, the most the I/O threads can \
                     have in flight: (event_buffer_capacity + event_wait_max + 2 * io_batch_max) \
                     * secpool_block_size_max ({})",
                    self.runtime.secpool_bytes_max,
                    self.secpool_block_size_max()
                ),
            ));
        }
        Ok(())
    }

    /// The largest secpool block: one read, rounded up to a power of two.
    pub fn secpool_block_size_max(&self) -> usize {
        self.client
            .read_size
            .max(self.shard.read_size)
            .next_power_of_two()
    }

    /// The most bytes of read data that can be in flight at once: every event
    /// in the buffer, every event the main thread holds, and a batch on each
    /// I/O thread, each in the largest block. With the cap at least this, the
    /// blocking event buffer guarantees secpool is never exhausted.
    pub fn secpool_bytes_needed(&self) -> usize {
        let r = &self.runtime;
        (r.event_buffer_capacity + r.event_wait_max + 2 * r.io_batch_max)
            * self.secpool_block_size_max()
    }
}

/// One `shard = ...` line of `shards.cfg`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardEntry {
    /// Line number in `shards.cfg` (1-based), for messages.
    pub line: usize,
    /// IP address or DNS name.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The shard's public key, if pinned (`key=HEX` on the line): the proxy
    /// refuses a shard that presents another (port decision).
    pub key: Option<crate::cryptchan::PublicKey>,
}

impl ShardEntry {
    /// `HOST:PORT` (IPv6 in brackets), also used as the shard's name in logs.
    pub fn addr(&self) -> String {
        format_host_port(&self.host, self.port)
    }

    /// The same port and host, comparing addresses as addresses (`::1` is
    /// `0:0:0:0:0:0:0:1`) and names without regard to case.
    fn same_address(&self, other: &ShardEntry) -> bool {
        self.port == other.port
            && match (self.host.parse::<IpAddr>(), other.host.parse::<IpAddr>()) {
                (Ok(a), Ok(b)) => a == b,
                _ => self.host.eq_ignore_ascii_case(&other.host),
            }
    }
}

/// Parses the text of a `shards.cfg`; `file` is only used in error messages.
pub fn parse_shards_cfg(file: &Path, text: &str) -> Result<Vec<ShardEntry>, ConfigError> {
    let mut shards: Vec<ShardEntry> = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| ConfigError::new(file, Some(line), message);
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let Some((key, value)) = content.split_once('=') else {
            return Err(err(format!(
                "expected `shard = HOST[:PORT]`, found `{content}`"
            )));
        };
        let key = key.trim();
        if key != "shard" {
            return Err(err(format!("unknown key `{key}`; the only key is `shard`")));
        }
        let mut words = value.split_whitespace();
        let Some(address) = words.next() else {
            return Err(err(
                "`shard =` needs an address: `shard = HOST[:PORT]`".to_string()
            ));
        };
        let mut key = None;
        for word in words {
            match word.strip_prefix("key=") {
                Some(hex) if key.is_none() => {
                    key = Some(crate::cryptchan::PublicKey::from_hex(hex).ok_or_else(|| {
                        err(format!("`{hex}` is not a public key (64 hex digits)"))
                    })?);
                }
                _ => return Err(err(format!("unexpected `{word}` after the address"))),
            }
        }
        let (host, port) = parse_host_port(address, Some(DEFAULT_SHARD_PORT)).map_err(err)?;
        let entry = ShardEntry {
            line,
            host,
            port,
            key,
        };
        if let Some(first) = shards.iter().find(|s| s.same_address(&entry)) {
            return Err(err(format!(
                "shard {} is already listed on line {}",
                entry.addr(),
                first.line
            )));
        }
        shards.push(entry);
    }
    if shards.is_empty() {
        return Err(ConfigError::new(
            file,
            None,
            "no shards: add a line `shard = HOST[:PORT]`".to_string(),
        ));
    }
    Ok(shards)
}

/// Reads and validates both files.
pub fn load(
    config_path: &Path,
    shards_path: &Path,
) -> Result<(Config, Vec<ShardEntry>), ConfigError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|err| ConfigError::new(path, None, format!("cannot read: {err}")))
    };
    let config = Config::parse(config_path, &read(config_path)?)?;
    let shards = parse_shards_cfg(shards_path, &read(shards_path)?)?;
    Ok((config, shards))
}

/// A configuration problem: which file, which line (when there is one), what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, if the problem has one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(file: &Path, line: Option<usize>, message: String) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line,
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Splits `HOST[:PORT]`: an IPv4 address or DNS name with an optional port, a
/// bare IPv6 address, or `[IPv6]` with an optional port. `default_port: None`
/// makes the port mandatory.
fn parse_host_port(s: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("`{s}`: missing `]` after the IPv6 address"));
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`{host}` is not an IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("`{s}`: expected `:PORT` after `]`")),
            },
        }
    } else if s.matches(':').count() > 1 {
        // `::1:7000` could be an address or an address and a port: brackets
        // say which.
        return Err(format!(
            "`{s}`: write an IPv6 address in brackets, `[ADDRESS]` or `[ADDRESS]:PORT`"
        ));
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    check_host(host)?;
    let port = match (port, default_port) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(port) if port > 0 && p.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => return Err(format!("`{p}` is not a port (1 to 65535)")),
        },
        (None, Some(port)) => port,
        (None, None) => return Err(format!("`{s}` needs a port: HOST:PORT")),
    };
    Ok((host.to_string(), port))
}

/// An IP address, or a DNS name (labels of letters, digits and `-`) whose last
/// label is not all digits, so a mistyped IPv4 address is not taken for a name.
fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let labels: Vec<&str> = host.strip_suffix('.').unwrap_or(host).split('.').collect();
    let last_is_numeric = labels
        .last()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    if host.is_empty()
        || host.len() > 253
        || !labels.iter().all(|l| valid_label(l))
        || last_is_numeric
    {
        if host.parse::<Ipv4Addr>().is_err() && last_is_numeric {
            return Err(format!("`{host}` is not an IPv4 address"));
        }
        return Err(format!("`{host}` is not an IP address or host name"));
    }
    Ok(())
}

fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What is wrong with one `key = value`: the key itself, or its value.
enum Problem {
    Key(String),
    Value(String),
}

impl From<String> for Problem {
    fn from(message: String) -> Problem {
        Problem::Value(message)
    }
}

/// The text of the file, for turning byte offsets into line numbers.
struct Doc<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Doc<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(&self, span: Range<usize>, message: String) -> ConfigError {
        ConfigError::new(self.file, Some(self.line_of(span.start)), message)
    }
}

/// A table's entries sorted by where they appear, so the first error reported
/// is the first in the file.
fn in_file_order<'t, 'i>(
    table: &'t DeTable<'i>,
) -> Vec<(
    &'t toml::Spanned<toml::de::DeString<'i>>,
    &'t toml::Spanned<DeValue<'i>>,
)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

/// One value being read, with what is needed to describe it in an error.
struct Val<'a, 'i> {
    doc: &'a Doc<'a>,
    section: &'a str,
    key: &'a str,
    value: &'a toml::Spanned<DeValue<'i>>,
}

impl Val<'_, '_> {
    fn name(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }

    fn kind(&self) -> &'static str {
        match self.value.get_ref() {
            DeValue::String(_) => "a string",
            DeValue::Integer(_) => "an integer",
            DeValue::Float(_) => "a float",
            DeValue::Boolean(_) => "a boolean",
            DeValue::Datetime(_) => "a date",
            DeValue::Array(_) => "an array",
            DeValue::Table(_) => "a table",
        }
    }

    fn int(&self, range: RangeInclusive<u64>) -> Result<u64, String> {
        let expected = format!(
            "{}: expected an integer from {} to {}",
            self.name(),
            range.start(),
            range.end()
        );
        let DeValue::Integer(int) = self.value.get_ref() else {
            return Err(format!("{expected}, found {}", self.kind()));
        };
        match u64::from_str_radix(int.as_str(), int.radix()) {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(format!(
                "{expected}, found {}",
                &self.doc.text[self.value.span()]
            )),
        }
    }

    fn boolean(&self) -> Result<bool, String> {
        match self.value.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(format!(
                "{}: expected true or false, found {}",
                self.name(),
                self.kind()
            )),
        }
    }

    fn string(&self) -> Result<String, String> {
        match self.value.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            _ => Err(format!(
                "{}: expected a string, found {}",
                self.name(),
                self.kind()
            )),
        }
    }

    fn socket_addr(&self) -> Result<SocketAddr, String> {
        let text = self.string()?;
        text.parse().map_err(|_| {
            format!(
                "{}: expected IP:PORT (e.g. \"0.0.0.0:7702\" or \"[::]:7702\"), found \"{text}\"",
                self.name()
            )
        })
    }

    fn log_level(&self) -> Result<LevelFilter, String> {
        let text = self.string()?;
        text.parse().map_err(|_| {
            format!(
                "{}: expected one of off, error, warn, info, debug, trace; found \"{text}\"",
                self.name()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("proxy.cfg"), text)
    }

    fn shards(text: &str) -> Result<Vec<ShardEntry>, ConfigError> {
        parse_shards_cfg(Path::new("shards.cfg"), text)
    }

    const PASSWORD: &str = "[shard]\npassword = \"pw\"\n";

    #[test]
    fn defaults_fill_every_missing_key() {
        let cfg = parse(PASSWORD).unwrap();
        let mut expected = Config::default();
        expected.shard.password = Secret::new("pw");
        assert_eq!(cfg, expected);
        assert!(expected.runtime.secpool_bytes_max >= expected.secpool_bytes_needed());
    }

    #[test]
    fn keys_are_read_from_their_sections() {
        let cfg = parse(
            "[proxy]\nlisten = \"127.0.0.1:0\"\npublic_address = \"game.example.org:7702\"\n\
             log_level = \"debug\"\n[client]\nmax_clients = 10_000\nidle_timeout_ms = 0x1000\n\
             [shard]\npassword = \"secret\"\nconnect_retry_ms = 500\n",
        )
        .unwrap();
        assert_eq!(cfg.proxy.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(cfg.proxy.public_address, "game.example.org:7702");
        assert_eq!(cfg.proxy.log_level, LevelFilter::Debug);
        assert_eq!(cfg.client.max_clients, 10_000);
        assert_eq!(cfg.client.idle_timeout_ms, 4096);
        assert_eq!(cfg.shard.connect_retry_ms, 500);
        assert_eq!(format!("{:?}", cfg.shard.password), "Secret(***)");
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let cases = [
            (
                "[client]\nmax_clients = 10\nmax_client = 3\n",
                3,
                "unknown key `max_client` in [client]",
            ),
            (
                "[shard]\npassword = \"x\"\n[clients]\nmax_clients = 1\n",
                3,
                "unknown section [clients]",
            ),
            (
                "[client]\n\nmax_clients = 0\n",
                3,
                "expected an integer from 1 to 1000000, found 0",
            ),
            ("[client]\nmax_clients = \"many\"\n", 2, "found a string"),
            ("[proxy]\nlisten = \"localhost\"\n", 2, "expected IP:PORT"),
            (
                "[proxy]\npublic_address = \"0.0.0.0:7702\"\n",
                2,
                "not an address a client",
            ),
            ("[proxy]\npublic_address = \"host\"\n", 2, "needs a port"),
            ("[proxy]\nlog_level = \"loud\"\n", 2, "expected one of off"),
            ("max_clients = 3\n", 1, "is not a section"),
            ("[client]\nmax_clients = \n", 2, ""),
            (
                "[shard]\npassword = \"x\"\n\n[limits]\n",
                4,
                "unknown section [limits]",
            ),
        ];
        for (text, line, needle) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, Some(line), "{text:?}: {err}");
            assert!(
                err.to_string().starts_with(&format!("proxy.cfg:{line}: ")),
                "{err}"
            );
            assert!(err.message.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn cross_key_checks_point_at_the_key_to_change() {
        let err = parse("[client]\nmax_clients = 5\n").unwrap_err();
        assert_eq!(err.line, None);
        assert!(err.message.contains("shard.password is empty"), "{err}");

        let err = parse(&format!(
            "{PASSWORD}[runtime]\n\nsecpool_bytes_max = 1048576\n"
        ))
        .unwrap_err();
        assert_eq!(err.line, Some(5), "{err}");
        assert!(err.message.contains("is below"), "{err}");
    }

    #[test]
    fn shards_cfg_thesis_format() {
        let list = shards(
            "# shards this proxy serves\n\nshard = 127.0.0.1\nshard=10.0.0.2:9000   # second\n\
             shard = [::1]:7000\nshard = [::1]\n  shard = shard-3.example.org \
             key=00000000000000000000000000000000000000000000000000000000000000ff\n",
        )
        .unwrap();
        let addrs: Vec<String> = list.iter().map(ShardEntry::addr).collect();
        assert_eq!(
            addrs,
            [
                "127.0.0.1:7701",
                "10.0.0.2:9000",
                "[::1]:7000",
                "[::1]:7701",
                "shard-3.example.org:7701"
            ]
        );
        assert_eq!(
            list.iter().map(|s| s.line).collect::<Vec<_>>(),
            [3, 4, 5, 6, 7]
        );
        assert_eq!(list[0].key, None);
        assert_eq!(list[4].key.unwrap().0[31], 0xff);
    }

    #[test]
    fn shards_cfg_errors_name_the_line() {
        let cases = [
            (
                "shard = 127.0.0.1\nshard 127.0.0.2\n",
                2,
                "expected `shard = HOST[:PORT]`",
            ),
            (
                "shard = 127.0.0.1\nshrad = 127.0.0.2\n",
                2,
                "unknown key `shrad`",
            ),
            ("\nshard =\n", 2, "needs an address"),
            ("shard = 127.0.0.1:0\n", 1, "is not a port"),
            ("shard = 127.0.0.1:70000\n", 1, "is not a port"),
            ("shard = 127.0.0.300\n", 1, "is not an IPv4 address"),
            (
                "shard = bad_host!\n",
                1,
                "is not an IP address or host name",
            ),
            ("shard = [::1\n", 1, "missing `]`"),
            (
                "shard = 127.0.0.1 key=abc\n",
                1,
                "`abc` is not a public key",
            ),
            ("shard = 127.0.0.1 port=7\n", 1, "unexpected `port=7`"),
            ("shard = ::1:7000\n", 1, "in brackets"),
            ("shard = 127.0.0.1:+80\n", 1, "is not a port"),
            (
                "shard = example.org..\n",
                1,
                "is not an IP address or host name",
            ),
            (
                "shard = [::1]\nshard = [0:0:0:0:0:0:0:1]\n",
                2,
                "already listed on line 1",
            ),
            (
                "shard = Game.example.org\nshard = game.EXAMPLE.org\n",
                2,
                "already listed on line 1",
            ),
            (
                "shard = 127.0.0.1\nshard = 127.0.0.1:7701\n",
                2,
                "already listed on line 1",
            ),
        ];
        for (text, line, needle) in cases {
            let err = shards(text).unwrap_err();
            assert_eq!(err.line, Some(line), "{text:?}: {err}");
            assert!(
                err.to_string().starts_with(&format!("shards.cfg:{line}: ")),
                "{err}"
            );
            assert!(err.message.contains(needle), "{text:?}: {err}");
        }
        assert_eq!(
            shards("\u{feff}shard = 127.0.0.1\n").unwrap().len(),
            1,
            "a BOM is skipped"
        );
        let err = shards("# nothing\n\n").unwrap_err();
        assert_eq!(err.line, None);
        assert!(err.message.contains("no shards"));
    }
}
