//! The proxy's behaviour (thesis §3.8), on the main thread: everything the
//! event loop does with the events of the client and shard threads.
//!
//! - [`cl`] (thesis §3.5.2 `cl_accept`, `cl_read`, §3.8.3, §3.8.4): a
//!   player's connection is refused at once if no shard announced its IP; then
//!   the cryptchan handshake, then the auth proof, checked against the
//!   shard's reservation (token compared in constant time); then every frame
//!   is decrypted in place, filtered by the message table and forwarded to the
//!   shard in `FPROXY_MSG_PLAYER_PACKET`.
//! - [`link`] (thesis §3.5.3, §3.8.1, §3.8.2): each shard link's handshake and
//!   `FPROXY_MSG_LOGIN`; the reservations of `TPROXY_MSG_OPENED_SOCKET`; the
//!   player packets and closes the shard sends.
//!
//! Routing state has one owner each: a player's binding to a shard socket is
//! in its client session ([`cl::ClSession`]); a shard's sockets and
//! reservations are in that shard link's session ([`link::ShardLink`]), so
//! they vanish with the connection they belong to. When either side goes,
//! [`Proxy::settle_disconnects`] tells the other: a player who left or broke a
//! rule becomes `FPROXY_MSG_CLOSE_SOCKET`; a lost shard disconnects its
//! players cleanly and releases its reservations.
//!
//! The main loop (thesis §3.4.3) is [`Proxy::main_loop`]: wait for events,
//! dispatch them, run the timers once a second, settle disconnects, then
//! flush clients and shards (sealing the shard frames, one encryption per
//! shard per iteration).

pub mod cl;
pub mod link;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info};
use mio::net::UnixStream;

use crate::client::{Clients, ClientsCfg, DisconnectReason, cl_start};
use crate::com::{ClientRef, ComEventBuf, Event};
use crate::config::{Config, Secret, ShardEntry};
use crate::cryptchan::{KeyPair, PublicKey};
use crate::event_buf::EventBuf;
use crate::netpoll;
use crate::secpool::{Secpool, SecpoolConfig};
use crate::shard::{Shards, ShardsCfg, shard_start};
use cl::{ClSession, ClState};
use link::ShardLink;

/// How often the main loop runs its timers.
pub const MAIN_TICK: Duration = Duration::from_millis(1000);
/// How often the proxy logs a line of statistics.
pub const STATS_EVERY: Duration = Duration::from_secs(30);

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
    /// Refuse clients from IPs no shard announced.
    pub require_announced_ip: bool,
    /// Largest client frame plus its length.
    pub client_in_buf_size: usize,
    /// Largest shard frame plus its length.
    pub shard_in_buf_size: usize,
}

impl ProxySettings {
    /// From `proxy.cfg`.
    pub fn from_config(cfg: &Config) -> ProxySettings {
        ProxySettings {
            public_address: cfg.proxy.public_address.clone(),
            password: cfg.shard.password.clone(),
            max_clients: cfg.client.max_clients,
            handshake_timeout: Duration::from_millis(cfg.client.handshake_timeout_ms),
            reservation_timeout: Duration::from_millis(cfg.client.reservation_timeout_ms),
            require_announced_ip: cfg.client.require_announced_ip,
            client_in_buf_size: cfg.client.in_buf_size,
            shard_in_buf_size: cfg.shard.in_buf_size,
        }
    }
}

/// IP addresses the shards announced in reservations, with how many
/// reservations name each (thesis `shard_check_client_ip`).
#[derive(Debug, Default)]
pub struct AnnouncedIps(HashMap<IpAddr, u32>);

impl AnnouncedIps {
    fn add(&mut self, ip: IpAddr) {
        *self.0.entry(ip.to_canonical()).or_insert(0) += 1;
    }

    fn release(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if let Some(n) = self.0.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&ip);
            }
        }
    }

    /// True if some reservation names `ip` (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains_key(&ip.to_canonical())
    }
}

/// Counters for the periodic statistics line and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections refused at accept: no shard announced their IP.
    pub refused_ip: u64,
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

/// The proxy's main-thread state: every table, and the event buffer it drains.
#[derive(Debug)]
pub struct Proxy {
    clients: Clients<ClSession>,
    shards: Shards<ShardLink>,
    keys: Arc<KeyPair>,
    settings: ProxySettings,
    announced: AnnouncedIps,
    /// Reservations held across all shards.
    n_reserved: usize,
    stats: ProxyStats,
    refused_ip_since_tick: u64,
    evbuf: Arc<ComEventBuf>,
    events: Vec<Event>,
    event_wait_max: usize,
    pool: &'static Secpool,
    running: bool,
    /// Reused by the timers, so they allocate nothing.
    scratch_clients: Vec<ClientRef>,
    scratch_sockets: Vec<u32>,
}

impl Proxy {
    /// Creates the pool and event buffer, a fresh key pair, binds the
    /// listener, and starts the client thread (also polling `signals`) and
    /// the shard thread (thesis `com_init`, `cl_start`, `shard_start`).
    pub fn start(
        cfg: Config,
        shard_entries: &[ShardEntry],
        signals: Vec<(i32, UnixStream)>,
    ) -> io::Result<Proxy> {
        crate::cryptchan::init().map_err(|e| io::Error::other(e.to_string()))?;
        let pool = Secpool::new(SecpoolConfig {
            bytes_max: cfg.runtime.secpool_bytes_max,
            block_size_max: cfg.secpool_block_size_max(),
            free_blocks_max: cfg.runtime.secpool_free_blocks_max,
        })
        .leak();
        let evbuf: Arc<ComEventBuf> = Arc::new(EventBuf::new(cfg.runtime.event_buffer_capacity));
        let listener =
            netpoll::listen(cfg.proxy.listen, cfg.client.listen_backlog).map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("cannot listen on {}: {err}", cfg.proxy.listen),
                )
            })?;
        let clients_cfg = ClientsCfg::from_config(&cfg);
        let client_io = cl_start(vec![listener], signals, &clients_cfg, evbuf.clone(), pool)?;
        let keys = Arc::new(KeyPair::generate());
        info!(
            "listening for clients on {} (public address {}), max_clients {}, key {}",
            client_io.local_addr(0),
            cfg.proxy.public_address,
            cfg.client.max_clients,
            keys.public()
        );
        let shards_cfg = ShardsCfg::from_config(&cfg);
        let shard_io = shard_start(shard_entries, &shards_cfg, evbuf.clone(), pool)?;
        Ok(Proxy {
            clients: Clients::new(&clients_cfg, client_io),
            shards: Shards::new(&shards_cfg, shard_entries, shard_io),
            keys,
            settings: ProxySettings::from_config(&cfg),
            announced: AnnouncedIps::default(),
            n_reserved: 0,
            stats: ProxyStats::default(),
            refused_ip_since_tick: 0,
            events: Vec::with_capacity(cfg.runtime.event_wait_max),
            event_wait_max: cfg.runtime.event_wait_max,
            evbuf,
            pool,
            running: true,
            scratch_clients: Vec::new(),
            scratch_sockets: Vec::new(),
        })
    }

    /// The event buffer; pushing `Event::Signal` into it stops the loop, as a
    /// real signal does.
    pub fn event_buf(&self) -> Arc<ComEventBuf> {
        self.evbuf.clone()
    }

    /// Where the client listener is bound.
    pub fn client_addr(&mut self) -> SocketAddr {
        self.clients.io().local_addr(0)
    }

    /// The key this proxy presents to players and shards.
    pub fn public_key(&self) -> PublicKey {
        self.keys.public()
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        self.stats
    }

    /// The main thread's event loop (thesis §3.4.3); returns after a signal or
    /// when the event buffer is closed.
    pub fn main_loop(&mut self) {
        let mut next_tick = Instant::now() + MAIN_TICK;
        let mut next_stats = Instant::now() + STATS_EVERY;
        let mut events = std::mem::take(&mut self.events);
        while self.running {
            let timeout_ms = next_tick
                .saturating_duration_since(Instant::now())
                .as_millis() as i32;
            if self
                .evbuf
                .event_wait(&mut events, self.event_wait_max, timeout_ms)
                .is_err()
            {
                break;
            }
            let now = Instant::now();
            for ev in events.drain(..) {
                self.handle_event(ev, now);
            }
            if now >= next_tick {
                self.tick(now);
                next_tick = now + MAIN_TICK;
            }
            if now >= next_stats {
                self.log_stats();
                next_stats = now + STATS_EVERY;
            }
            self.settle_disconnects();
            self.flush();
        }
        self.events = events;
    }

    /// Dispatches one event on its type (the `switch (e->type)` of thesis
    /// §3.4.3). Event data (secpool blocks) is freed when `ev` is dropped.
    pub fn handle_event(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::AcceptClient {
                listener,
                stream,
                addr,
            } => self.cl_accept(listener, stream, addr, now),
            Event::ReadClient { client, data } => self.cl_read(client, data, now),
            Event::ClientWritable { client } => self.clients.cl_writable(client),
            Event::ClientHup { client, reason } => self.clients.cl_hup(client, reason),
            Event::ClientClosed { client } => self.clients.cl_closed(client),
            Event::ShardConnected { shard, stream } => self.shard_connected(shard, stream),
            Event::ReadShard { shard, data } => self.shard_read(shard, data),
            Event::ShardWritable { shard } => self.shards.shard_writable(shard),
            Event::ShardHup { shard, reason } => {
                self.shards.shard_hup(shard, reason);
            }
            Event::Signal { signal } => {
                info!(
                    "{} received, shutting down",
                    crate::daemon::signal_name(signal)
                );
                self.running = false;
            }
        }
    }

    /// Once a second: handshake deadlines, reservation expiry, idle clients,
    /// and one line for refusals.
    fn tick(&mut self, now: Instant) {
        self.clients.cl_tick(now);
        if self.refused_ip_since_tick > 0 {
            info!(
                "refused {} connections from addresses no shard announced",
                self.refused_ip_since_tick
            );
            self.refused_ip_since_tick = 0;
        }
        self.expire_handshakes(now);
        self.expire_reservations(now);
    }

    /// Disconnects clients that have not passed their auth proof by their
    /// deadline (`client.handshake_timeout_ms`).
    fn expire_handshakes(&mut self, now: Instant) {
        let mut late = std::mem::take(&mut self.scratch_clients);
        late.extend(self.clients.iter_open().filter_map(|(client, slot)| {
            let s = &slot.session;
            (!matches!(s.state, ClState::Authed(_)) && s.deadline.is_some_and(|d| now >= d))
                .then_some(client)
        }));
        for &client in &late {
            self.clients.cl_disconnect(
                client,
                DisconnectReason::Protocol(
                    "no valid auth proof before the handshake deadline".into(),
                ),
            );
        }
        late.clear();
        self.scratch_clients = late;
    }

    /// Lets the protocol layer react to every disconnect since the last call:
    /// a player gone becomes `FPROXY_MSG_CLOSE_SOCKET` (thesis
    /// `shard_delete_client_info`); a shard gone takes its players with it.
    pub fn settle_disconnects(&mut self) {
        loop {
            let Proxy {
                clients,
                shards,
                announced,
                n_reserved,
                ..
            } = self;
            let mut any = false;
            for gone in shards.take_disconnected() {
                any = true;
                link::shard_gone(gone, clients, announced, n_reserved);
            }
            for gone in clients.take_disconnected() {
                any = true;
                cl::client_gone(gone, shards);
            }
            if !any {
                break;
            }
        }
    }

    /// `cl_flush` and `shard_flush` (each seals its frames first), then wakes
    /// the I/O threads that were given commands.
    fn flush(&mut self) {
        self.clients.cl_flush();
        self.shards.shard_flush();
        self.clients.io().wake_if_pending();
        self.shards.io().wake_if_pending();
    }

    fn log_stats(&self) {
        let s = &self.stats;
        let authed = self
            .clients
            .iter_open()
            .filter(|(_, c)| matches!(c.session.state, ClState::Authed(_)))
            .count();
        let ready = self
            .shards
            .all()
            .iter()
            .filter(|s| s.session.is_ready())
            .count();
        info!(
            "stats: {} clients ({authed} authenticated), {} reservations, shards {ready}/{} ready; \
             totals: {} authenticated, {} auth failures, {} filtered, {} refused (IP), \
             {} messages to shards, {} packets to clients; secpool {} KiB",
            self.clients.in_use(),
            self.n_reserved,
            self.shards.all().len(),
            s.authenticated,
            s.auth_failed,
            s.filtered,
            s.refused_ip,
            s.msgs_to_shards,
            s.packets_to_clients,
            self.pool.bytes_held() / 1024
        );
    }

    /// Stops the I/O threads and releases everything (thesis `com_destroy`).
    /// Players are disconnected first, and their shards told.
    pub fn shutdown(mut self) {
        let started = Instant::now();
        info!(
            "shutdown: {} client(s), {}/{} shard(s) connected",
            self.clients.in_use(),
            self.shards.n_connected(),
            self.shards.all().len()
        );
        self.clients.cl_disconnect_all(DisconnectReason::Shutdown);
        self.settle_disconnects();
        self.flush();
        self.evbuf.close();
        self.clients.io().stop_and_join();
        self.shards.io().stop_and_join();
        debug!(
            "clients: {:?}; proxy: {:?}; secpool holds {} bytes",
            self.clients.stats(),
            self.stats,
            self.pool.bytes_held()
        );
        info!("stopped in {:?}", started.elapsed());
    }
}
