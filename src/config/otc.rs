//! The `[otc]` section of `proxy.cfg`: the OTClient multi-path front end
//! (seed 002; no thesis section: a port decision, `docs/otc.md`). Its keys,
//! each with its `DEFAULT_OTC_*` beside it, in the same table as every other
//! key ([`super::KEYS`]); [`OtcCfg`] holds their values.
//!
//! The front end is off until `otc.listen` names an address. Every bound the
//! OTC code enforces is one of these keys: the sessions, the paths, the
//! reorder window and its bytes, the unacknowledged bytes, the budgets, the
//! buffers.

use std::net::SocketAddr;

use super::schema::{Key, Reload, Unit, Value, optional_listen};
use super::{Networks, ProxyProtocol};

/// `[otc]`.
#[derive(Clone, Debug, PartialEq)]
pub struct OtcCfg {
    /// Where OTClient connections (through forwarders) are accepted; `None`:
    /// the front end is off.
    pub listen: Option<SocketAddr>,
    /// The game server's host (TFS), dialled once per session.
    pub game_host: String,
    /// The game-server ports a session may ask for.
    pub allowed_ports: Vec<u16>,
    /// Send `0xFFFE` and the client's IPv4 address first to the game server.
    pub ip_prefix: bool,
    /// Whether connections start with a PROXY protocol header.
    pub proxy_protocol: ProxyProtocol,
    /// Where PROXY protocol headers are taken from.
    pub trusted_forwarders: Networks,
    /// Most OTC connections (paths) at once.
    pub max_paths: u32,
    /// Most sessions at once.
    pub max_sessions: u32,
    /// Most live sessions opened from one address (IPv6: one /64).
    pub sessions_per_addr_max: u32,
    /// Sessions one address may open a second.
    pub new_sessions_per_addr_per_s: u64,
    /// The address's burst of new sessions.
    pub new_sessions_per_addr_burst: u64,
    /// Most paths attached to one session.
    pub paths_per_session_max: u32,
    /// Most sessions attached to one path.
    pub sessions_per_path_max: u32,
    /// Most packet ids a frame may be ahead of the next one expected.
    pub reorder_window: u32,
    /// Most bytes of a session's packets held out of order.
    pub reorder_bytes_max: usize,
    /// Most bytes of a session's frames to the client not yet acknowledged.
    pub unacked_bytes_max: usize,
    /// A session with no attached path is ended after this long.
    pub detached_timeout_ms: u64,
    /// Deadline of the connect to the game server.
    pub connect_timeout_ms: u64,
    /// Most bytes queued to one path (client connection).
    pub path_out_buf_size: usize,
    /// Most bytes queued to one game-server connection.
    pub game_out_buf_size: usize,
    /// Frames a path may send a second (every kind, duplicates too).
    pub path_frames_per_s: u64,
    /// The path's burst of frames.
    pub path_frames_burst: u64,
    /// Packets a session may deliver to the game server a second.
    pub session_msgs_per_s: u64,
    /// The session's burst of packets.
    pub session_msgs_burst: u64,
    /// Bytes a session may deliver to the game server a second.
    pub session_bytes_per_s: u64,
    /// The session's burst of bytes.
    pub session_bytes_burst: u64,
}

/// `otc.game_host`.
pub const DEFAULT_OTC_GAME_HOST: &str = "127.0.0.1";
/// `otc.allowed_ports`: TFS's login and game ports.
pub const DEFAULT_OTC_ALLOWED_PORTS: &[u64] = &[7171, 7172];
/// `otc.ip_prefix`: on, as alpha-proxy's `WITH_IP_EXTENSION`.
pub const DEFAULT_OTC_IP_PREFIX: bool = true;
/// `otc.max_paths`.
pub const DEFAULT_OTC_MAX_PATHS: u32 = 4096;
/// `otc.max_sessions`.
pub const DEFAULT_OTC_MAX_SESSIONS: u32 = 4096;
/// `otc.sessions_per_addr_max`: a client has its login and its game
/// session; a few players behind one NAT.
pub const DEFAULT_OTC_SESSIONS_PER_ADDR_MAX: u32 = 8;
/// `otc.new_sessions_per_addr_per_s`: each session is a connection to the
/// game server, so opening and ending them in a loop must not become a
/// connect flood against it (TFS's own per-IP throttle is off behind the
/// proxy).
pub const DEFAULT_OTC_NEW_SESSIONS_PER_ADDR_PER_S: u64 = 2;
/// `otc.new_sessions_per_addr_burst`: a client's login and game sessions,
/// and a reconnect or two.
pub const DEFAULT_OTC_NEW_SESSIONS_PER_ADDR_BURST: u64 = 10;
/// `otc.paths_per_session_max`: the client attaches two (three for a
/// moment while it swaps one); an attach past it lets the session's oldest
/// path go.
pub const DEFAULT_OTC_PATHS_PER_SESSION_MAX: u32 = 4;
/// `otc.sessions_per_path_max`.
pub const DEFAULT_OTC_SESSIONS_PER_PATH_MAX: u32 = 8;
/// `otc.reorder_window`.
pub const DEFAULT_OTC_REORDER_WINDOW: u32 = 64;
/// `otc.reorder_bytes_max`.
pub const DEFAULT_OTC_REORDER_BYTES_MAX: usize = 64 * 1024;
/// `otc.unacked_bytes_max`: the client acknowledges with its own packets
/// (a Tibia client answers the server's pings), so this is a few seconds of
/// a busy screen; a path that attaches is sent all of it at once, so it must
/// fit a path's output with room to spare (`Config::validate`).
pub const DEFAULT_OTC_UNACKED_BYTES_MAX: usize = 256 * 1024;
/// `otc.detached_timeout_ms`: the client gives a session up after 30 s
/// without data (its `Session::TIMEOUT`).
pub const DEFAULT_OTC_DETACHED_TIMEOUT_MS: u64 = 30_000;
/// `otc.connect_timeout_ms`.
pub const DEFAULT_OTC_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// `otc.path_out_buf_size`.
pub const DEFAULT_OTC_PATH_OUT_BUF_SIZE: usize = 512 * 1024;
/// `otc.game_out_buf_size`.
pub const DEFAULT_OTC_GAME_OUT_BUF_SIZE: usize = 256 * 1024;
/// `otc.path_frames_per_s`.
pub const DEFAULT_OTC_PATH_FRAMES_PER_S: u64 = 2_000;
/// `otc.path_frames_burst`.
pub const DEFAULT_OTC_PATH_FRAMES_BURST: u64 = 4_000;
/// `otc.session_msgs_per_s`.
pub const DEFAULT_OTC_SESSION_MSGS_PER_S: u64 = 500;
/// `otc.session_msgs_burst`.
pub const DEFAULT_OTC_SESSION_MSGS_BURST: u64 = 1_000;
/// `otc.session_bytes_per_s`.
pub const DEFAULT_OTC_SESSION_BYTES_PER_S: u64 = 128 * 1024;
/// `otc.session_bytes_burst`: at least one packet of the largest size.
pub const DEFAULT_OTC_SESSION_BYTES_BURST: u64 = 256 * 1024;

impl Default for OtcCfg {
    fn default() -> OtcCfg {
        OtcCfg {
            listen: None,
            game_host: DEFAULT_OTC_GAME_HOST.to_string(),
            allowed_ports: DEFAULT_OTC_ALLOWED_PORTS
                .iter()
                .map(|&p| p as u16)
                .collect(),
            ip_prefix: DEFAULT_OTC_IP_PREFIX,
            proxy_protocol: ProxyProtocol::Off,
            trusted_forwarders: Networks::default(),
            max_paths: DEFAULT_OTC_MAX_PATHS,
            max_sessions: DEFAULT_OTC_MAX_SESSIONS,
            sessions_per_addr_max: DEFAULT_OTC_SESSIONS_PER_ADDR_MAX,
            new_sessions_per_addr_per_s: DEFAULT_OTC_NEW_SESSIONS_PER_ADDR_PER_S,
            new_sessions_per_addr_burst: DEFAULT_OTC_NEW_SESSIONS_PER_ADDR_BURST,
            paths_per_session_max: DEFAULT_OTC_PATHS_PER_SESSION_MAX,
            sessions_per_path_max: DEFAULT_OTC_SESSIONS_PER_PATH_MAX,
            reorder_window: DEFAULT_OTC_REORDER_WINDOW,
            reorder_bytes_max: DEFAULT_OTC_REORDER_BYTES_MAX,
            unacked_bytes_max: DEFAULT_OTC_UNACKED_BYTES_MAX,
            detached_timeout_ms: DEFAULT_OTC_DETACHED_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_OTC_CONNECT_TIMEOUT_MS,
            path_out_buf_size: DEFAULT_OTC_PATH_OUT_BUF_SIZE,
            game_out_buf_size: DEFAULT_OTC_GAME_OUT_BUF_SIZE,
            path_frames_per_s: DEFAULT_OTC_PATH_FRAMES_PER_S,
            path_frames_burst: DEFAULT_OTC_PATH_FRAMES_BURST,
            session_msgs_per_s: DEFAULT_OTC_SESSION_MSGS_PER_S,
            session_msgs_burst: DEFAULT_OTC_SESSION_MSGS_BURST,
            session_bytes_per_s: DEFAULT_OTC_SESSION_BYTES_PER_S,
            session_bytes_burst: DEFAULT_OTC_SESSION_BYTES_BURST,
        }
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// An integer key of `[otc]`.
const fn int(
    name: &'static str,
    unit: Unit,
    reload: Reload,
    doc: &'static str,
    (default, min, max): (u64, u64, u64),
    store: fn(&mut super::Config, u64),
) -> Key {
    Key {
        name,
        unit,
        reload,
        doc,
        value: Value::Int {
            default,
            min,
            max,
            store,
        },
    }
}

/// The keys of `[otc]`, in the order the docs list them.
pub(super) const OTC_KEYS: [Key; 26] = [
    Key {
        name: "otc.listen",
        unit: Unit::Address,
        reload: Reload::Restart,
        doc: "Where OTClient connections are accepted; empty: the OTC front end is off.",
        value: Value::Text {
            default: Some(""),
            allowed: "IP:PORT, or empty (off)",
            store: |c, text| {
                c.otc.listen = optional_listen(text, "0.0.0.0:7162")?;
                Ok(())
            },
        },
    },
    Key {
        name: "otc.game_host",
        unit: Unit::Address,
        reload: Reload::Live,
        doc: "The game server's host; each session dials it on the port it asks for.",
        value: Value::Text {
            default: Some(DEFAULT_OTC_GAME_HOST),
            allowed: "an IP address or a DNS name",
            store: |c, text| {
                let ok = !text.is_empty()
                    && text.len() <= 253
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
                if !ok {
                    return Err(format!(
                        "expected an IP address or a host name, found \"{text}\""
                    ));
                }
                c.otc.game_host = text.to_string();
                Ok(())
            },
        },
    },
    Key {
        name: "otc.allowed_ports",
        unit: Unit::Ports,
        reload: Reload::Live,
        doc: "The game-server ports a session may ask for; any other is refused.",
        value: Value::IntList {
            default: DEFAULT_OTC_ALLOWED_PORTS,
            min: 1,
            max: 65_535,
            store: |c, ports| c.otc.allowed_ports = ports.iter().map(|&p| p as u16).collect(),
        },
    },
    Key {
        name: "otc.ip_prefix",
        unit: Unit::Boolean,
        reload: Reload::Live,
        doc: "Send 0xFFFE and the client's IPv4 address first to the game server.",
        value: Value::Bool {
            default: DEFAULT_OTC_IP_PREFIX,
            store: |c, b| c.otc.ip_prefix = b,
        },
    },
    Key {
        name: "otc.proxy_protocol",
        unit: Unit::Choice,
        reload: Reload::Restart,
        doc: "off, or required: connections start with a PROXY protocol header from a trusted forwarder.",
        value: Value::Text {
            default: Some("off"),
            allowed: "off, required",
            store: |c, text| {
                c.otc.proxy_protocol = super::schema::parse_proxy_protocol(text)?;
                Ok(())
            },
        },
    },
    Key {
        name: "otc.trusted_forwarders",
        unit: Unit::Networks,
        reload: Reload::Live,
        doc: "The networks whose connections may send a PROXY protocol header to otc.listen.",
        value: Value::List {
            default: &[],
            allowed: "networks, \"ADDR/PREFIX\" (IPv4, IPv6)",
            store: |c, items| {
                c.otc.trusted_forwarders = super::schema::parse_networks(items)?;
                Ok(())
            },
        },
    },
    int(
        "otc.max_paths",
        Unit::Count,
        Reload::Restart,
        "Most OTC connections (paths) at once; sizes the client pool.",
        (DEFAULT_OTC_MAX_PATHS as u64, 1, 1_000_000),
        |c, n| c.otc.max_paths = n as u32,
    ),
    int(
        "otc.max_sessions",
        Unit::Count,
        Reload::Restart,
        "Most sessions at once (one game-server connection each); the table of as many is allocated at start (about 240 bytes a session with its index; the figure is logged at start).",
        (DEFAULT_OTC_MAX_SESSIONS as u64, 1, 1_000_000),
        |c, n| c.otc.max_sessions = n as u32,
    ),
    int(
        "otc.sessions_per_addr_max",
        Unit::Count,
        Reload::Live,
        "Most live sessions opened from one address (IPv6: one /64).",
        (DEFAULT_OTC_SESSIONS_PER_ADDR_MAX as u64, 1, 100_000),
        |c, n| c.otc.sessions_per_addr_max = n as u32,
    ),
    int(
        "otc.new_sessions_per_addr_per_s",
        Unit::Count,
        Reload::Live,
        "Sessions one address may open a second (each dials the game server).",
        (DEFAULT_OTC_NEW_SESSIONS_PER_ADDR_PER_S, 1, 100_000),
        |c, n| c.otc.new_sessions_per_addr_per_s = n,
    ),
    int(
        "otc.new_sessions_per_addr_burst",
        Unit::Count,
        Reload::Live,
        "An address's burst of new sessions.",
        (DEFAULT_OTC_NEW_SESSIONS_PER_ADDR_BURST, 1, 1_000_000),
        |c, n| c.otc.new_sessions_per_addr_burst = n,
    ),
    int(
        "otc.paths_per_session_max",
        Unit::Count,
        Reload::Live,
        "Most paths attached to one session; one more attaching lets the oldest go.",
        (DEFAULT_OTC_PATHS_PER_SESSION_MAX as u64, 1, 64),
        |c, n| c.otc.paths_per_session_max = n as u32,
    ),
    int(
        "otc.sessions_per_path_max",
        Unit::Count,
        Reload::Live,
        "Most sessions attached to one path.",
        (DEFAULT_OTC_SESSIONS_PER_PATH_MAX as u64, 1, 1024),
        |c, n| c.otc.sessions_per_path_max = n as u32,
    ),
    int(
        "otc.reorder_window",
        Unit::Count,
        Reload::Live,
        "Most packet ids a frame may be ahead of the next expected; beyond, the session ends.",
        (DEFAULT_OTC_REORDER_WINDOW as u64, 1, 65_536),
        |c, n| c.otc.reorder_window = n as u32,
    ),
    int(
        "otc.reorder_bytes_max",
        Unit::Bytes,
        Reload::Live,
        "Most bytes of a session's packets held out of order; beyond, the session ends.",
        (DEFAULT_OTC_REORDER_BYTES_MAX as u64, 64 * KIB, 64 * MIB),
        |c, n| c.otc.reorder_bytes_max = n as usize,
    ),
    int(
        "otc.unacked_bytes_max",
        Unit::Bytes,
        Reload::Live,
        "Most bytes sent to a client and not acknowledged; beyond, the session ends.",
        (DEFAULT_OTC_UNACKED_BYTES_MAX as u64, 64 * KIB, 256 * MIB),
        |c, n| c.otc.unacked_bytes_max = n as usize,
    ),
    int(
        "otc.detached_timeout_ms",
        Unit::Millis,
        Reload::Live,
        "A session with no attached path is ended after this long.",
        (DEFAULT_OTC_DETACHED_TIMEOUT_MS, 1_000, 600_000),
        |c, n| c.otc.detached_timeout_ms = n,
    ),
    int(
        "otc.connect_timeout_ms",
        Unit::Millis,
        Reload::Live,
        "Deadline of a session's connect to the game server.",
        (DEFAULT_OTC_CONNECT_TIMEOUT_MS, 100, 60_000),
        |c, n| c.otc.connect_timeout_ms = n,
    ),
    int(
        "otc.path_out_buf_size",
        Unit::Bytes,
        Reload::Restart,
        "Most bytes queued to one path; a path that does not read is cut.",
        (DEFAULT_OTC_PATH_OUT_BUF_SIZE as u64, 70 * KIB, 256 * MIB),
        |c, n| c.otc.path_out_buf_size = n as usize,
    ),
    int(
        "otc.game_out_buf_size",
        Unit::Bytes,
        Reload::Live,
        "Most bytes queued to one game-server connection; beyond, the session ends.",
        (DEFAULT_OTC_GAME_OUT_BUF_SIZE as u64, 70 * KIB, 256 * MIB),
        |c, n| c.otc.game_out_buf_size = n as usize,
    ),
    int(
        "otc.path_frames_per_s",
        Unit::Count,
        Reload::Live,
        "Frames a path may send a second, duplicates and pings included.",
        (DEFAULT_OTC_PATH_FRAMES_PER_S, 1, 1_000_000),
        |c, n| c.otc.path_frames_per_s = n,
    ),
    int(
        "otc.path_frames_burst",
        Unit::Count,
        Reload::Live,
        "A path's burst of frames.",
        (DEFAULT_OTC_PATH_FRAMES_BURST, 1, 10_000_000),
        |c, n| c.otc.path_frames_burst = n,
    ),
    int(
        "otc.session_msgs_per_s",
        Unit::Count,
        Reload::Live,
        "Packets a session may deliver to the game server a second.",
        (DEFAULT_OTC_SESSION_MSGS_PER_S, 1, 1_000_000),
        |c, n| c.otc.session_msgs_per_s = n,
    ),
    int(
        "otc.session_msgs_burst",
        Unit::Count,
        Reload::Live,
        "A session's burst of packets.",
        (DEFAULT_OTC_SESSION_MSGS_BURST, 1, 10_000_000),
        |c, n| c.otc.session_msgs_burst = n,
    ),
    int(
        "otc.session_bytes_per_s",
        Unit::Bytes,
        Reload::Live,
        "Bytes a session may deliver to the game server a second.",
        (DEFAULT_OTC_SESSION_BYTES_PER_S, KIB, 1 << 30),
        |c, n| c.otc.session_bytes_per_s = n,
    ),
    int(
        "otc.session_bytes_burst",
        Unit::Bytes,
        Reload::Live,
        "A session's burst of bytes; at least one largest packet.",
        (DEFAULT_OTC_SESSION_BYTES_BURST, 64 * KIB, 1 << 30),
        |c, n| c.otc.session_bytes_burst = n,
    ),
];
