//! The keys of `proxy.cfg` (thesis §3.8.1) as one table, [`KEYS`]: for each
//! key its qualified name, default, range, unit, whether a running daemon may
//! change it, a one-line doc and how its value is stored into [`Config`].
//! Each `DEFAULT_*` constant sits beside its key's entry.
//!
//! The names are a contract with operators' files: a key is never renamed.
//! `docs/configuration.md` and the shipped `proxy.cfg` list every key of this
//! table with its default, range and [`Reload`] (a test checks all three).

use log::LevelFilter;

use super::admin::ADMIN_KEYS;
use super::otc::OTC_KEYS;
use super::shards::{format_host_port, parse_host_port};
use super::{Config, MAX_CLIENTS_LIMIT, Secret};
use crate::proto::PASSWORD_MAX;

/// The sections of `proxy.cfg`, in the order the docs list them.
pub const SECTIONS: [&str; 6] = ["proxy", "client", "shard", "runtime", "otc", "admin"];

/// One key of `proxy.cfg`.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// `section.key`, as in the docs and in error messages.
    pub name: &'static str,
    /// What the value counts; also how its range is written.
    pub unit: Unit,
    /// Whether a running daemon may take a new value.
    pub reload: Reload,
    /// What the key is for, in one line.
    pub doc: &'static str,
    /// Its type, default and range, and where it is stored.
    pub value: Value,
}

/// What a key's value counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// An `IP:PORT` or `HOST:PORT`.
    Address,
    /// A log level.
    Level,
    /// Free text (the password).
    Text,
    /// A plain number of things: clients, reads, events, blocks.
    Count,
    /// Bytes.
    Bytes,
    /// Milliseconds.
    Millis,
    /// `true` or `false`.
    Boolean,
    /// One of a few words.
    Choice,
    /// A list of networks (`ADDR/PREFIX`).
    Networks,
    /// A list of TCP ports.
    Ports,
}

impl Unit {
    /// The unit's short name: `ms`, `bytes`, `count`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Address => "address",
            Unit::Level => "level",
            Unit::Text => "text",
            Unit::Count => "count",
            Unit::Bytes => "bytes",
            Unit::Millis => "ms",
            Unit::Boolean => "boolean",
            Unit::Choice => "choice",
            Unit::Networks => "networks",
            Unit::Ports => "ports",
        }
    }
}

/// Whether a running daemon may change a key: the contract that reloading
/// (a later issue) will keep.
///
/// The rule: a key is [`Reload::Live`] when the daemon reads it afresh each
/// time it uses it (a deadline, a retry timer, a per-wake-up loop bound, a
/// limit checked as output is queued, the log level, what is sent at a
/// shard's next login), so a new value simply applies from its next use. A
/// key is [`Reload::Restart`] when it sizes or binds something made at
/// start-up (the listening socket and its backlog, the client pool, buffers
/// reserved per connection, the event buffer, netpoll's event list, secpool)
/// or enters the secpool bound, which is checked once against secpool's cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// A running daemon may take a new value.
    Live,
    /// Only a restart takes a new value.
    Restart,
}

/// A key's type, default and range, and how a value is stored into
/// [`Config`].
#[derive(Clone, Copy, Debug)]
pub enum Value {
    /// An integer from `min` to `max`. `store` only sees values in that
    /// range, and every `max` fits its field, so its `as` cannot truncate.
    Int {
        /// The value when the key is left out.
        default: u64,
        /// The smallest value accepted.
        min: u64,
        /// The largest value accepted.
        max: u64,
        /// Sets the field.
        store: fn(&mut Config, u64),
    },
    /// `true` or `false`.
    Bool {
        /// The value when the key is left out.
        default: bool,
        /// Sets the field.
        store: fn(&mut Config, bool),
    },
    /// A list of strings, which `store` checks as it converts them.
    List {
        /// The value when the key is left out.
        default: &'static [&'static str],
        /// The values accepted, in words.
        allowed: &'static str,
        /// Checks and sets the field; the problem otherwise, without the
        /// key's name.
        store: fn(&mut Config, &[&str]) -> Result<(), String>,
    },
    /// A list of integers, each from `min` to `max`.
    IntList {
        /// The value when the key is left out.
        default: &'static [u64],
        /// The smallest value accepted.
        min: u64,
        /// The largest value accepted.
        max: u64,
        /// Sets the field; only sees values in range.
        store: fn(&mut Config, &[u64]),
    },
    /// A string, which `store` checks as it converts it.
    Text {
        /// The value when the key is left out; `None` for a required key.
        default: Option<&'static str>,
        /// The values accepted, in words.
        allowed: &'static str,
        /// Checks and sets the field; the problem otherwise, without the
        /// key's name (the reader puts it in front).
        store: fn(&mut Config, &str) -> Result<(), String>,
    },
}

impl Key {
    /// The section, `client` in `client.max_clients`.
    pub fn section(&self) -> &'static str {
        self.name.split_once('.').map_or("", |(section, _)| section)
    }

    /// The key within its section, `max_clients` in `client.max_clients`.
    pub fn key(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(_, key)| key)
    }

    /// The default as it is written in TOML (`1024`, `true`, `"info"`);
    /// `None` for a required key.
    pub fn default_text(&self) -> Option<String> {
        match self.value {
            Value::Int { default, .. } => Some(default.to_string()),
            Value::Bool { default, .. } => Some(default.to_string()),
            Value::Text { default, .. } => default.map(|d| format!("\"{d}\"")),
            Value::List { default, .. } => {
                let items: Vec<String> = default.iter().map(|d| format!("\"{d}\"")).collect();
                Some(format!("[{}]", items.join(", ")))
            }
            Value::IntList { default, .. } => {
                let items: Vec<String> = default.iter().map(|d| d.to_string()).collect();
                Some(format!("[{}]", items.join(", ")))
            }
        }
    }

    /// The values accepted, as the docs write them: `1 s to 24 h`,
    /// `256 B to 16 MiB`, `1 to 1,000,000`, `true, false`.
    pub fn range_text(&self) -> String {
        match self.value {
            Value::Int { min, max, .. } => {
                format!("{} to {}", in_unit(min, self.unit), in_unit(max, self.unit))
            }
            Value::IntList { min, max, .. } => {
                format!(
                    "a list of {} to {}",
                    in_unit(min, self.unit),
                    in_unit(max, self.unit)
                )
            }
            Value::Bool { .. } => "true, false".to_string(),
            Value::Text { allowed, .. } | Value::List { allowed, .. } => allowed.to_string(),
        }
    }
}

/// A listen address that may be left empty (the listener off): `otc.listen`,
/// `admin.listen`. `example` goes into the error.
pub(super) fn optional_listen(
    text: &str,
    example: &str,
) -> Result<Option<std::net::SocketAddr>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("expected IP:PORT (e.g. \"{example}\") or \"\", found \"{text}\""))
}

/// The entry for `key` in `[section]`.
pub(super) fn find(section: &str, key: &str) -> Option<&'static Key> {
    KEYS.iter()
        .find(|k| k.section() == section && k.key() == key)
}

/// `n` in the largest unit that divides it: `16 MiB`, `10 min`; counts of
/// five digits or more grouped by thousands, `65,536`.
fn in_unit(n: u64, unit: Unit) -> String {
    let units: &[(u64, &str)] = match unit {
        Unit::Bytes => &[
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
            (1, "B"),
        ],
        Unit::Millis => &[(3_600_000, "h"), (60_000, "min"), (1000, "s"), (1, "ms")],
        _ => &[],
    };
    match units.iter().find(|(size, _)| n > 0 && n % size == 0) {
        Some((size, name)) => format!("{} {name}", n / size),
        None if n >= 10_000 => {
            let digits = n.to_string();
            let mut grouped = String::new();
            for (i, digit) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    grouped.push(',');
                }
                grouped.push(digit);
            }
            grouped
        }
        None => n.to_string(),
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Every key of `proxy.cfg`, section by section.
pub static KEYS: &[Key] = &ALL_KEYS;

const ALL_KEYS: [Key; CORE_KEYS.len() + OTC_KEYS.len() + ADMIN_KEYS.len()] =
    concat_keys(MUTA_AND_OTC_KEYS, ADMIN_KEYS);
const MUTA_AND_OTC_KEYS: [Key; CORE_KEYS.len() + OTC_KEYS.len()] = concat_keys(CORE_KEYS, OTC_KEYS);

/// Two tables of keys as one, in order (a `const fn`: `KEYS` is built at
/// compile time).
const fn concat_keys<const A: usize, const B: usize, const N: usize>(
    a: [Key; A],
    b: [Key; B],
) -> [Key; N] {
    assert!(A + B == N && A > 0);
    let mut out = [a[0]; N];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

/// The keys of the MUTA front end, the shard links and the runtime.
const CORE_KEYS: [Key; 49] = [
    PROXY_LISTEN,
    PROXY_PUBLIC_ADDRESS,
    PROXY_LOG_LEVEL,
    PROXY_DRAIN_TIMEOUT_MS,
    CLIENT_MAX_CLIENTS,
    CLIENT_IN_BUF_SIZE,
    CLIENT_OUT_BUF_SIZE,
    CLIENT_READ_SIZE,
    CLIENT_READS_PER_WAKEUP,
    CLIENT_ACCEPTS_PER_WAKEUP,
    CLIENT_LISTEN_BACKLOG,
    CLIENT_READ_AHEAD_MAX,
    CLIENT_SOCKET_SEND_BUFFER,
    CLIENT_TCP_USER_TIMEOUT_MS,
    CLIENT_IDLE_TIMEOUT_MS,
    CLIENT_HANDSHAKE_TIMEOUT_MS,
    CLIENT_RESERVATION_TIMEOUT_MS,
    CLIENT_REQUIRE_ANNOUNCED_IP,
    CLIENT_PROXY_PROTOCOL,
    CLIENT_TRUSTED_FORWARDERS,
    CLIENT_PROXY_HEADER_TIMEOUT_MS,
    CLIENT_MAX_CONNS_PER_ADDR,
    CLIENT_NEW_CONNS_PER_ADDR_PER_S,
    CLIENT_NEW_CONNS_PER_ADDR_BURST,
    CLIENT_HANDSHAKES_PER_S,
    CLIENT_HANDSHAKES_BURST,
    CLIENT_UNAUTHENTICATED_MAX_PCT,
    CLIENT_ADDR_TABLE_MAX,
    CLIENT_PLAYER_MSGS_PER_S,
    CLIENT_PLAYER_MSGS_BURST,
    CLIENT_PLAYER_BYTES_PER_S,
    CLIENT_PLAYER_BYTES_BURST,
    SHARD_PASSWORD,
    SHARD_MAX_SHARDS,
    SHARD_CONNECT_RETRY_MS,
    SHARD_CONNECT_TIMEOUT_MS,
    SHARD_LOGIN_TIMEOUT_MS,
    SHARD_HEARTBEAT_MS,
    SHARD_HEARTBEAT_TIMEOUT_MS,
    SHARD_IN_BUF_SIZE,
    SHARD_OUT_BUF_SIZE,
    SHARD_READ_SIZE,
    SHARD_READS_PER_WAKEUP,
    RUNTIME_EVENT_BUFFER_CAPACITY,
    RUNTIME_EVENT_WAIT_MAX,
    RUNTIME_IO_BATCH_MAX,
    RUNTIME_NETPOLL_EVENTS_MAX,
    RUNTIME_SECPOOL_BYTES_MAX,
    RUNTIME_SECPOOL_FREE_BLOCKS_MAX,
];

// [proxy]

/// `proxy.listen`: where the client thread accepts players.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7702";
const PROXY_LISTEN: Key = Key {
    name: "proxy.listen",
    unit: Unit::Address,
    reload: Reload::Restart,
    doc: "Where the client thread accepts players.",
    value: Value::Text {
        default: Some(DEFAULT_LISTEN),
        allowed: "IP:PORT",
        store: |c, text| {
            c.proxy.listen = text.parse().map_err(|_| {
                format!(
                    "expected IP:PORT (e.g. \"0.0.0.0:7702\" or \"[::]:7702\"), found \"{text}\""
                )
            })?;
            Ok(())
        },
    },
};

/// `proxy.public_address`: what the shard tells the login server, which tells
/// the players.
pub const DEFAULT_PUBLIC_ADDRESS: &str = "127.0.0.1:7702";
const PROXY_PUBLIC_ADDRESS: Key = Key {
    name: "proxy.public_address",
    unit: Unit::Address,
    // Sent in FPROXY_MSG_LOGIN: a new value goes out at each shard's next login.
    reload: Reload::Live,
    doc: "The HOST:PORT players are told to connect to.",
    value: Value::Text {
        default: Some(DEFAULT_PUBLIC_ADDRESS),
        allowed: "HOST:PORT, not 0.0.0.0",
        store: store_public_address,
    },
};

fn store_public_address(c: &mut Config, text: &str) -> Result<(), String> {
    let (host, port) = parse_host_port(text, None)?;
    if host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(format!(
            "`{text}` is not an address a client can connect to"
        ));
    }
    c.proxy.public_address = format_host_port(&host, port);
    Ok(())
}

/// `proxy.log_level`, when `RUST_LOG` is not set.
pub const DEFAULT_LOG_LEVEL: LevelFilter = LevelFilter::Info;
const PROXY_LOG_LEVEL: Key = Key {
    name: "proxy.log_level",
    unit: Unit::Level,
    reload: Reload::Live,
    doc: "Log level when RUST_LOG is not set.",
    value: Value::Text {
        // DEFAULT_LOG_LEVEL's name; a test keeps the two equal.
        default: Some("info"),
        allowed: "off, error, warn, info, debug, trace",
        store: |c, text| {
            c.proxy.log_level = text.parse().map_err(|_| {
                format!("expected one of off, error, warn, info, debug, trace; found \"{text}\"")
            })?;
            Ok(())
        },
    },
};

/// `proxy.drain_timeout_ms`: how long the drain on SIGTERM waits for queued
/// output (HAProxy's `hard-stop-after`, sozu's graceful shutdown delay).
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;
const PROXY_DRAIN_TIMEOUT_MS: Key = Key {
    name: "proxy.drain_timeout_ms",
    unit: Unit::Millis,
    // Read when the drain begins.
    reload: Reload::Live,
    doc: "How long the drain on SIGTERM waits for queued output before it stops anyway; 0: stop at once.",
    value: Value::Int {
        default: DEFAULT_DRAIN_TIMEOUT_MS,
        min: 0,
        max: 600_000,
        store: |c, n| c.proxy.drain_timeout_ms = n,
    },
};

// [client]

/// `client.max_clients`: size of the fixed client pool.
pub const DEFAULT_MAX_CLIENTS: u32 = 1024;
const CLIENT_MAX_CLIENTS: Key = Key {
    name: "client.max_clients",
    unit: Unit::Count,
    reload: Reload::Restart,
    doc: "Size of the fixed client pool.",
    value: Value::Int {
        default: DEFAULT_MAX_CLIENTS as u64,
        min: 1,
        max: MAX_CLIENTS_LIMIT as u64,
        store: |c, n| c.client.max_clients = n as u32,
    },
};

/// `client.in_buf_size`: most bytes of incomplete messages held per client
/// (thesis `CL_IN_BUF_SZ`).
pub const DEFAULT_CLIENT_IN_BUF_SIZE: usize = 8 * 1024;
const CLIENT_IN_BUF_SIZE: Key = Key {
    name: "client.in_buf_size",
    unit: Unit::Bytes,
    // The thesis's fixed per-client buffer; each connection's frame limit is
    // set from it at accept.
    reload: Reload::Restart,
    doc: "Bytes of incomplete messages held per client (thesis CL_IN_BUF_SZ).",
    value: Value::Int {
        default: DEFAULT_CLIENT_IN_BUF_SIZE as u64,
        min: 256,
        max: 16 * MIB,
        store: |c, n| c.client.in_buf_size = n as usize,
    },
};

/// `client.out_buf_size`: most bytes queued to one client before it is
/// dropped as a slow reader (thesis `CL_OUT_BUF_SZ`).
pub const DEFAULT_CLIENT_OUT_BUF_SIZE: usize = 256 * 1024;
const CLIENT_OUT_BUF_SIZE: Key = Key {
    name: "client.out_buf_size",
    unit: Unit::Bytes,
    // A limit checked as output is queued, not a reservation.
    reload: Reload::Live,
    doc: "Bytes queued to one client before it is dropped as a slow reader (thesis CL_OUT_BUF_SZ).",
    value: Value::Int {
        default: DEFAULT_CLIENT_OUT_BUF_SIZE as u64,
        min: KIB,
        max: 64 * MIB,
        store: |c, n| c.client.out_buf_size = n as usize,
    },
};

/// `client.read_size`: most bytes one read on the client thread takes.
pub const DEFAULT_CLIENT_READ_SIZE: usize = 16 * 1024;
const CLIENT_READ_SIZE: Key = Key {
    name: "client.read_size",
    unit: Unit::Bytes,
    reload: Reload::Restart,
    doc: "Bytes one read on the client thread takes.",
    value: Value::Int {
        default: DEFAULT_CLIENT_READ_SIZE as u64,
        min: 256,
        max: MIB,
        store: |c, n| c.client.read_size = n as usize,
    },
};

/// `client.reads_per_wakeup`: reads of one client per netpoll wake-up before
/// the others get their turn.
pub const DEFAULT_CLIENT_READS_PER_WAKEUP: u32 = 4;
const CLIENT_READS_PER_WAKEUP: Key = Key {
    name: "client.reads_per_wakeup",
    unit: Unit::Count,
    reload: Reload::Live,
    doc: "Reads of one client per netpoll wake-up, so one fast sender cannot starve the others.",
    value: Value::Int {
        default: DEFAULT_CLIENT_READS_PER_WAKEUP as u64,
        min: 1,
        max: 1024,
        store: |c, n| c.client.reads_per_wakeup = n as u32,
    },
};

/// `client.accepts_per_wakeup`: accepts per netpoll wake-up.
pub const DEFAULT_CLIENT_ACCEPTS_PER_WAKEUP: u32 = 64;
const CLIENT_ACCEPTS_PER_WAKEUP: Key = Key {
    name: "client.accepts_per_wakeup",
    unit: Unit::Count,
    reload: Reload::Live,
    doc: "Connections accepted per netpoll wake-up.",
    value: Value::Int {
        default: DEFAULT_CLIENT_ACCEPTS_PER_WAKEUP as u64,
        min: 1,
        max: 65_536,
        store: |c, n| c.client.accepts_per_wakeup = n as u32,
    },
};

/// `client.listen_backlog`: the kernel's queue of connections not yet accepted.
pub const DEFAULT_CLIENT_LISTEN_BACKLOG: u32 = 1024;
const CLIENT_LISTEN_BACKLOG: Key = Key {
    name: "client.listen_backlog",
    unit: Unit::Count,
    // Given to listen(2) when the socket is bound.
    reload: Reload::Restart,
    doc: "The kernel's queue of connections not yet accepted.",
    value: Value::Int {
        default: DEFAULT_CLIENT_LISTEN_BACKLOG as u64,
        min: 1,
        max: 65_535,
        store: |c, n| c.client.listen_backlog = n as u32,
    },
};

/// `client.read_ahead_max`: bytes of one client's reads waiting for the main
/// thread (in the event buffer) before the client thread stops reading that
/// client, until the main thread has caught up: one fast sender holds at most
/// this much of the event buffer (4 reads of the default size).
pub const DEFAULT_CLIENT_READ_AHEAD_MAX: usize = 64 * 1024;
const CLIENT_READ_AHEAD_MAX: Key = Key {
    name: "client.read_ahead_max",
    unit: Unit::Bytes,
    reload: Reload::Restart,
    doc: "Bytes of one client's reads waiting for the main thread before its reading pauses.",
    value: Value::Int {
        default: DEFAULT_CLIENT_READ_AHEAD_MAX as u64,
        min: KIB,
        max: 1024 * MIB,
        store: |c, n| c.client.read_ahead_max = n as usize,
    },
};

/// `client.socket_send_buffer`: the kernel send buffer (`SO_SNDBUF`) of each
/// client socket. Left to the kernel, it grows up to `net.ipv4.tcp_wmem`'s
/// maximum (4 MiB on Debian) for a client that does not read, which both
/// pins that much kernel memory per client and hides the slow reader from
/// `client.out_buf_size` for as long as it takes to fill (HAProxy's
/// `tune.sndbuf.client`). 0 leaves it to the kernel.
pub const DEFAULT_CLIENT_SOCKET_SEND_BUFFER: usize = 64 * 1024;
const CLIENT_SOCKET_SEND_BUFFER: Key = Key {
    name: "client.socket_send_buffer",
    unit: Unit::Bytes,
    reload: Reload::Restart,
    doc: "The kernel send buffer of each client socket (SO_SNDBUF); 0 leaves it to the kernel.",
    value: Value::Int {
        default: DEFAULT_CLIENT_SOCKET_SEND_BUFFER as u64,
        min: 0,
        max: 64 * MIB,
        store: |c, n| c.client.socket_send_buffer = n as usize,
    },
};

/// `client.tcp_user_timeout_ms`: the kernel's `TCP_USER_TIMEOUT` on each
/// client socket: output that stays unacknowledged this long, or a zero
/// window that stays shut this long (Linux 5.11 and later), ends the
/// connection. A silent peer is the idle timeout's; this is for one that
/// keeps sending (a ping now and then) while it acknowledges nothing or
/// keeps its window shut: without it, it stays until the output it does
/// not take passes `client.out_buf_size` (`otc.path_out_buf_size` for an
/// OTC path), which a quiet game may never send, or for the kernel's
/// retries (`tcp_retries2`, about 15 minutes) (HAProxy's `tcp-ut`). 0
/// leaves the kernel's behaviour.
pub const DEFAULT_CLIENT_TCP_USER_TIMEOUT_MS: u64 = 30_000;
const CLIENT_TCP_USER_TIMEOUT_MS: Key = Key {
    name: "client.tcp_user_timeout_ms",
    unit: Unit::Millis,
    reload: Reload::Restart,
    doc: "Output unacknowledged, or a zero window, for this long ends a client's connection (TCP_USER_TIMEOUT); 0 leaves it to the kernel.",
    value: Value::Int {
        default: DEFAULT_CLIENT_TCP_USER_TIMEOUT_MS,
        min: 0,
        max: 600_000,
        store: |c, n| c.client.tcp_user_timeout_ms = n,
    },
};

/// `client.idle_timeout_ms`: a client that sends nothing for this long is
/// disconnected (thesis §3.8.5 "Timing clients out").
pub const DEFAULT_CLIENT_IDLE_TIMEOUT_MS: u64 = 60_000;
const CLIENT_IDLE_TIMEOUT_MS: Key = Key {
    name: "client.idle_timeout_ms",
    unit: Unit::Millis,
    reload: Reload::Live,
    doc: "A client that sends nothing for this long is disconnected.",
    value: Value::Int {
        default: DEFAULT_CLIENT_IDLE_TIMEOUT_MS,
        min: 1000,
        max: 86_400_000,
        store: |c, n| c.client.idle_timeout_ms = n,
    },
};

/// `client.handshake_timeout_ms`: the absolute deadline from accept to a valid
/// auth proof; a client that trickles its handshake is cut off here, whatever
/// it sends (slowloris).
pub const DEFAULT_CLIENT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
const CLIENT_HANDSHAKE_TIMEOUT_MS: Key = Key {
    name: "client.handshake_timeout_ms",
    unit: Unit::Millis,
    reload: Reload::Live,
    doc: "Absolute deadline from accept to a valid auth proof (slowloris).",
    value: Value::Int {
        default: DEFAULT_CLIENT_HANDSHAKE_TIMEOUT_MS,
        min: 100,
        max: 600_000,
        store: |c, n| c.client.handshake_timeout_ms = n,
    },
};

/// `client.reservation_timeout_ms`: a slot a shard reserved
/// (`TPROXY_MSG_OPENED_SOCKET`) that no player claims in this time is released
/// (thesis §3.8.5).
pub const DEFAULT_CLIENT_RESERVATION_TIMEOUT_MS: u64 = 30_000;
const CLIENT_RESERVATION_TIMEOUT_MS: Key = Key {
    name: "client.reservation_timeout_ms",
    unit: Unit::Millis,
    reload: Reload::Live,
    doc: "A slot a shard reserved that no player claims in this time is released.",
    value: Value::Int {
        default: DEFAULT_CLIENT_RESERVATION_TIMEOUT_MS,
        min: 1000,
        max: 3_600_000,
        store: |c, n| c.client.reservation_timeout_ms = n,
    },
};

/// `client.require_announced_ip`: refuse at accept a client whose IP no shard
/// announced (thesis §3.8.3); `false` is the thesis's planned relaxation for
/// players whose address changes (§3.8.5).
pub const DEFAULT_CLIENT_REQUIRE_ANNOUNCED_IP: bool = true;
const CLIENT_REQUIRE_ANNOUNCED_IP: Key = Key {
    name: "client.require_announced_ip",
    unit: Unit::Boolean,
    reload: Reload::Live,
    doc: "Refuse at accept a client whose IP no shard announced.",
    value: Value::Bool {
        default: DEFAULT_CLIENT_REQUIRE_ANNOUNCED_IP,
        store: |c, b| c.client.require_announced_ip = b,
    },
};

/// `client.proxy_protocol`: `"off"`, or `"required"`: every connection comes
/// from a trusted forwarder and starts with a PROXY protocol header (v1 or
/// v2) naming the player's address (seed 002's HAProxy forwarders with
/// `send-proxy-v2`).
pub const DEFAULT_CLIENT_PROXY_PROTOCOL: &str = "off";
const CLIENT_PROXY_PROTOCOL: Key = Key {
    name: "client.proxy_protocol",
    unit: Unit::Choice,
    // It sets the stages of the listener's connections, fixed at start-up.
    reload: Reload::Restart,
    doc: "off, or required: connections start with a PROXY protocol header from a trusted forwarder.",
    value: Value::Text {
        default: Some(DEFAULT_CLIENT_PROXY_PROTOCOL),
        allowed: "off, required",
        store: |c, text| {
            c.client.proxy_protocol = parse_proxy_protocol(text)?;
            Ok(())
        },
    },
};

/// `client.trusted_forwarders`: the networks a PROXY protocol header is taken
/// from; with `proxy_protocol = "required"`, a connection from anywhere else
/// is refused before anything is read. Empty by default.
const CLIENT_TRUSTED_FORWARDERS: Key = Key {
    name: "client.trusted_forwarders",
    unit: Unit::Networks,
    reload: Reload::Live,
    doc: "The networks whose connections may send a PROXY protocol header.",
    value: Value::List {
        default: &[],
        allowed: "networks, \"ADDR/PREFIX\" (IPv4, IPv6)",
        store: |c, items| {
            c.client.trusted_forwarders = parse_networks(items)?;
            Ok(())
        },
    },
};

/// `"off"` or `"required"`, the value of a `proxy_protocol` key.
pub(super) fn parse_proxy_protocol(text: &str) -> Result<super::ProxyProtocol, String> {
    match text {
        "off" => Ok(super::ProxyProtocol::Off),
        "required" => Ok(super::ProxyProtocol::Required),
        _ => Err(format!(
            "expected \"off\" or \"required\", found \"{text}\""
        )),
    }
}

/// The value of a `trusted_forwarders` key.
pub(super) fn parse_networks(items: &[&str]) -> Result<super::Networks, String> {
    Ok(super::Networks(
        items
            .iter()
            .map(|item| super::Cidr::parse(item))
            .collect::<Result<_, _>>()?,
    ))
}

/// `client.proxy_header_timeout_ms`: the deadline from accept to a complete
/// PROXY protocol header; the specification asks for at least 3 s, one TCP
/// retransmission.
pub const DEFAULT_CLIENT_PROXY_HEADER_TIMEOUT_MS: u64 = 3_000;
const CLIENT_PROXY_HEADER_TIMEOUT_MS: Key = Key {
    name: "client.proxy_header_timeout_ms",
    unit: Unit::Millis,
    reload: Reload::Live,
    doc: "Deadline from accept to a complete PROXY protocol header.",
    value: Value::Int {
        default: DEFAULT_CLIENT_PROXY_HEADER_TIMEOUT_MS,
        min: 3_000,
        max: 60_000,
        store: |c, n| c.client.proxy_header_timeout_ms = n,
    },
};

/// `client.max_conns_per_addr`: connections open at once from one effective
/// address (IPv4 by address, IPv6 by /64), authenticated or not. Players
/// behind one NAT share it: raise it for carrier-grade NAT.
pub const DEFAULT_CLIENT_MAX_CONNS_PER_ADDR: u32 = 32;
const CLIENT_MAX_CONNS_PER_ADDR: Key = Key {
    name: "client.max_conns_per_addr",
    unit: Unit::Count,
    reload: Reload::Live,
    doc: "Most connections open at once from one client address (IPv6: one /64).",
    value: Value::Int {
        default: DEFAULT_CLIENT_MAX_CONNS_PER_ADDR as u64,
        min: 1,
        max: 1_000_000,
        store: |c, n| c.client.max_conns_per_addr = n as u32,
    },
};

/// `client.new_conns_per_addr_per_s`: the refill rate of an address's bucket
/// of new connections (Gate's `quota.connections`: 5 a second).
pub const DEFAULT_CLIENT_NEW_CONNS_PER_ADDR_PER_S: u64 = 5;
const CLIENT_NEW_CONNS_PER_ADDR_PER_S: Key = Key {
    name: "client.new_conns_per_addr_per_s",
    unit: Unit::Count,
    reload: Reload::Live,
    doc: "New connections a second from one client address, after the burst.",
    value: Value::Int {
        default: DEFAULT_CLIENT_NEW_CONNS_PER_ADDR_PER_S,
        min: 1,
        max: 1_000_000,
        store: |c, n| c.client.new_conns_per_addr_per_s = n,
    },
};

/// `client.new_conns_per_addr_burst`: the size of an address's bucket of new
/// connections (a whole internet café reconnecting after a restart).
pub const DEFAULT_CLIENT_NEW_CONNS_PER_ADDR_BURST: u64 = 20;
const CLIENT_NEW_CONNS_PER_ADDR_BURST: Key = Key {
    name: "client.new_conns_per_addr_burst",
    unit: Unit::Count,
    reload: Reload::Live,
    doc: "New connections one client address may open at once.",
    value: Value::Int {
        default: DEFAULT_CLIENT_NEW_CONNS_PER_ADDR_BURST,
        min: 1,
        max: 1_000_000,
        store: |c, n| c.client.new_conns_per_addr_burst = n,
    },
};

/// `client.handshakes_per_s`: the refill rate of the proxy's one bucket of
/// handshakes; each costs an X25519 exchange on the main thread (about
/// 60 µs), so 2,000 a second are an eighth of a core.
pub const DEFAULT_CLIENT_HANDSHAKES_PER_S: u64 = 2_000;
const CLIENT_HANDSHAKES_PER_S: Key = Key {
    name: "client.handshakes_per_s",
    unit: Unit::Count,
    reload: Reload::Live,
    doc: "Key exchanges a second, all clients together, after the burst.",
    value: Value::Int {
        default: DEFAULT_CLIENT_HANDSHAKES_PER_S,
        min: 1,
        max: 1_000_000,
        store: |c, n| c.client.handshakes_per_s = n,
    },
};

/// `client.handshakes_burst`: the size of the bucket of handshakes (a storm of
/// players logging back in after a restart).
pub const DEFAULT_CLIENT_HANDSHAKES_BURST: u64 = 2_000;
const CLIENT_HANDSHAKES_BURST: Key = Key {
    name: "client.handshakes_burst",
    unit: Unit::Count,
    reload: Reload::Live,
    doc: "Key exchanges the proxy starts at once, all clients together.",
    value: Value::Int {
        default: DEFAULT_CLIENT_HANDSHAKES_BURST,
        min: 1,
        max: 1_000_000,
        store: |c, n| c.client.handshakes_burst = n,
    },
};

/// `client.unauthenticated_max_pct`: the share of `client.max_clients` that
/// connections before their auth proof may hold, so that a flood never takes
/// the room of players who logged in. A connection from an address a shard
/// announced (a player who just logged in) is admitted past it.
pub const DEFAULT_CLIENT_UNAUTHENTICATED_MAX_PCT: u32 = 25;
const CLIENT_UNAUTHENTICATED_MAX_PCT: Key = Key {
    name: "client.unauthenticated_max_pct",
    unit: Unit::Count,
    reload: Reload::Live,
    doc: "Percent of client.max_clients that connections not yet authenticated may hold.",
    value: Value::Int {
        default: DEFAULT_CLIENT_UNAUTHENTICATED_MAX_PCT as u64,
        min: 1,
        max: 100,
        store: |c, n| c.client.unauthenticated_max_pct = n as u32,
    },
};

/// `client.addr_table_max`: entries of the per-address table (55 to 110 bytes
/// each, `proxy::limits::ADDR_ENTRY_BYTES`: at most about 7 MiB at the
/// default). Full, a new address is refused until
/// entries expire (an address's entry lives while it has a connection, then
/// until its bucket is full again).
pub const DEFAULT_CLIENT_ADDR_TABLE_MAX: u64 = 65_536;
const CLIENT_ADDR_TABLE_MAX: Key = Key {
    name: "client.addr_table_max",
    unit: Unit::Count,
    reload: Reload::Live,
    doc: "Most client addresses tracked at once by the per-address limits.",
    value: Value::Int {
        default: DEFAULT_CLIENT_ADDR_TABLE_MAX,
        min: 1_024,
        max: 16_777_216,
        store: |c, n| c.client.addr_table_max = n as usize,
    },
};

/// `client.player_msgs_per_s`: the refill rate of a player's bucket of
/// messages (Gate's packet limiter: 500 a second over 7 s).
pub const DEFAULT_CLIENT_PLAYER_MSGS_PER_S: u64 = 500;
const CLIENT_PLAYER_MSGS_PER_S: Key = Key {
    name: "client.player_msgs_per_s",
    unit: Unit::Count,
    reload: Reload::Live,
    doc: "Messages a second an authenticated player may send, after the burst.",
    value: Value::Int {
        default: DEFAULT_CLIENT_PLAYER_MSGS_PER_S,
        min: 1,
        max: 1_000_000,
        store: |c, n| c.client.player_msgs_per_s = n,
    },
};

/// `client.player_msgs_burst`: the size of a player's bucket of messages:
/// 2 s at the default rate (Gate's window is 7 s; a smaller burst bounds
/// what a flooder pushes through before it is cut off).
pub const DEFAULT_CLIENT_PLAYER_MSGS_BURST: u64 = 1_000;
const CLIENT_PLAYER_MSGS_BURST: Key = Key {
    name: "client.player_msgs_burst",
    unit: Unit::Count,
    reload: Reload::Live,
    doc: "Messages an authenticated player may send at once.",
    value: Value::Int {
        default: DEFAULT_CLIENT_PLAYER_MSGS_BURST,
        min: 1,
        max: 10_000_000,
        store: |c, n| c.client.player_msgs_burst = n,
    },
};

/// `client.player_bytes_per_s`: the refill rate of a player's bucket of
/// bytes (decrypted frames).
pub const DEFAULT_CLIENT_PLAYER_BYTES_PER_S: u64 = 131_072;
const CLIENT_PLAYER_BYTES_PER_S: Key = Key {
    name: "client.player_bytes_per_s",
    unit: Unit::Bytes,
    reload: Reload::Live,
    doc: "Bytes a second an authenticated player may send, after the burst.",
    value: Value::Int {
        default: DEFAULT_CLIENT_PLAYER_BYTES_PER_S,
        min: 1_024,
        max: 1_073_741_824,
        store: |c, n| c.client.player_bytes_per_s = n,
    },
};

/// `client.player_bytes_burst`: the size of a player's bucket of bytes.
pub const DEFAULT_CLIENT_PLAYER_BYTES_BURST: u64 = 262_144;
const CLIENT_PLAYER_BYTES_BURST: Key = Key {
    name: "client.player_bytes_burst",
    unit: Unit::Bytes,
    reload: Reload::Live,
    doc: "Bytes an authenticated player may send at once.",
    value: Value::Int {
        default: DEFAULT_CLIENT_PLAYER_BYTES_BURST,
        min: 1_024,
        max: 1_073_741_824,
        store: |c, n| c.client.player_bytes_burst = n,
    },
};

// [shard]

const SHARD_PASSWORD: Key = Key {
    name: "shard.password",
    unit: Unit::Text,
    // Sent in FPROXY_MSG_LOGIN: a new value is used at each shard's next login.
    reload: Reload::Live,
    doc: "The password sent to every shard in FPROXY_MSG_LOGIN; never logged.",
    value: Value::Text {
        // Required; `Config::validate` refuses an empty one.
        default: None,
        allowed: "non-empty, at most 64 bytes",
        store: |c, text| {
            // The protocol carries at most PASSWORD_MAX bytes; a longer
            // password would be cut short on the wire and refused by the shard.
            if text.len() > PASSWORD_MAX {
                return Err(format!(
                    "at most {PASSWORD_MAX} bytes, found {} bytes",
                    text.len()
                ));
            }
            c.shard.password = Secret::new(text);
            Ok(())
        },
    },
};

/// `shard.max_shards`: the most `shards.cfg` lines, at start and after a
/// reload (the shard pool holds their link slots from the start).
pub const DEFAULT_MAX_SHARDS: u32 = 16;
const SHARD_MAX_SHARDS: Key = Key {
    name: "shard.max_shards",
    unit: Unit::Count,
    // Sizes the shard pool's link slots.
    reload: Reload::Restart,
    doc: "Most shards.cfg lines, at start and after a reload (the shard pool's link slots).",
    value: Value::Int {
        default: DEFAULT_MAX_SHARDS as u64,
        min: 1,
        max: 1024,
        store: |c, n| c.shard.max_shards = n as u32,
    },
};

/// `shard.connect_retry_ms`: time between connect attempts (thesis §3.8.1:
/// "every two seconds").
pub const DEFAULT_SHARD_CONNECT_RETRY_MS: u64 = 2_000;
const SHARD_CONNECT_RETRY_MS: Key = Key {
    name: "shard.connect_retry_ms",
    unit: Unit::Millis,
    reload: Reload::Live,
    doc: "Time between connect attempts to a shard (thesis: every two seconds).",
    value: Value::Int {
        default: DEFAULT_SHARD_CONNECT_RETRY_MS,
        min: 100,
        max: 3_600_000,
        store: |c, n| c.shard.connect_retry_ms = n,
    },
};

/// `shard.connect_timeout_ms`: how long one connect attempt may take (name
/// lookup included) before it is given up.
pub const DEFAULT_SHARD_CONNECT_TIMEOUT_MS: u64 = 2_000;
const SHARD_CONNECT_TIMEOUT_MS: Key = Key {
    name: "shard.connect_timeout_ms",
    unit: Unit::Millis,
    reload: Reload::Live,
    doc: "How long one connect attempt may take, name lookup included, before it is given up.",
    value: Value::Int {
        default: DEFAULT_SHARD_CONNECT_TIMEOUT_MS,
        min: 100,
        max: 600_000,
        store: |c, n| c.shard.connect_timeout_ms = n,
    },
};

/// `shard.login_timeout_ms`: from a link's connect to its login reply.
pub const DEFAULT_SHARD_LOGIN_TIMEOUT_MS: u64 = 5_000;
const SHARD_LOGIN_TIMEOUT_MS: Key = Key {
    name: "shard.login_timeout_ms",
    unit: Unit::Millis,
    reload: Reload::Live,
    doc: "From a shard link's connect to its TPROXY_MSG_LOGIN_RESULT; without it by then the link is dropped and tried again.",
    value: Value::Int {
        default: DEFAULT_SHARD_LOGIN_TIMEOUT_MS,
        min: 100,
        max: 600_000,
        store: |c, n| c.shard.login_timeout_ms = n,
    },
};

/// `shard.heartbeat_ms`: how often a ready link is pinged.
pub const DEFAULT_SHARD_HEARTBEAT_MS: u64 = 5_000;
const SHARD_HEARTBEAT_MS: Key = Key {
    name: "shard.heartbeat_ms",
    unit: Unit::Millis,
    reload: Reload::Live,
    doc: "Time between FPROXY_MSG_PING heartbeats on a ready shard link (its round trip is in the metrics); 0: none.",
    value: Value::Int {
        default: DEFAULT_SHARD_HEARTBEAT_MS,
        min: 0,
        max: 3_600_000,
        store: |c, n| c.shard.heartbeat_ms = n,
    },
};

/// `shard.heartbeat_timeout_ms`: an unanswered heartbeat drops the link.
pub const DEFAULT_SHARD_HEARTBEAT_TIMEOUT_MS: u64 = 15_000;
const SHARD_HEARTBEAT_TIMEOUT_MS: Key = Key {
    name: "shard.heartbeat_timeout_ms",
    unit: Unit::Millis,
    reload: Reload::Live,
    doc: "A heartbeat unanswered this long drops the shard link (its players are told) and it is tried again.",
    value: Value::Int {
        default: DEFAULT_SHARD_HEARTBEAT_TIMEOUT_MS,
        min: 1_000,
        max: 3_600_000,
        store: |c, n| c.shard.heartbeat_timeout_ms = n,
    },
};

/// `shard.in_buf_size`: most bytes of incomplete messages held per shard.
pub const DEFAULT_SHARD_IN_BUF_SIZE: usize = 1024 * 1024;
const SHARD_IN_BUF_SIZE: Key = Key {
    name: "shard.in_buf_size",
    unit: Unit::Bytes,
    // Reserved in full for every shard link.
    reload: Reload::Restart,
    doc: "Bytes of incomplete messages held per shard.",
    value: Value::Int {
        default: DEFAULT_SHARD_IN_BUF_SIZE as u64,
        min: KIB,
        max: 256 * MIB,
        store: |c, n| c.shard.in_buf_size = n as usize,
    },
};

/// `shard.out_buf_size`: most bytes queued to one shard; a shard that falls
/// this far behind is disconnected and reconnected.
pub const DEFAULT_SHARD_OUT_BUF_SIZE: usize = 4 * 1024 * 1024;
const SHARD_OUT_BUF_SIZE: Key = Key {
    name: "shard.out_buf_size",
    unit: Unit::Bytes,
    // Reserved in full for every shard link.
    reload: Reload::Restart,
    doc: "Bytes queued to one shard; a shard this far behind is reconnected.",
    value: Value::Int {
        default: DEFAULT_SHARD_OUT_BUF_SIZE as u64,
        min: KIB,
        max: 1024 * MIB,
        store: |c, n| c.shard.out_buf_size = n as usize,
    },
};

/// `shard.read_size`: most bytes one read on the shard thread takes.
pub const DEFAULT_SHARD_READ_SIZE: usize = 32 * 1024;
const SHARD_READ_SIZE: Key = Key {
    name: "shard.read_size",
    unit: Unit::Bytes,
    reload: Reload::Restart,
    doc: "Bytes one read on the shard thread takes.",
    value: Value::Int {
        default: DEFAULT_SHARD_READ_SIZE as u64,
        min: 256,
        max: 4 * MIB,
        store: |c, n| c.shard.read_size = n as usize,
    },
};

/// `shard.reads_per_wakeup`: reads of one shard per netpoll wake-up. Higher
/// than a client's: one shard link carries every player's traffic.
pub const DEFAULT_SHARD_READS_PER_WAKEUP: u32 = 16;
const SHARD_READS_PER_WAKEUP: Key = Key {
    name: "shard.reads_per_wakeup",
    unit: Unit::Count,
    reload: Reload::Live,
    doc: "Reads of one shard per netpoll wake-up.",
    value: Value::Int {
        default: DEFAULT_SHARD_READS_PER_WAKEUP as u64,
        min: 1,
        max: 1024,
        store: |c, n| c.shard.reads_per_wakeup = n as u32,
    },
};

// [runtime]: every key sizes the event buffer, netpoll or secpool, or enters
// the secpool bound, so none changes without a restart.

/// `runtime.event_buffer_capacity`: events the main thread's event buffer holds
/// before `event_push` blocks.
pub const DEFAULT_EVENT_BUFFER_CAPACITY: usize = 1024;
const RUNTIME_EVENT_BUFFER_CAPACITY: Key = Key {
    name: "runtime.event_buffer_capacity",
    unit: Unit::Count,
    reload: Reload::Restart,
    doc: "Events the main thread's event buffer holds before event_push blocks.",
    value: Value::Int {
        default: DEFAULT_EVENT_BUFFER_CAPACITY as u64,
        min: 1,
        max: 1 << 20,
        store: |c, n| c.runtime.event_buffer_capacity = n as usize,
    },
};

/// `runtime.event_wait_max`: most events the main thread takes per `event_wait`.
pub const DEFAULT_EVENT_WAIT_MAX: usize = 256;
const RUNTIME_EVENT_WAIT_MAX: Key = Key {
    name: "runtime.event_wait_max",
    unit: Unit::Count,
    reload: Reload::Restart,
    doc: "Most events the main thread takes per event_wait.",
    value: Value::Int {
        default: DEFAULT_EVENT_WAIT_MAX as u64,
        min: 1,
        max: 1 << 16,
        store: |c, n| c.runtime.event_wait_max = n as usize,
    },
};

/// `runtime.io_batch_max`: most events an I/O thread collects before pushing.
pub const DEFAULT_IO_BATCH_MAX: usize = 64;
const RUNTIME_IO_BATCH_MAX: Key = Key {
    name: "runtime.io_batch_max",
    unit: Unit::Count,
    reload: Reload::Restart,
    doc: "Most events an I/O thread collects before pushing them.",
    value: Value::Int {
        default: DEFAULT_IO_BATCH_MAX as u64,
        min: 1,
        max: 1 << 16,
        store: |c, n| c.runtime.io_batch_max = n as usize,
    },
};

/// `runtime.netpoll_events_max`: most events per `netpoll_wait`.
pub const DEFAULT_NETPOLL_EVENTS_MAX: usize = 256;
const RUNTIME_NETPOLL_EVENTS_MAX: Key = Key {
    name: "runtime.netpoll_events_max",
    unit: Unit::Count,
    reload: Reload::Restart,
    doc: "Most events one netpoll_wait returns.",
    value: Value::Int {
        default: DEFAULT_NETPOLL_EVENTS_MAX as u64,
        min: 1,
        max: 1 << 16,
        store: |c, n| c.runtime.netpoll_events_max = n as usize,
    },
};

/// `runtime.secpool_bytes_max`: cap on the bytes secpool holds.
pub const DEFAULT_SECPOOL_BYTES_MAX: usize = 64 * 1024 * 1024;
const RUNTIME_SECPOOL_BYTES_MAX: Key = Key {
    name: "runtime.secpool_bytes_max",
    unit: Unit::Bytes,
    reload: Reload::Restart,
    doc: "Cap on the bytes secpool holds; at least the in-flight bound.",
    value: Value::Int {
        default: DEFAULT_SECPOOL_BYTES_MAX as u64,
        min: 64 * KIB,
        max: 1 << 40,
        store: |c, n| c.runtime.secpool_bytes_max = n as usize,
    },
};

/// `runtime.secpool_free_blocks_max`: most free blocks kept per size class.
pub const DEFAULT_SECPOOL_FREE_BLOCKS_MAX: usize = 1024;
const RUNTIME_SECPOOL_FREE_BLOCKS_MAX: Key = Key {
    name: "runtime.secpool_free_blocks_max",
    unit: Unit::Count,
    reload: Reload::Restart,
    doc: "Free blocks kept per secpool size class.",
    value: Value::Int {
        default: DEFAULT_SECPOOL_FREE_BLOCKS_MAX as u64,
        min: 1,
        max: 1 << 20,
        store: |c, n| c.runtime.secpool_free_blocks_max = n as usize,
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_in_known_sections() {
        for (i, key) in KEYS.iter().enumerate() {
            assert!(SECTIONS.contains(&key.section()), "{}", key.name);
            assert!(
                !key.key().is_empty()
                    && key
                        .key()
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                key.name
            );
            assert!(
                KEYS[..i].iter().all(|k| k.name != key.name),
                "{} twice",
                key.name
            );
            assert!(std::ptr::eq(find(key.section(), key.key()).unwrap(), key));
        }
        for section in SECTIONS {
            assert!(KEYS.iter().any(|k| k.section() == section), "[{section}]");
        }
        assert!(find("client", "max_client").is_none());
        assert!(find("shard", "max_clients").is_none());
    }

    #[test]
    fn units_match_values() {
        for key in KEYS {
            let ok = match key.value {
                Value::Int {
                    default, min, max, ..
                } => {
                    matches!(key.unit, Unit::Count | Unit::Bytes | Unit::Millis)
                        && min <= default
                        && default <= max
                }
                Value::Bool { .. } => key.unit == Unit::Boolean,
                Value::Text { .. } => {
                    matches!(
                        key.unit,
                        Unit::Address | Unit::Level | Unit::Text | Unit::Choice
                    )
                }
                Value::List { .. } => key.unit == Unit::Networks,
                Value::IntList {
                    default, min, max, ..
                } => key.unit == Unit::Ports && default.iter().all(|d| (min..=max).contains(d)),
            };
            assert!(ok, "{}: unit or default out of place", key.name);
            assert!(!key.doc.is_empty(), "{} has no doc", key.name);
        }
    }

    #[test]
    fn text_defaults_are_accepted_and_match_their_constants() {
        assert_eq!(
            PROXY_LOG_LEVEL.default_text().unwrap(),
            format!("\"{}\"", DEFAULT_LOG_LEVEL.as_str().to_ascii_lowercase())
        );
        for key in KEYS {
            if let Value::Text {
                default: Some(default),
                store,
                ..
            } = key.value
            {
                let mut cfg = Config::default();
                store(&mut cfg, default).unwrap();
                assert_eq!(cfg, Config::default(), "{}", key.name);
            }
        }
        assert!(
            SHARD_PASSWORD
                .range_text()
                .contains(&PASSWORD_MAX.to_string())
        );
    }

    /// A value the key accepts that is not its default.
    fn other_value(key: &Key, cfg: &mut Config) -> String {
        match key.value {
            Value::Int {
                default,
                max,
                store,
                ..
            } => {
                let n = if default == max { max - 1 } else { max };
                store(cfg, n);
                n.to_string()
            }
            Value::Bool { default, store } => {
                store(cfg, !default);
                (!default).to_string()
            }
            Value::Text { store, .. } => {
                let text = match key.name {
                    "proxy.listen" => "127.0.0.1:1",
                    "proxy.log_level" => "trace",
                    "client.proxy_protocol" | "otc.proxy_protocol" => "required",
                    "otc.listen" => "127.0.0.1:2",
                    "admin.listen" => "127.0.0.1:3",
                    "otc.game_host" => "game.example.org",
                    _ => "game.example.org:1",
                };
                store(cfg, text).unwrap();
                text.to_string()
            }
            Value::List { store, .. } => {
                store(cfg, &["10.1.2.0/24"]).unwrap();
                "10.1.2.0/24".to_string()
            }
            Value::IntList { store, max, .. } => {
                store(cfg, &[max]);
                max.to_string()
            }
        }
    }

    /// Each entry's `store` sets its own field, whole (no truncation): setting
    /// one key changes one line of the config's debug print, the line with
    /// the key's field in the key's section.
    #[test]
    fn every_key_stores_into_its_own_field() {
        let before = format!("{:#?}", Config::default());
        for key in KEYS.iter().filter(|k| k.name != "shard.password") {
            let mut cfg = Config::default();
            let value = other_value(key, &mut cfg);
            let after = format!("{cfg:#?}");
            // The lines that differ, a value printed over several lines
            // (a list) as one: the common head and tail of both prints cut off.
            let (a, b): (Vec<&str>, Vec<&str>) =
                (after.lines().collect(), before.lines().collect());
            let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            let tail = a[head..]
                .iter()
                .rev()
                .zip(b[head..].iter().rev())
                .take_while(|(x, y)| x == y)
                .count();
            let changed: Vec<&str> = a[head..a.len() - tail].iter().map(|l| l.trim()).collect();
            assert!(!changed.is_empty(), "{}: nothing changed", key.name);
            // The field the change is in: the last line at a section's field
            // depth (eight spaces) at or before it.
            let line = (0..=head)
                .rev()
                .find(|&i| a[i].starts_with("        ") && !a[i].starts_with("         "))
                .unwrap();
            let rest_at_depth = a[head..a.len() - tail]
                .iter()
                .skip(usize::from(line == head))
                .any(|l| {
                    l.starts_with("        ")
                        && !l.starts_with("         ")
                        && !l.trim_start().starts_with([')', ']', '}'])
                });
            let text = if line == head {
                changed.concat()
            } else {
                format!("{} {}", a[line].trim(), changed.concat())
            };
            assert!(
                !rest_at_depth
                    && text.starts_with(&format!("{}: ", key.key()))
                    && text.to_ascii_lowercase().contains(value.as_str()),
                "{} changed {text:?}",
                key.name
            );
            let section = after
                .lines()
                .take(line)
                .filter(|l| l.ends_with('{'))
                .last()
                .unwrap();
            assert!(
                section.trim().starts_with(&format!("{}: ", key.section())),
                "{} stored into {section:?}",
                key.name
            );
        }
        let mut cfg = Config::default();
        if let Value::Text { store, .. } = SHARD_PASSWORD.value {
            store(&mut cfg, "pw").unwrap();
        }
        assert_eq!(cfg.shard.password.expose(), "pw");
    }

    #[test]
    fn ranges_are_written_in_their_units() {
        let range = |name: &str| KEYS.iter().find(|k| k.name == name).unwrap().range_text();
        assert_eq!(range("client.in_buf_size"), "256 B to 16 MiB");
        assert_eq!(range("runtime.secpool_bytes_max"), "64 KiB to 1 TiB");
        assert_eq!(range("client.idle_timeout_ms"), "1 s to 24 h");
        assert_eq!(range("client.handshake_timeout_ms"), "100 ms to 10 min");
        assert_eq!(range("client.max_clients"), "1 to 1,000,000");
        assert_eq!(range("client.reads_per_wakeup"), "1 to 1024");
        assert_eq!(range("runtime.io_batch_max"), "1 to 65,536");
        assert_eq!(range("client.require_announced_ip"), "true, false");
        assert_eq!(in_unit(0, Unit::Bytes), "0");
        assert_eq!(in_unit(1500, Unit::Millis), "1500 ms");
        assert_eq!(in_unit(123_456_789, Unit::Count), "123,456,789");
    }
}
