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
pub mod refusals;
pub mod reservations;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info};
use mio::net::UnixStream;

use crate::com::{ConnRef, PoolId};
use crate::config::{Config, Networks, ProxyProtocol, Secret, ShardEntry};
use crate::conn::thread::IoCfg;
use crate::conn::{AnyPool, Disconnected, Pool, PoolCfg};
use crate::cryptchan::{KeyPair, PublicKey};
use crate::netpoll;
use crate::runtime::{Node, Runtime, RuntimeCfg, Server};
use crate::secpool::SecpoolConfig;
use crate::shard::{SLOTS_PER_LINK, ShardLinks};
use cl::{ClSession, StageKind};
use limits::{AddrLimits, AddrTable, Rate, TokenBucket};
use link::ShardLink;
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

/// The proxy's main-thread state: every table.
#[derive(Debug)]
pub struct Proxy {
    clients: Pool<ClSession>,
    shards: Pool<ShardLink>,
    links: ShardLinks,
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
    gone_shards: Vec<Disconnected<ShardLink>>,
    scratch_clients: Vec<ConnRef>,
    scratch_expired: Vec<(ConnRef, u32)>,
}

/// The client thread's sizes, from `proxy.cfg`.
fn client_io_cfg(cfg: &Config) -> IoCfg {
    IoCfg {
        pool: PoolId::Client,
        max_conns: cfg.client.max_clients,
        read_size: cfg.client.read_size,
        reads_per_wakeup: cfg.client.reads_per_wakeup,
        accepts_per_wakeup: cfg.client.accepts_per_wakeup,
        netpoll_events_max: cfg.runtime.netpoll_events_max,
        io_batch_max: cfg.runtime.io_batch_max,
        read_ahead_max: cfg.client.read_ahead_max,
        send_buffer: cfg.client.socket_send_buffer,
    }
}

/// The shard thread's sizes: two connection slots per `shards.cfg` line
/// (see `shard::SLOTS_PER_LINK`).
fn shard_io_cfg(cfg: &Config, n_shards: usize) -> IoCfg {
    IoCfg {
        pool: PoolId::Shard,
        max_conns: (n_shards * SLOTS_PER_LINK) as u32,
        read_size: cfg.shard.read_size,
        reads_per_wakeup: cfg.shard.reads_per_wakeup,
        accepts_per_wakeup: 0,
        netpoll_events_max: cfg.runtime.netpoll_events_max,
        io_batch_max: cfg.runtime.io_batch_max,
        // The shards' links carry every player's traffic: not bounded.
        read_ahead_max: 0,
        send_buffer: 0,
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
    let listener = netpoll::listen(cfg.proxy.listen, cfg.client.listen_backlog).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot listen on {}: {err}", cfg.proxy.listen),
        )
    })?;
    let runtime = Runtime::start(
        &runtime_cfg(&cfg, shard_entries.len()),
        vec![listener],
        signals,
    )?;
    let keys = Arc::new(KeyPair::generate());
    info!(
        "listening for clients on {} (public address {}), max_clients {}, key {}",
        runtime.local_addr(0),
        cfg.proxy.public_address,
        cfg.client.max_clients,
        keys.public()
    );
    let server = Proxy::from_config(&cfg, shard_entries, keys, Instant::now());
    Ok(Node { server, runtime })
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
            max_conns: cfg.client.max_clients,
            out_buf_size: cfg.client.out_buf_size,
            idle_timeout: Some(Duration::from_millis(cfg.client.idle_timeout_ms)),
            connect_timeout,
        };
        let shards = PoolCfg {
            max_conns: (shard_entries.len() * SLOTS_PER_LINK) as u32,
            out_buf_size: cfg.shard.out_buf_size,
            idle_timeout: None,
            connect_timeout,
        };
        Proxy {
            clients: Pool::new(PoolId::Client, &clients, now),
            shards: Pool::new(PoolId::Shard, &shards, now),
            links: ShardLinks::new(shard_entries, settings.connect_retry, now),
            reservations: Reservations::default(),
            addrs: AddrTable::new(settings.addr_limits),
            handshakes: TokenBucket::full(settings.handshakes, now),
            n_playing: 0,
            keys,
            // `proxy.listen`, the one listener: players, from the handshake
            // on, or from a forwarder's PROXY protocol header.
            listeners: vec![match cfg.client.proxy_protocol {
                ProxyProtocol::Off => cl::PLAYER_STAGES,
                ProxyProtocol::Required => cl::PROXIED_PLAYER_STAGES,
            }],

            settings,
            stats: ProxyStats::default(),
            next_stats: now + STATS_EVERY,
            next_refusal_summary: now + refusals::SUMMARY_EVERY,
            gone_clients: Vec::new(),
            gone_shards: Vec::new(),
            scratch_clients: Vec::new(),
            scratch_expired: Vec::new(),
        }
    }

    /// The key this proxy presents to players and shards.
    pub fn public_key(&self) -> PublicKey {
        self.keys.public()
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        self.stats
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

    fn on_connected(&mut self, conn: ConnRef, _now: Instant) {
        self.shard_connected(conn);
    }

    fn on_read(&mut self, conn: ConnRef, data: &mut [u8], now: Instant) {
        match conn.pool {
            PoolId::Client => self.cl_read(conn, data, now),
            PoolId::Shard => self.shard_read(conn, data, now),
        }
    }

    /// Once a second: handshake deadlines, reservation expiry, and now and
    /// then a line per class of refusal and the statistics.
    fn on_tick(&mut self, now: Instant) {
        self.expire_handshakes(now);
        self.addrs.prune(now);
        if now >= self.next_refusal_summary {
            for line in self.stats.refusals.take_summary() {
                info!("{line}");
            }
            self.next_refusal_summary = now + refusals::SUMMARY_EVERY;
        }
        self.expire_reservations(now);
        if now >= self.next_stats {
            self.log_stats();
            self.next_stats = now + STATS_EVERY;
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.links.next_timer()
    }

    fn on_timers(&mut self, now: Instant) {
        self.links.connect_due(&mut self.shards, now);
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
                self.shard_gone(gone, now);
            }
            self.gone_shards = shards;
            let mut clients = std::mem::take(&mut self.gone_clients);
            clients.extend(self.clients.take_disconnected());
            for gone in clients.drain(..) {
                self.client_gone(gone);
            }
            self.gone_clients = clients;
        }
        error!("settle: disconnects still pending after {SETTLE_ROUNDS_MAX} rounds (bug: a loop)");
    }
}
