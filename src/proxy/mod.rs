//! The proxy's behaviour (thesis §3.8), on the main thread: what it does with
//! every event of the client and shard threads. [`Proxy`] is a
//! [`Server`]: it owns all state and touches no socket, so the same code runs
//! under the runtime in `muta-proxy` and under a test harness with a virtual
//! clock (`harness.rs`).
//!
//! - [`cl`] (thesis §3.5.2 `cl_accept`, `cl_read`, §3.8.3, §3.8.4): a
//!   player's connection passes through the stages its listener chooses:
//!   today the cryptchan handshake (entering it runs the admission checks on
//!   the connection's effective address: is it one a shard announced?), the
//!   auth proof, checked against the shard's reservation, then play: every
//!   frame decrypted in place, filtered by the message table and forwarded
//!   in `FPROXY_MSG_PLAYER_PACKET`.
//! - [`link`] (thesis §3.5.3, §3.8.1, §3.8.2): each shard link's handshake
//!   and `FPROXY_MSG_LOGIN`; the reservations of `TPROXY_MSG_OPENED_SOCKET`;
//!   the player packets and closes the shard sends.
//! - [`reservations`]: the reserved slots, their tokens and the announced
//!   addresses, under one owner.
//!
//! Routing state has one owner each: a player's binding to a shard socket is
//! in its client session ([`cl::ClSession`]); the players of a shard link are
//! in that link's session ([`link::ShardLink`]); reservations are in
//! [`reservations::Reservations`]. When either side of a binding goes,
//! [`Server::settle`] tells the other: a player who left or broke a rule
//! becomes `FPROXY_MSG_CLOSE_SOCKET`; a lost shard disconnects its players
//! and releases its reservations. The links themselves are kept up by
//! [`ShardLinks`] (a connect attempt every 2 s while a shard is down).

pub mod cl;
#[cfg(test)]
mod harness;
pub mod limits;
pub mod link;
mod metrics;
pub mod ops;
pub mod otc;
pub mod refusals;
pub mod reservations;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info};
use mio::net::UnixStream;

use crate::admin::{self, AdminCfg, AdminThread, Published};
use crate::com::{ConnRef, PoolId};
use crate::config::{Config, Networks, ProxyProtocol, Secret, ShardEntry};
use crate::conn::thread::IoCfg;
use crate::conn::{AnyPool, Disconnected, Pool, PoolCfg, Session};
use crate::cryptchan::{KeyPair, PublicKey};
use crate::netpoll;
use crate::runtime::{Node, Runtime, RuntimeCfg, Server};
use crate::secpool::SecpoolConfig;
use crate::shard::{SLOTS_PER_LINK, ShardLinks};
use cl::{ClSession, StageKind};
use limits::{AddrLimits, AddrTable, Rate, TokenBucket};
use link::ShardLink;
use otc::{GameConn, Otc, OtcSettings};
use refusals::Refusals;
use reservations::Reservations;

/// How often the proxy logs a line of statistics.
pub const STATS_EVERY: Duration = Duration::from_secs(30);
/// Most rounds of [`Server::settle`] per iteration: each round handles the
/// disconnects the previous one caused (a lost shard's players), which end
/// in two; more means a loop, logged as a bug.
const SETTLE_ROUNDS_MAX: usize = 8;

/// The settings the protocol layer uses, from `proxy.cfg`.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// What the shard tells players (`FPROXY_MSG_LOGIN`).
    pub public_address: String,
    /// Sent in `FPROXY_MSG_LOGIN`.
    pub password: Secret,
    /// Reservations plus connections never exceed this.
    pub max_clients: u32,
    /// Deadline from accept to a valid auth proof.
    pub handshake_timeout: Duration,
    /// Lifetime of an unclaimed reservation.
    pub reservation_timeout: Duration,
    /// Refuse clients from addresses no shard announced.
    pub require_announced_ip: bool,
    /// Where PROXY protocol headers are taken from.
    pub trusted_forwarders: Networks,
    /// Deadline from accept to a complete PROXY protocol header.
    pub proxy_header_timeout: Duration,
    /// The per-address limits.
    pub addr_limits: AddrLimits,
    /// Handshakes, all clients together.
    pub handshakes: Rate,
    /// Most connections before their auth proof, unless announced.
    pub unauthenticated_max: usize,
    /// Each player's messages.
    pub player_msgs: Rate,
    /// Each player's bytes.
    pub player_bytes: Rate,
    /// Bytes of a shard link's output players may not fill: room for the
    /// link's own messages (closes, replies) when it is backed up.
    pub shard_out_reserve: usize,
    /// Largest client frame plus its length.
    pub client_in_buf_size: usize,
    /// Largest shard frame plus its length.
    pub shard_in_buf_size: usize,
    /// Time between connect attempts to a shard.
    pub connect_retry: Duration,
    /// Client addresses `/status` lists.
    pub status_addrs_max: usize,
    /// From a shard link's connect to its `TPROXY_MSG_LOGIN_RESULT`.
    pub shard_login_timeout: Duration,
    /// Between heartbeats on a ready link (zero: none).
    pub heartbeat: Duration,
    /// A heartbeat unanswered this long drops the link.
    pub heartbeat_timeout: Duration,
}

impl ProxySettings {
    /// From `proxy.cfg`.
    pub fn from_config(cfg: &Config) -> ProxySettings {
        let c = &cfg.client;
        ProxySettings {
            public_address: cfg.proxy.public_address.clone(),
            password: cfg.shard.password.clone(),
            max_clients: cfg.client.max_clients,
            handshake_timeout: Duration::from_millis(cfg.client.handshake_timeout_ms),
            reservation_timeout: Duration::from_millis(cfg.client.reservation_timeout_ms),
            require_announced_ip: cfg.client.require_announced_ip,
            trusted_forwarders: cfg.client.trusted_forwarders.clone(),
            proxy_header_timeout: Duration::from_millis(cfg.client.proxy_header_timeout_ms),
            addr_limits: AddrLimits {
                conns_max: c.max_conns_per_addr,
                new_conns: Rate {
                    per_s: c.new_conns_per_addr_per_s,
                    burst: c.new_conns_per_addr_burst,
                },
                entries_max: c.addr_table_max,
            },
            handshakes: Rate {
                per_s: c.handshakes_per_s,
                burst: c.handshakes_burst,
            },
            unauthenticated_max: (c.max_clients as usize * c.unauthenticated_max_pct as usize)
                .div_ceil(100),
            player_msgs: Rate {
                per_s: c.player_msgs_per_s,
                burst: c.player_msgs_burst,
            },
            player_bytes: Rate {
                per_s: c.player_bytes_per_s,
                burst: c.player_bytes_burst,
            },
            shard_out_reserve: cfg.shard_out_reserve(),
            client_in_buf_size: cfg.client.in_buf_size,
            shard_in_buf_size: cfg.shard.in_buf_size,
            connect_retry: Duration::from_millis(cfg.shard.connect_retry_ms),
            status_addrs_max: cfg.admin.status_addrs_max as usize,
            shard_login_timeout: Duration::from_millis(cfg.shard.login_timeout_ms),
            heartbeat: Duration::from_millis(cfg.shard.heartbeat_ms),
            heartbeat_timeout: Duration::from_millis(cfg.shard.heartbeat_timeout_ms),
        }
    }
}

/// Counters for the periodic statistics line and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections refused before they played, by class.
    pub refusals: Refusals,
    /// Players who passed the auth proof.
    pub authenticated: u64,
    /// Auth proofs refused.
    pub auth_failed: u64,
    /// Players disconnected by the packet filter.
    pub filtered: u64,
    /// Client messages forwarded to shards.
    pub msgs_to_shards: u64,
    /// Player packets forwarded to clients.
    pub packets_to_clients: u64,
}

/// What a connection of the shard thread's pool is: a link to a MUTA shard,
/// or an OTC session's connection to its game server.
#[derive(Debug, Default)]
pub enum Outbound {
    /// Opened by `ShardLinks`, not connected yet: a shard link once it is.
    #[default]
    Connecting,
    /// A shard link (boxed: a slot of the pool is as large as its largest
    /// kind, and there are far more game connections than links).
    Link(Box<ShardLink>),
    /// An OTC session's game connection.
    Game(GameConn),
}

impl Session for Outbound {
    fn before_flush(&mut self, out: &mut Vec<u8>) {
        if let Outbound::Link(link) = self {
            link.before_flush(out);
        }
    }
}

impl Outbound {
    /// The shard link, if this is one.
    pub fn link(&self) -> Option<&ShardLink> {
        match self {
            Outbound::Link(link) => Some(link),
            Outbound::Connecting | Outbound::Game(_) => None,
        }
    }

    /// The shard link, if this is one.
    pub fn link_mut(&mut self) -> Option<&mut ShardLink> {
        match self {
            Outbound::Link(link) => Some(link),
            Outbound::Connecting | Outbound::Game(_) => None,
        }
    }

    /// The OTC session of a game connection.
    fn game_session(&self) -> Option<u32> {
        match self {
            Outbound::Game(game) => Some(game.session),
            Outbound::Connecting | Outbound::Link(_) => None,
        }
    }
}

/// The proxy's main-thread state: every table.
#[derive(Debug)]
pub struct Proxy {
    clients: Pool<ClSession>,
    shards: Pool<Outbound>,
    links: ShardLinks,
    /// The OTC front end's sessions.
    otc: Otc,
    reservations: Reservations,
    /// Connections and new-connection rates by address.
    addrs: AddrTable,
    /// Handshakes, all clients together.
    handshakes: TokenBucket,
    /// Authenticated players (in `Play`): the rest of the client pool has
    /// not authenticated.
    n_playing: usize,
    keys: Arc<KeyPair>,
    settings: ProxySettings,
    /// The stages of each listener's connections, by listener index.
    listeners: Vec<&'static [StageKind]>,
    stats: ProxyStats,
    next_stats: Instant,
    next_refusal_summary: Instant,
    /// Reused by `settle` and the timers, so they allocate nothing.
    gone_clients: Vec<Disconnected<ClSession>>,
    gone_shards: Vec<Disconnected<Outbound>>,
    scratch_clients: Vec<ConnRef>,
    scratch_expired: Vec<(ConnRef, u32)>,
    /// The files and the configuration in force, for SIGHUP (`ops`).
    running: Option<ops::Running>,
    /// The drain has begun: no new connection or login is taken.
    draining: bool,
    /// `proxy.drain_timeout_ms`.
    drain_timeout: Duration,
    /// New per-wake-up bounds for the I/O threads, after a reload.
    io_tuning: Option<crate::runtime::IoTuning>,
    /// Shard links removed by a reload, closing once their players are gone.
    removing: Vec<ops::Removing>,
    /// Where the metrics snapshot goes, if `admin.listen` is set.
    admin: Option<Arc<Published>>,
    /// The admin thread, stopped and joined when the proxy is dropped (a
    /// handle only: the proxy never touches its socket).
    admin_thread: Option<AdminThread>,
}

/// The client thread's sizes, from `proxy.cfg`.
fn client_io_cfg(cfg: &Config) -> IoCfg {
    IoCfg {
        pool: PoolId::Client,
        max_conns: client_slots(cfg),
        read_size: cfg.client.read_size,
        reads_per_wakeup: cfg.client.reads_per_wakeup,
        accepts_per_wakeup: cfg.client.accepts_per_wakeup,
        netpoll_events_max: cfg.runtime.netpoll_events_max,
        io_batch_max: cfg.runtime.io_batch_max,
        read_ahead_max: cfg.client.read_ahead_max,
        send_buffer: cfg.client.socket_send_buffer,
        user_timeout_ms: cfg.client.tcp_user_timeout_ms,
    }
}

/// The client pool's slots: the MUTA players' (`client.max_clients`, if
/// their listener is open) and the OTC paths' (`otc.max_paths`, if
/// `otc.listen` is set).
pub fn client_slots(cfg: &Config) -> u32 {
    let otc = if cfg.otc.listen.is_some() {
        cfg.otc.max_paths
    } else {
        0
    };
    cfg.client.max_clients + otc
}

/// The OTC session table's slots: `otc.max_sessions` if `otc.listen` is
/// set, else none (a MUTA-only proxy allocates no table).
pub fn otc_session_slots(cfg: &Config) -> usize {
    if cfg.otc.listen.is_some() {
        cfg.otc.max_sessions as usize
    } else {
        0
    }
}

/// The shard pool's slots: two per shard link (`shard.max_shards` of them,
/// so a reload can add shards; none if the proxy starts without shards, as
/// its MUTA listener is then not open), one per OTC session.
pub fn shard_slots(cfg: &Config, n_shards: usize) -> u32 {
    let otc = if cfg.otc.listen.is_some() {
        cfg.otc.max_sessions
    } else {
        0
    };
    let links = if n_shards == 0 {
        0
    } else {
        n_shards.max(cfg.shard.max_shards as usize)
    };
    (links * SLOTS_PER_LINK) as u32 + otc
}

/// The shard thread's sizes: two connection slots per `shards.cfg` line
/// (see `shard::SLOTS_PER_LINK`).
fn shard_io_cfg(cfg: &Config, n_shards: usize) -> IoCfg {
    IoCfg {
        pool: PoolId::Shard,
        max_conns: shard_slots(cfg, n_shards),
        read_size: cfg.shard.read_size,
        reads_per_wakeup: cfg.shard.reads_per_wakeup,
        accepts_per_wakeup: 0,
        netpoll_events_max: cfg.runtime.netpoll_events_max,
        io_batch_max: cfg.runtime.io_batch_max,
        // The shards' links carry every player's traffic: not bounded.
        read_ahead_max: 0,
        send_buffer: 0,
        // Outbound links have TCP keepalive instead (`conn::thread`).
        user_timeout_ms: 0,
    }
}

/// The runtime `muta-proxy` runs on, from `proxy.cfg`.
pub fn runtime_cfg(cfg: &Config, n_shards: usize) -> RuntimeCfg {
    RuntimeCfg {
        secpool: SecpoolConfig {
            bytes_max: cfg.runtime.secpool_bytes_max,
            block_size_max: cfg.secpool_block_size_max(),
            free_blocks_max: cfg.runtime.secpool_free_blocks_max,
        },
        event_buffer_capacity: cfg.runtime.event_buffer_capacity,
        event_wait_max: cfg.runtime.event_wait_max,
        client: client_io_cfg(cfg),
        shard: Some(shard_io_cfg(cfg, n_shards)),
    }
}

/// Binds the listener, starts the runtime (the client thread, also polling
/// `signals`, and the shard thread) and the proxy with a fresh key pair
/// (thesis `com_init`, `cl_start`, `shard_start`).
pub fn start(
    cfg: Config,
    shard_entries: &[ShardEntry],
    signals: Vec<(i32, UnixStream)>,
) -> io::Result<Node<Proxy>> {
    crate::cryptchan::init().map_err(|e| io::Error::other(e.to_string()))?;
    let bind = |addr: SocketAddr| {
        netpoll::listen(addr, cfg.client.listen_backlog)
            .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))
    };
    let mut listeners = Vec::new();
    if !shard_entries.is_empty() {
        listeners.push(bind(cfg.proxy.listen)?);
    }
    if let Some(addr) = cfg.otc.listen {
        listeners.push(bind(addr)?);
    }
    let runtime = Runtime::start(&runtime_cfg(&cfg, shard_entries.len()), listeners, signals)?;
    let keys = Arc::new(KeyPair::generate());
    let mut i = 0;
    if !shard_entries.is_empty() {
        info!(
            "listening for clients on {} (public address {}), max_clients {}, key {}",
            runtime.local_addr(i),
            cfg.proxy.public_address,
            cfg.client.max_clients,
            keys.public()
        );
        i += 1;
    }
    if cfg.otc.listen.is_some() {
        info!(
            "listening for OTC clients on {} (game server {}, ports {:?}), max_paths {}, \
             max_sessions {}",
            runtime.local_addr(i),
            cfg.otc.game_host,
            cfg.otc.allowed_ports,
            cfg.otc.max_paths,
            cfg.otc.max_sessions
        );
    }
    let mut server = Proxy::from_config(&cfg, shard_entries, keys, Instant::now());
    if let Some(addr) = cfg.admin.listen {
        let listener = netpoll::listen(addr, 64).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot listen on {addr} (admin): {err}"),
            )
        })?;
        let published = Arc::new(Published::default());
        let admin_cfg = AdminCfg {
            max_conns: cfg.admin.max_conns as usize,
            request_timeout: Duration::from_millis(cfg.admin.request_timeout_ms),
        };
        server.admin_thread = Some(admin::admin_start(listener, admin_cfg, published.clone())?);
        server.admin = Some(published);
    }
    Ok(Node { server, runtime })
}

/// The stages of each listener's connections, in the order `start` binds
/// them: the MUTA players' if there are shards, then the OTC paths' if
/// `otc.listen` is set.
fn listener_stages(cfg: &Config, n_shards: usize) -> Vec<&'static [StageKind]> {
    let mut stages = Vec::new();
    if n_shards > 0 {
        stages.push(match cfg.client.proxy_protocol {
            ProxyProtocol::Off => cl::PLAYER_STAGES,
            ProxyProtocol::Required => cl::PROXIED_PLAYER_STAGES,
        });
    }
    if cfg.otc.listen.is_some() {
        stages.push(match cfg.otc.proxy_protocol {
            ProxyProtocol::Off => cl::OTC_PATH_STAGES,
            ProxyProtocol::Required => cl::PROXIED_OTC_PATH_STAGES,
        });
    }
    stages
}

impl Proxy {
    /// The proxy's state for `proxy.cfg`, with its key pair, before any
    /// event: empty pools, the first connect attempts due at `now`.
    pub fn from_config(
        cfg: &Config,
        shard_entries: &[ShardEntry],
        keys: Arc<KeyPair>,
        now: Instant,
    ) -> Proxy {
        let settings = ProxySettings::from_config(cfg);
        let connect_timeout = Duration::from_millis(cfg.shard.connect_timeout_ms);
        let clients = PoolCfg {
            max_conns: client_slots(cfg),
            out_buf_size: cfg.client.out_buf_size,
            idle_timeout: Some(Duration::from_millis(cfg.client.idle_timeout_ms)),
            connect_timeout,
        };
        let shards = PoolCfg {
            max_conns: shard_slots(cfg, shard_entries.len()),
            out_buf_size: cfg.shard.out_buf_size,
            idle_timeout: None,
            connect_timeout,
        };
        let listeners = listener_stages(cfg, shard_entries.len());
        let mut clients = Pool::new(PoolId::Client, &clients, now);
        for (i, stages) in listeners.iter().enumerate() {
            let (out_max, max_conns) = if stages.contains(&StageKind::OtcPath) {
                (cfg.otc.path_out_buf_size, cfg.otc.max_paths)
            } else {
                (cfg.client.out_buf_size, cfg.client.max_clients)
            };
            clients.set_listener_limits(i as u32, out_max, max_conns);
        }
        Proxy {
            clients,
            shards: Pool::new(PoolId::Shard, &shards, now),
            links: ShardLinks::new(shard_entries, settings.connect_retry, now),
            otc: Otc::new(OtcSettings::from_config(cfg), otc_session_slots(cfg)),
            reservations: Reservations::default(),
            addrs: AddrTable::new(settings.addr_limits),
            handshakes: TokenBucket::full(settings.handshakes, now),
            n_playing: 0,
            keys,
            listeners,
            settings,
            stats: ProxyStats::default(),
            next_stats: now + STATS_EVERY,
            next_refusal_summary: now + refusals::SUMMARY_EVERY,
            gone_clients: Vec::new(),
            gone_shards: Vec::new(),
            scratch_clients: Vec::new(),
            scratch_expired: Vec::new(),
            running: None,
            draining: false,
            drain_timeout: Duration::from_millis(cfg.proxy.drain_timeout_ms),
            io_tuning: None,
            removing: Vec::new(),
            admin: None,
            admin_thread: None,
        }
    }

    /// The MUTA players' listener, if it is open.
    fn muta_listener(&self) -> Option<u32> {
        self.listeners
            .iter()
            .position(|stages| !stages.contains(&StageKind::OtcPath))
            .map(|i| i as u32)
    }

    /// The key this proxy presents to players and shards.
    pub fn public_key(&self) -> PublicKey {
        self.keys.public()
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        self.stats
    }

    /// The OTC session of a game connection of the shard pool.
    fn game_session(&self, conn: ConnRef) -> Option<u32> {
        if conn.pool != PoolId::Shard {
            return None;
        }
        self.shards.get(conn)?.session.game_session()
    }

    /// Client-pool slots the MUTA players hold (the OTC paths' are counted
    /// apart, against `otc.max_paths`).
    fn muta_clients_in_use(&self) -> usize {
        self.clients.in_use().saturating_sub(self.otc.n_paths())
    }

    /// The OTC front end's counters.
    pub fn otc_stats(&self) -> otc::OtcStats {
        self.otc.stats()
    }

    /// Live OTC sessions.
    pub fn otc_sessions(&self) -> usize {
        self.otc.n_sessions()
    }

    /// Reservations held, all shards together.
    pub fn n_reserved(&self) -> usize {
        self.reservations.len()
    }

    fn log_stats(&self) {
        let s = &self.stats;
        let authed = self
            .clients
            .iter_live()
            .filter(|(_, c)| matches!(c.session.stage, cl::Stage::Play(_)))
            .count();
        let ready = self.links.up().filter(|&l| self.is_ready(l)).count();
        info!(
            "stats: {} clients ({authed} authenticated), {} reservations, shards {ready}/{} ready; \
             totals: {} authenticated, {} auth failures, {} filtered, {} refused, \
             {} messages to shards, {} packets to clients",
            self.clients.in_use(),
            self.reservations.len(),
            self.links.len(),
            s.authenticated,
            s.auth_failed,
            s.filtered,
            s.refusals.sum(),
            s.msgs_to_shards,
            s.packets_to_clients,
        );
    }
}

impl Server for Proxy {
    fn pools(&mut self) -> (&mut dyn AnyPool, Option<&mut dyn AnyPool>) {
        (&mut self.clients, Some(&mut self.shards))
    }

    fn on_accept(&mut self, listener: u32, peer: SocketAddr, now: Instant) -> Option<ConnRef> {
        self.cl_accept(listener, peer, now)
    }

    fn on_connected(&mut self, conn: ConnRef, now: Instant) {
        match self.game_session(conn) {
            Some(session) => self.otc_game_connected(conn, session),
            None => self.shard_connected(conn, now),
        }
    }

    fn on_read(&mut self, conn: ConnRef, data: &mut [u8], now: Instant) {
        match conn.pool {
            PoolId::Client => self.cl_read(conn, data, now),
            PoolId::Shard => match self.game_session(conn) {
                Some(session) => self.otc_game_read(conn, session, data, now),
                None => self.shard_read(conn, data, now),
            },
        }
    }

    /// Once a second: handshake deadlines, reservation expiry, and now and
    /// then a line per class of refusal and the statistics.
    fn on_tick(&mut self, now: Instant) {
        self.expire_handshakes(now);
        self.otc_tick(now);
        self.addrs.prune(now);
        if now >= self.next_refusal_summary {
            for line in self.stats.refusals.take_summary() {
                info!("{line}");
            }
            self.next_refusal_summary = now + refusals::SUMMARY_EVERY;
        }
        self.expire_reservations(now);
        self.shard_heartbeats(now);
        self.close_removed_links(now);
        if now >= self.next_stats {
            if !self.links.is_empty() {
                self.log_stats();
            }
            if self.otc.n_paths() > 0 || self.otc.n_sessions() > 0 || self.links.is_empty() {
                self.otc_log_stats();
            }
            self.next_stats = now + STATS_EVERY;
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.links.next_timer()
    }

    fn on_timers(&mut self, now: Instant) {
        self.links.connect_due(&mut self.shards, now);
    }

    fn on_hangup(&mut self, _now: Instant) -> Option<crate::runtime::Job> {
        self.proxy_hangup()
    }

    fn on_job_done(&mut self, result: Box<dyn std::any::Any + Send>, now: Instant) {
        self.proxy_reloaded(result, now);
    }

    fn take_io_tuning(&mut self) -> Option<crate::runtime::IoTuning> {
        self.io_tuning.take()
    }

    fn on_drain(&mut self, now: Instant) -> Duration {
        self.proxy_drain(now)
    }

    fn drained(&self) -> bool {
        self.proxy_drained()
    }

    fn publishes(&self) -> bool {
        self.admin.is_some()
    }

    fn publish(&mut self, rt: &crate::runtime::RuntimeStats, now: Instant) {
        let snapshot = self.snapshot(rt, now);
        if let Some(admin) = &self.admin
            && !admin.publish(snapshot)
        {
            log::debug!("metrics: the admin thread held the snapshot; this one is skipped");
        }
    }

    /// Shutdown begins: the players are disconnected, so `settle` tells their
    /// shards.
    fn on_shutdown(&mut self, _now: Instant) {
        info!(
            "shutdown: {} client(s), {}/{} shard(s) connected",
            self.clients.in_use(),
            self.links.up().count(),
            self.links.len()
        );
        self.clients
            .disconnect_all(crate::conn::DisconnectReason::Shutdown);
    }

    /// Lets the protocol react to every disconnect since the last call: a
    /// player gone becomes `FPROXY_MSG_CLOSE_SOCKET` (thesis
    /// `shard_delete_client_info`); a shard gone takes its players with it.
    fn settle(&mut self, now: Instant) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            if !self.shards.has_disconnected() && !self.clients.has_disconnected() {
                return;
            }
            let mut shards = std::mem::take(&mut self.gone_shards);
            shards.extend(self.shards.take_disconnected());
            for gone in shards.drain(..) {
                match gone.session {
                    Outbound::Link(link) => self.shard_gone(gone.conn, &gone.reason, *link, now),
                    Outbound::Connecting => {
                        let never = ShardLink::default();
                        self.shard_gone(gone.conn, &gone.reason, never, now);
                    }
                    Outbound::Game(game) => {
                        self.otc_game_gone(gone.conn, game.session, &gone.reason, now);
                    }
                }
            }
            self.gone_shards = shards;
            let mut clients = std::mem::take(&mut self.gone_clients);
            clients.extend(self.clients.take_disconnected());
            for gone in clients.drain(..) {
                self.client_gone(gone, now);
            }
            self.gone_clients = clients;
        }
        error!("settle: disconnects still pending after {SETTLE_ROUNDS_MAX} rounds (bug: a loop)");
    }
}
