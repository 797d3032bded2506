//! Configuration (thesis §3.8.1): `proxy.cfg` in TOML, and `shards.cfg` in the
//! thesis's own line format, `shard = 127.0.0.1`.
//!
//! `proxy.cfg` has four sections, `[proxy]`, `[client]`, `[shard]` and
//! `[runtime]`. Every key is one entry of the table [`KEYS`] (`schema.rs`):
//! its name, default (`DEFAULT_*`), range, unit and whether a running daemon
//! may change it. Every key is optional except `shard.password`; every limit
//! the daemon enforces is one of these keys; unknown sections and keys are
//! errors. The pipeline is text → toml's spanned table → [`Config`], each key
//! range-checked by its entry (`reader.rs`) → the cross-key checks of
//! [`Config::validate`]. Every problem in a file is reported, not only the
//! first, each naming the file, the line and the problem ([`ConfigErrors`]).
//!
//! `shards.cfg` (`shards.rs`) has one `shard = HOST[:PORT] [key=HEX]` line
//! per shard (the key repeats, which is why it is not TOML), `#` comments and
//! blank lines.
//!
//! Nothing here does I/O except [`load`], which reads the two files.

mod admin;
mod cidr;
mod otc;
mod reader;
mod reload;
mod schema;
mod shards;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use log::LevelFilter;

// The table, its types and every `DEFAULT_*`, at `config::` where the rest of
// the crate has always found them.
pub use admin::*;
pub use cidr::{Cidr, Networks};
pub use otc::*;
pub use reload::{ReloadPlan, plan as reload_plan};
pub use schema::*;
pub use shards::{NO_SHARDS, ShardEntry, parse_shard_lines, parse_shards_cfg};

/// Upper bound on `client.max_clients`; also keeps client indices clear of the
/// reserved netpoll data words.
pub const MAX_CLIENTS_LIMIT: u32 = 1_000_000;
/// The port a `shards.cfg` line without one connects to (port decision).
pub const DEFAULT_SHARD_PORT: u16 = 7701;

/// The smallest `client.in_buf_size`: a frame holding the largest client
/// message (`CLMSG_ECHO` with 1 KiB of data), with its length and MAC.
pub const CLIENT_IN_BUF_MIN: usize = 2048;
/// The smallest `shard.in_buf_size`: one full frame (65,535 + 2 bytes).
pub const SHARD_IN_BUF_MIN: usize = 65_537;

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
    /// The drain's limit on SIGTERM.
    pub drain_timeout_ms: u64,
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
    /// Bytes of one client's reads in flight before its reading pauses.
    pub read_ahead_max: usize,
    /// `SO_SNDBUF` of client sockets (0: the kernel's).
    pub socket_send_buffer: usize,
    /// `TCP_USER_TIMEOUT` of client sockets (0: the kernel's).
    pub tcp_user_timeout_ms: u64,
    /// Idle timeout.
    pub idle_timeout_ms: u64,
    /// Deadline from accept to a valid auth proof.
    pub handshake_timeout_ms: u64,
    /// Lifetime of an unclaimed reservation.
    pub reservation_timeout_ms: u64,
    /// Refuse clients from IPs no shard announced.
    pub require_announced_ip: bool,
    /// Whether players' connections start with a PROXY protocol header.
    pub proxy_protocol: ProxyProtocol,
    /// The networks whose connections may send a PROXY protocol header.
    pub trusted_forwarders: Networks,
    /// Deadline from accept to a complete PROXY protocol header.
    pub proxy_header_timeout_ms: u64,
    /// Most connections open at once from one client address (IPv6: one /64).
    pub max_conns_per_addr: u32,
    /// New connections a second from one client address, after the burst.
    pub new_conns_per_addr_per_s: u64,
    /// New connections one client address may open at once.
    pub new_conns_per_addr_burst: u64,
    /// Key exchanges a second, all clients together, after the burst.
    pub handshakes_per_s: u64,
    /// Key exchanges the proxy starts at once, all clients together.
    pub handshakes_burst: u64,
    /// Percent of client.max_clients that connections not yet authenticated may hold.
    pub unauthenticated_max_pct: u32,
    /// Most client addresses tracked at once by the per-address limits.
    pub addr_table_max: usize,
    /// Messages a second an authenticated player may send, after the burst.
    pub player_msgs_per_s: u64,
    /// Messages an authenticated player may send at once.
    pub player_msgs_burst: u64,
    /// Bytes a second an authenticated player may send, after the burst.
    pub player_bytes_per_s: u64,
    /// Bytes an authenticated player may send at once.
    pub player_bytes_burst: u64,
}

/// `client.proxy_protocol`: whether a listener's connections start with a
/// PROXY protocol header from a trusted forwarder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// No header: the TCP peer is the player (the default).
    #[default]
    Off,
    /// Every connection comes from a forwarder in `trusted_forwarders` and
    /// starts with a header (v1 or v2) naming the player's address.
    Required,
}

/// `[shard]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardCfg {
    /// The password sent in `FPROXY_MSG_LOGIN`.
    pub password: Secret,
    /// Most `shards.cfg` lines.
    pub max_shards: u32,
    /// From connect to the login reply.
    pub login_timeout_ms: u64,
    /// Between heartbeats (0: none).
    pub heartbeat_ms: u64,
    /// An unanswered heartbeat drops the link after this long.
    pub heartbeat_timeout_ms: u64,
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
    /// `[otc]`
    pub otc: OtcCfg,
    /// `[admin]`
    pub admin: AdminCfg,
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
                drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
            },
            client: ClientCfg {
                max_clients: DEFAULT_MAX_CLIENTS,
                in_buf_size: DEFAULT_CLIENT_IN_BUF_SIZE,
                out_buf_size: DEFAULT_CLIENT_OUT_BUF_SIZE,
                read_size: DEFAULT_CLIENT_READ_SIZE,
                reads_per_wakeup: DEFAULT_CLIENT_READS_PER_WAKEUP,
                accepts_per_wakeup: DEFAULT_CLIENT_ACCEPTS_PER_WAKEUP,
                listen_backlog: DEFAULT_CLIENT_LISTEN_BACKLOG,
                read_ahead_max: DEFAULT_CLIENT_READ_AHEAD_MAX,
                socket_send_buffer: DEFAULT_CLIENT_SOCKET_SEND_BUFFER,
                tcp_user_timeout_ms: DEFAULT_CLIENT_TCP_USER_TIMEOUT_MS,
                idle_timeout_ms: DEFAULT_CLIENT_IDLE_TIMEOUT_MS,
                handshake_timeout_ms: DEFAULT_CLIENT_HANDSHAKE_TIMEOUT_MS,
                reservation_timeout_ms: DEFAULT_CLIENT_RESERVATION_TIMEOUT_MS,
                require_announced_ip: DEFAULT_CLIENT_REQUIRE_ANNOUNCED_IP,
                proxy_protocol: ProxyProtocol::Off,
                trusted_forwarders: Networks::default(),
                proxy_header_timeout_ms: DEFAULT_CLIENT_PROXY_HEADER_TIMEOUT_MS,
                max_conns_per_addr: DEFAULT_CLIENT_MAX_CONNS_PER_ADDR,
                new_conns_per_addr_per_s: DEFAULT_CLIENT_NEW_CONNS_PER_ADDR_PER_S,
                new_conns_per_addr_burst: DEFAULT_CLIENT_NEW_CONNS_PER_ADDR_BURST,
                handshakes_per_s: DEFAULT_CLIENT_HANDSHAKES_PER_S,
                handshakes_burst: DEFAULT_CLIENT_HANDSHAKES_BURST,
                unauthenticated_max_pct: DEFAULT_CLIENT_UNAUTHENTICATED_MAX_PCT,
                addr_table_max: DEFAULT_CLIENT_ADDR_TABLE_MAX as usize,
                player_msgs_per_s: DEFAULT_CLIENT_PLAYER_MSGS_PER_S,
                player_msgs_burst: DEFAULT_CLIENT_PLAYER_MSGS_BURST,
                player_bytes_per_s: DEFAULT_CLIENT_PLAYER_BYTES_PER_S,
                player_bytes_burst: DEFAULT_CLIENT_PLAYER_BYTES_BURST,
            },
            shard: ShardCfg {
                password: Secret::default(),
                max_shards: DEFAULT_MAX_SHARDS,
                login_timeout_ms: DEFAULT_SHARD_LOGIN_TIMEOUT_MS,
                heartbeat_ms: DEFAULT_SHARD_HEARTBEAT_MS,
                heartbeat_timeout_ms: DEFAULT_SHARD_HEARTBEAT_TIMEOUT_MS,
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
            otc: OtcCfg::default(),
            admin: AdminCfg::default(),
        }
    }
}

/// Room a path's output keeps beside a session's resend when it attaches.
pub const OTC_RESEND_ROOM: usize = 64 * 1024;

/// Bytes of a shard link's own messages one player can cause while the link
/// is backed up: `FPROXY_MSG_OPENED_SOCKET_RESULT` (6),
/// `FPROXY_MSG_PLAYER_CRYPTCHAN` with an IPv6 address (76),
/// `FPROXY_MSG_CLOSE_SOCKET` (6), rounded up.
pub const LINK_RESERVE_PER_PLAYER: usize = 96;

impl Config {
    /// The part of a shard link's output kept for the link's own messages:
    /// player data may fill the rest (`proxy::link`). An eighth of
    /// `shard.out_buf_size`, or what every client's closing messages need.
    pub fn shard_out_reserve(&self) -> usize {
        (self.shard.out_buf_size / 8)
            .max(self.client.max_clients as usize * LINK_RESERVE_PER_PLAYER)
    }

    /// Parses and validates the text of a `proxy.cfg`; `file` is only used in
    /// error messages. The error holds every problem found, in file order.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
        reader::parse(file, text)
    }

    /// As [`Config::parse`], with the text of each value the file sets.
    pub fn parse_values(file: &Path, text: &str) -> Result<(Config, KeyValues), ConfigErrors> {
        reader::parse_values(file, text)
    }

    /// Checks that hold between keys. Each problem names the key to change.
    pub fn validate(&self) -> Result<(), Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        // An OTC-only proxy has no shard to log in to (`load` checks the
        // password once it knows the shards).
        if self.shard.password.expose().is_empty() && self.otc.listen.is_none() {
            problems.push((
                "shard.password",
                "shard.password is empty; set the password the shards expect".to_string(),
            ));
        }
        if self.client.in_buf_size < CLIENT_IN_BUF_MIN {
            problems.push((
                "client.in_buf_size",
                format!(
                    "client.in_buf_size = {} cannot hold the largest client message; at least {CLIENT_IN_BUF_MIN}",
                    self.client.in_buf_size
                ),
            ));
        }
        self.limit_problems(&mut problems);
        self.admin_problems(&mut problems);
        if self.shard.in_buf_size < SHARD_IN_BUF_MIN {
            problems.push((
                "shard.in_buf_size",
                format!(
                    "shard.in_buf_size = {} cannot hold a full frame; at least {SHARD_IN_BUF_MIN}",
                    self.shard.in_buf_size
                ),
            ));
        }
        let needed = self.secpool_bytes_needed();
        if self.runtime.secpool_bytes_max < needed {
            problems.push((
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
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The admin endpoint's own port.
    fn admin_problems(&self, problems: &mut Vec<(&'static str, String)>) {
        if let Some(admin) = self.admin.listen
            && (admin == self.proxy.listen || Some(admin) == self.otc.listen)
        {
            problems.push((
                "admin.listen",
                format!("admin.listen = {admin} is a front end's port too; give it its own"),
            ));
        }
    }

    /// The checks between the limits "Under attack" added.
    fn limit_problems(&self, problems: &mut Vec<(&'static str, String)>) {
        if self.shard_out_reserve() > self.shard.out_buf_size / 2 {
            problems.push((
                "shard.out_buf_size",
                format!(
                    "shard.out_buf_size = {} cannot keep room for the link's own messages to \
                     client.max_clients = {} players ({LINK_RESERVE_PER_PLAYER} bytes each) in half \
                     of it; at least {}",
                    self.shard.out_buf_size,
                    self.client.max_clients,
                    2 * self.client.max_clients as usize * LINK_RESERVE_PER_PLAYER
                ),
            ));
        }
        if (self.client.player_bytes_burst as usize) < self.client.in_buf_size {
            problems.push((
                "client.player_bytes_burst",
                format!(
                    "client.player_bytes_burst = {} is less than one frame of client.in_buf_size = {}: \
                     a player sending one full frame would always be over budget",
                    self.client.player_bytes_burst, self.client.in_buf_size
                ),
            ));
        }
        if self.otc.proxy_protocol == ProxyProtocol::Required
            && self.otc.trusted_forwarders.is_empty()
        {
            problems.push((
                "otc.proxy_protocol",
                "otc.proxy_protocol = \"required\" needs otc.trusted_forwarders: the networks \
                 of the forwarders allowed to send the header"
                    .to_string(),
            ));
        }
        if self.otc.unacked_bytes_max + OTC_RESEND_ROOM > self.otc.path_out_buf_size {
            problems.push((
                "otc.unacked_bytes_max",
                format!(
                    "otc.unacked_bytes_max = {} does not fit otc.path_out_buf_size = {} with \
                     {OTC_RESEND_ROOM} bytes to spare: a path that attaches is sent every frame \
                     not acknowledged at once, and would be cut as a slow reader",
                    self.otc.unacked_bytes_max, self.otc.path_out_buf_size
                ),
            ));
        }
        if self.otc.listen.is_some() && self.otc.listen == Some(self.proxy.listen) {
            problems.push((
                "otc.listen",
                format!(
                    "otc.listen = {} is proxy.listen too; give each front end its own port",
                    self.proxy.listen
                ),
            ));
        }
        if self.client.proxy_protocol == ProxyProtocol::Required
            && self.client.trusted_forwarders.is_empty()
        {
            problems.push((
                "client.proxy_protocol",
                "client.proxy_protocol = \"required\" needs client.trusted_forwarders: the \
                 networks of the forwarders allowed to send the header"
                    .to_string(),
            ));
        }
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

/// What `--check-config` and the start-up log warn of: settings that are
/// valid but almost certainly not what a deployment wants.
pub fn warnings(cfg: &Config, n_shards: usize) -> Vec<String> {
    let mut out = Vec::new();
    if n_shards == 0 {
        return out; // the MUTA listener is not opened; neither key is used
    }
    let host = cfg
        .proxy
        .public_address
        .rsplit_once(':')
        .map_or("", |(host, _)| {
            host.trim_start_matches('[').trim_end_matches(']')
        });
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback && cfg.proxy.listen.ip().is_unspecified() {
        out.push(format!(
            "proxy.public_address = \"{}\" is a loopback address, but proxy.listen = {} \
             accepts players from other hosts: they would be told to connect to their own \
             machine; set the address players reach this proxy at",
            cfg.proxy.public_address, cfg.proxy.listen
        ));
    }
    if cfg.shard.password.expose() == DEFAULT_SHIPPED_PASSWORD {
        out.push(format!(
            "shard.password is the shipped \"{DEFAULT_SHIPPED_PASSWORD}\": anyone who reaches \
             a shard's proxy port can pose as a proxy; set the same new password on the proxies \
             and the shards"
        ));
    }
    out
}

/// The password the shipped `proxy.cfg` and `muta-shard` have by default.
pub const DEFAULT_SHIPPED_PASSWORD: &str = "change-me";

/// The keys a `proxy.cfg` sets, each with its value's text as written
/// (`"0.0.0.0:7702"`, `4096`, `[7171, 7172]`); a key left out is at its
/// default.
pub type KeyValues = std::collections::BTreeMap<&'static str, String>;

/// Both files, read and validated, with the text of `proxy.cfg`'s values
/// (for a reload to compare).
#[derive(Clone, Debug)]
pub struct Loaded {
    /// `proxy.cfg`.
    pub config: Config,
    /// What `proxy.cfg` sets, as written.
    pub values: KeyValues,
    /// `shards.cfg`.
    pub shards: Vec<ShardEntry>,
}

/// Reads and validates both files. A broken `proxy.cfg` does not stop the
/// check of `shards.cfg`: the error holds the problems of both, `proxy.cfg`'s
/// first.
pub fn load(
    config_path: &Path,
    shards_path: &Path,
) -> Result<(Config, Vec<ShardEntry>), ConfigErrors> {
    load_values(config_path, shards_path).map(|l| (l.config, l.shards))
}

/// As [`load`], with the text of `proxy.cfg`'s values.
pub fn load_values(config_path: &Path, shards_path: &Path) -> Result<Loaded, ConfigErrors> {
    let read = |path: &Path| -> Result<String, ConfigErrors> {
        std::fs::read_to_string(path)
            .map_err(|err| ConfigError::new(path, None, format!("cannot read: {err}")).into())
    };
    let config = read(config_path).and_then(|text| Config::parse_values(config_path, &text));
    let shards = read(shards_path).and_then(|text| parse_shard_lines(shards_path, &text));
    let ((config, values), shards) = match (config, shards) {
        (Ok(config), Ok(shards)) => (config, shards),
        (Err(errors), Ok(_)) | (Ok(_), Err(errors)) => return Err(errors),
        (Err(ConfigErrors(mut first)), Err(ConfigErrors(second))) => {
            first.extend(second);
            return Err(ConfigErrors(first));
        }
    };
    // Shards are needed unless the OTC front end is on; with shards, their
    // password is.
    if shards.is_empty() && config.otc.listen.is_none() {
        let hint = format!("{NO_SHARDS} (or set otc.listen for an OTC-only proxy)");
        return Err(ConfigError::new(shards_path, None, hint).into());
    }
    if !shards.is_empty() && config.shard.password.expose().is_empty() {
        let message = "shard.password is empty; set the password the shards expect".to_string();
        return Err(ConfigError::new(config_path, None, message).into());
    }
    if shards.len() > config.shard.max_shards as usize {
        let message = format!(
            "{} shards listed; shard.max_shards is {}",
            shards.len(),
            config.shard.max_shards
        );
        return Err(ConfigError::new(shards_path, None, message).into());
    }
    Ok(Loaded {
        config,
        values,
        shards,
    })
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

/// Every problem found in the configuration, in file order; never empty when
/// returned as an error. Displays as one `FILE:LINE: message` line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The problems, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// The messages alone, joined by `; `: for text that has no file or
    /// lines of its own, such as a command-line flag.
    pub fn messages(&self) -> String {
        let messages: Vec<&str> = self.iter().map(|e| e.message.as_str()).collect();
        messages.join("; ")
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![error])
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_display_one_line_each() {
        let errors = ConfigErrors(vec![
            ConfigError::new(Path::new("proxy.cfg"), Some(3), "first".to_string()),
            ConfigError::new(Path::new("proxy.cfg"), None, "second".to_string()),
        ]);
        assert_eq!(errors.to_string(), "proxy.cfg:3: first\nproxy.cfg: second");
        assert_eq!(errors.messages(), "first; second");
        assert_eq!((&errors).into_iter().count(), 2);
    }

    #[test]
    fn load_reports_the_problems_of_both_files() {
        let missing = Path::new("/nonexistent/muta-proxy");
        let errors = load(&missing.join("proxy.cfg"), &missing.join("shards.cfg")).unwrap_err();
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{errors}");
        assert!(lines[0].starts_with("/nonexistent/muta-proxy/proxy.cfg: cannot read"));
        assert!(lines[1].starts_with("/nonexistent/muta-proxy/shards.cfg: cannot read"));
    }

    #[test]
    fn an_otc_only_proxy_needs_no_shard_and_no_password_and_a_muta_one_both() {
        let dir = std::env::temp_dir().join(format!("muta-cfg-otc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cfg, shards) = (dir.join("proxy.cfg"), dir.join("shards.cfg"));
        let write = |path: &Path, text: &str| std::fs::write(path, text).unwrap();
        write(
            &cfg,
            "[otc]\nlisten = \"127.0.0.1:7162\"\nallowed_ports = [7172]\n",
        );
        write(&shards, "# no shards\n");
        let (loaded, entries) = load(&cfg, &shards).unwrap();
        assert!(entries.is_empty());
        assert_eq!(loaded.otc.allowed_ports, [7172]);
        // A shard needs the password.
        write(&shards, "shard = 127.0.0.1\n");
        assert!(
            load(&cfg, &shards)
                .unwrap_err()
                .to_string()
                .contains("shard.password")
        );
        // Without [otc], a shard is needed.
        write(&cfg, "[shard]\npassword = \"pw\"\n");
        write(&shards, "");
        assert!(
            load(&cfg, &shards)
                .unwrap_err()
                .to_string()
                .contains("no shards")
        );
        // A port out of range, and an integer list given as strings.
        write(
            &cfg,
            "[otc]\nlisten = \"127.0.0.1:1\"\nallowed_ports = [70000]\n",
        );
        assert!(
            load(&cfg, &shards)
                .unwrap_err()
                .to_string()
                .contains("otc.allowed_ports")
        );
        write(
            &cfg,
            "[otc]\nlisten = \"127.0.0.1:1\"\nallowed_ports = [\"7172\"]\n",
        );
        assert!(load(&cfg, &shards).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validate_reports_every_cross_key_problem() {
        let mut cfg = Config::default();
        cfg.client.in_buf_size = 1024;
        cfg.runtime.secpool_bytes_max = 1;
        cfg.client.max_clients = 100_000; // 19 MB of room, 4 MiB of output
        cfg.client.player_bytes_burst = 512;
        cfg.client.proxy_protocol = ProxyProtocol::Required;
        let keys: Vec<&str> = cfg.validate().unwrap_err().iter().map(|p| p.0).collect();
        assert_eq!(
            keys,
            [
                "shard.password",
                "client.in_buf_size",
                "shard.out_buf_size",
                "client.player_bytes_burst",
                "client.proxy_protocol",
                "runtime.secpool_bytes_max"
            ]
        );
        cfg.shard.password = Secret::new("pw");
        cfg.client.in_buf_size = CLIENT_IN_BUF_MIN;
        cfg.shard.out_buf_size = 2 * 100_000 * LINK_RESERVE_PER_PLAYER;
        cfg.client.player_bytes_burst = DEFAULT_CLIENT_PLAYER_BYTES_BURST;
        cfg.client.trusted_forwarders = Networks(vec![Cidr::parse("10.0.0.0/8").unwrap()]);
        cfg.runtime.secpool_bytes_max = cfg.secpool_bytes_needed();
        assert_eq!(cfg.validate(), Ok(()));
    }
}
