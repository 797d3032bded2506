//! The `[admin]` section of `proxy.cfg` (no thesis section: a port decision
//! for operators, `docs/metrics.md`): where the admin endpoint listens, if
//! anywhere, and its bounds.

use std::net::SocketAddr;

use super::schema::{Key, Reload, Unit, Value, optional_listen};

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminCfg {
    /// Where `/metrics`, `/status` and `/healthz` are served; `None`: off.
    pub listen: Option<SocketAddr>,
    /// Connections to the endpoint at once.
    pub max_conns: u32,
    /// From accept to the last byte of the answer.
    pub request_timeout_ms: u64,
    /// Client addresses `/status` lists (the busiest first).
    pub status_addrs_max: u32,
}

/// `admin.max_conns`.
pub const DEFAULT_ADMIN_MAX_CONNS: u32 = 16;
/// `admin.request_timeout_ms`.
pub const DEFAULT_ADMIN_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// `admin.status_addrs_max`.
pub const DEFAULT_ADMIN_STATUS_ADDRS_MAX: u32 = 1_000;

impl Default for AdminCfg {
    fn default() -> AdminCfg {
        AdminCfg {
            listen: None,
            max_conns: DEFAULT_ADMIN_MAX_CONNS,
            request_timeout_ms: DEFAULT_ADMIN_REQUEST_TIMEOUT_MS,
            status_addrs_max: DEFAULT_ADMIN_STATUS_ADDRS_MAX,
        }
    }
}

/// The keys of `[admin]`, in the order the docs list them.
pub(super) const ADMIN_KEYS: [Key; 4] = [
    Key {
        name: "admin.listen",
        unit: Unit::Address,
        reload: Reload::Restart,
        doc: "Where /metrics, /status and /healthz are served (plain HTTP: keep it on loopback or a private network); empty: off.",
        value: Value::Text {
            default: Some(""),
            allowed: "IP:PORT, or empty (off)",
            store: |c, text| {
                c.admin.listen = optional_listen(text, "127.0.0.1:9702")?;
                Ok(())
            },
        },
    },
    Key {
        name: "admin.max_conns",
        unit: Unit::Count,
        reload: Reload::Restart,
        doc: "Connections to the admin endpoint at once; more are closed at once.",
        value: Value::Int {
            default: DEFAULT_ADMIN_MAX_CONNS as u64,
            min: 1,
            max: 1024,
            store: |c, n| c.admin.max_conns = n as u32,
        },
    },
    Key {
        name: "admin.request_timeout_ms",
        unit: Unit::Millis,
        reload: Reload::Restart,
        doc: "From accept to the last byte of the answer; a slower scrape is closed.",
        value: Value::Int {
            default: DEFAULT_ADMIN_REQUEST_TIMEOUT_MS,
            min: 100,
            max: 60_000,
            store: |c, n| c.admin.request_timeout_ms = n,
        },
    },
    Key {
        name: "admin.status_addrs_max",
        unit: Unit::Count,
        reload: Reload::Live,
        doc: "Client addresses /status lists with their connection counts, the busiest first.",
        value: Value::Int {
            default: DEFAULT_ADMIN_STATUS_ADDRS_MAX as u64,
            min: 0,
            max: 100_000,
            store: |c, n| c.admin.status_addrs_max = n as u32,
        },
    },
];
