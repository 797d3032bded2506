//! The reference shard, `muta-shard` (thesis §2.3 "MUTA", §3.6 "Converting the
//! shard server to work with proxies"): a small game server built on the
//! shard's proxy module ([`proxy`]) and the same runtime as the proxy.
//!
//! [`ShardServer`] is a [`Server`]: the main thread's state, which touches no
//! socket. The runtime ([`crate::runtime`]) runs one client thread accepting
//! on two listeners, proxies (the thesis's proxy links) and login servers,
//! and hands the server each event. The server dispatches on the listener a
//! connection came from: proxy connections to the [`proxy::ProxyModule`]
//! (`proxy_read`), login-server connections to [`login`], and what the module
//! reports about players ([`proxy::ProxyEvent`]) to the [`game::Game`].
//! Players never connect here; the shard's address is known only to its
//! proxies and login servers. The exception is the optional direct listener
//! (`--direct-listen`, [`proxy::DirectCfg`]): MUTA's shard before proxies
//! (thesis §2.3), where players connect to the shard itself; `make bench`
//! measures the proxy against it.
//!
//! Every iteration, once the events are handled, [`Server::settle`] lets the
//! module and the game react to each other until both are quiet: lost links
//! end their sockets, the module's events go to the game, and the module's
//! flush seals what the game sent each player (one frame per player), before
//! the runtime writes the pool's output.
//!
//! The login side (port decision, `docs/protocol.md`): a login server logs in
//! with the shard's login password (`TSHARD_MSG_LOGIN`), then announces each
//! player (`TSHARD_MSG_PLAYER`); the shard opens a proxy socket on the
//! least-loaded proxy (`proxy_new_socket`) and, when the proxy has reserved
//! the slot, answers with that proxy's public address and key
//! (`FSHARD_MSG_PLAYER_RESULT`).
//!
//! With `--stats-json` the shard prints one JSON line per second on stdout:
//! players, players per proxy, messages in and out (what `make demo` shows).

pub mod game;
pub mod login;
pub mod proxy;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{LevelFilter, debug, info, warn};
use mio::net::{TcpListener, UnixStream};

use crate::com::{ConnRef, PoolId};
use crate::config::Secret;
use crate::conn::thread::IoCfg;
use crate::conn::{AnyPool, DisconnectReason, Origin, Pool, PoolCfg, Session};
use crate::cryptchan::{KeyPair, PublicKey};
use crate::netpoll;
use crate::process;
use crate::runtime::{Node, Runtime, RuntimeCfg, Server};
use crate::secpool::SecpoolConfig;
use game::{Game, GameStats};
pub use login::{LoginLink, LoginLinkState};
use proxy::{
    DirectCfg, DirectConn, ProxyEvent, ProxyEvents, ProxyLink, ProxyModule, ProxyModuleCfg,
    ProxySessions,
};

/// Index of the proxy listener in the client thread's list.
pub const PROXY_LISTENER: u32 = 0;
/// Index of the login-server listener.
pub const LOGIN_LISTENER: u32 = 1;
/// Index of the direct-player listener, if there is one.
pub const DIRECT_LISTENER: u32 = 2;
/// A direct player's incomplete-frame buffer: as the proxy's
/// `client.in_buf_size` default.
const DIRECT_IN_BUF_SIZE: usize = 8192;
/// Most bytes queued to a direct player: room for one flush of the proxy
/// module's whole per-player queue (`PLAYER_OUT_MAX`) sealed into frames, so
/// the module's own limit decides when a player is too slow.
const DIRECT_OUT_BUF_SIZE: usize = 2 * PLAYER_OUT_MAX;
/// Most plaintext bytes queued for one player before it is dropped.
const PLAYER_OUT_MAX: usize = 1 << 20;
/// A proxy or login-server link's incomplete-frame buffer: a whole frame of
/// the largest size (64 KiB) and its length, with room to spare.
const LINK_IN_BUF_SIZE: usize = 70 * 1024;
/// Most bytes queued to a proxy or login-server link: a proxy carries every
/// player's traffic of an iteration.
const LINK_OUT_BUF_SIZE: usize = 16 * 1024 * 1024;
/// How long a socket waits for its player to connect.
const SOCKET_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The handshake and auth proof of a direct player must be done in this time.
const DIRECT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most rounds of `settle` per iteration: the game's reaction to a
/// disconnect can end more sockets, a short chain; more means a loop.
const SETTLE_ROUNDS_MAX: usize = 16;

/// `muta-shard`'s settings (flags).
#[derive(Clone, Debug)]
pub struct ShardServerCfg {
    /// The shard's name, which players name in their auth proof.
    pub name: String,
    /// Where proxies connect.
    pub proxy_listen: SocketAddr,
    /// Where login servers connect.
    pub login_listen: SocketAddr,
    /// The password proxies present.
    pub password: Secret,
    /// The password login servers present.
    pub login_password: Secret,
    /// Seed of the shard's key pair, so proxies can pin its key; random if none.
    pub key_seed: Option<[u8; 32]>,
    /// Most players at once (proxy sockets).
    pub max_players: usize,
    /// Most connections (proxies and login servers).
    pub max_links: u32,
    /// Print a JSON stats line every second.
    pub stats_json: bool,
    /// Most plaintext bytes in one frame to a player (tests set it low to
    /// make batches cut into several frames).
    pub player_frame_max: usize,
    /// Serve players directly here instead of through proxies (thesis §2.3).
    pub direct_listen: Option<SocketAddr>,
    /// The address players are told for the direct listener (a forwarder in
    /// front of it); the listener's own address if none.
    pub direct_public: Option<String>,
    /// Most direct players connected at once.
    pub max_direct: u32,
    /// Check that a direct player connects from the address the login server
    /// announced (off behind a forwarder that hides it).
    pub direct_check_address: bool,
    /// Players per area: chat, moves and emotes reach the players of the
    /// sender's area only (0: everyone).
    pub area_players: usize,
}

impl Default for ShardServerCfg {
    fn default() -> ShardServerCfg {
        ShardServerCfg {
            name: "shard-1".to_string(),
            proxy_listen: "127.0.0.1:7701".parse().expect("literal"),
            login_listen: "127.0.0.1:7703".parse().expect("literal"),
            password: Secret::new("change-me"),
            login_password: Secret::new("change-me-too"),
            key_seed: None,
            max_players: 100_000,
            max_links: 256,
            stats_json: false,
            player_frame_max: proxy::PLAYER_FRAME_PLAINTEXT_MAX,
            direct_listen: None,
            direct_public: None,
            max_direct: 10_000,
            direct_check_address: true,
            area_players: 0,
        }
    }
}

/// What a connection of the shard's pool is, decided by its listener.
#[derive(Debug, Default)]
pub enum ShardConn {
    /// Not set up (a fresh slot).
    #[default]
    None,
    /// A proxy.
    Proxy(ProxyLink),
    /// A login server.
    Login(LoginLink),
    /// A player on the direct listener.
    Direct(DirectConn),
}

impl Session for ShardConn {
    fn before_flush(&mut self, out: &mut Vec<u8>) {
        let chan = match self {
            ShardConn::Proxy(link) => &mut link.chan,
            ShardConn::Login(link) => &mut link.chan,
            // Direct players' frames are sealed whole by the proxy module.
            ShardConn::Direct(_) | ShardConn::None => return,
        };
        if let Err(err) = chan.seal(out) {
            warn!("cannot seal a frame: {err}");
        }
    }
}

impl ProxySessions for ShardConn {
    fn proxy_link(&mut self) -> Option<&mut ProxyLink> {
        match self {
            ShardConn::Proxy(link) => Some(link),
            _ => None,
        }
    }

    fn direct_conn(&mut self) -> Option<&mut DirectConn> {
        match self {
            ShardConn::Direct(conn) => Some(conn),
            _ => None,
        }
    }
}

/// Where the shard's listeners are bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardAddrs {
    /// Where proxies connect.
    pub proxy: SocketAddr,
    /// Where login servers connect.
    pub login: SocketAddr,
    /// Where players connect directly, if they do.
    pub direct: Option<SocketAddr>,
}

/// The shard program's main-thread state.
pub struct ShardServer {
    clients: Pool<ShardConn>,
    module: ProxyModule,
    game: Game,
    keys: Arc<KeyPair>,
    cfg: ShardServerCfg,
    /// Players announced by a login server, waiting for their proxy's
    /// answer: socket → (login link, request id, account name).
    pending: HashMap<u32, (ConnRef, u32, String)>,
    /// Names of players whose socket is open, until they connect.
    names: HashMap<u32, String>,
    /// The module's events being handled (reused: no allocation once warm).
    events: ProxyEvents,
    addrs: ShardAddrs,
    started: Instant,
    /// The counters at the last stats line.
    last_game: GameStats,
    last_frames: u64,
    /// Reused by the tick.
    scratch_late: Vec<ConnRef>,
}

impl std::fmt::Debug for ShardServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardServer")
            .field("name", &self.cfg.name)
            .field("module", &self.module)
            .finish()
    }
}

/// Direct players at once: none without a direct listener.
fn n_direct(cfg: &ShardServerCfg) -> u32 {
    if cfg.direct_listen.is_some() {
        cfg.max_direct
    } else {
        0
    }
}

/// Connections at once, the pool's slots: the links and the direct players.
fn n_conns(cfg: &ShardServerCfg) -> u32 {
    cfg.max_links.saturating_add(n_direct(cfg))
}

/// The runtime `muta-shard` runs on: a client thread only (the shard opens no
/// connections), sized for links carrying many players' traffic.
pub fn runtime_cfg(cfg: &ShardServerCfg) -> RuntimeCfg {
    RuntimeCfg {
        secpool: SecpoolConfig {
            bytes_max: 256 << 20,
            block_size_max: 64 * 1024,
            free_blocks_max: 256,
        },
        event_buffer_capacity: 1024,
        event_wait_max: 256,
        client: IoCfg {
            pool: PoolId::Client,
            max_conns: n_conns(cfg),
            read_size: 64 * 1024,
            reads_per_wakeup: 16,
            accepts_per_wakeup: 16,
            netpoll_events_max: 256,
            io_batch_max: 64,
            // Proxies' links, each carrying many players' traffic, and the
            // benchmark's direct players: not bounded (the reference shard
            // trusts its proxies; the proxy bounds its players).
            read_ahead_max: 0,
            send_buffer: 0,
            user_timeout_ms: 0,
        },
        shard: None,
    }
}

/// Binds the listeners, in the order of `PROXY_LISTENER`, `LOGIN_LISTENER`
/// and `DIRECT_LISTENER`; the direct one has a longer backlog, for players
/// arriving in bursts.
fn listeners(cfg: &ShardServerCfg) -> io::Result<Vec<TcpListener>> {
    let listen = |addr: SocketAddr, backlog: u32| {
        netpoll::listen(addr, backlog)
            .map_err(|err| io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))
    };
    let mut listeners = vec![
        listen(cfg.proxy_listen, 128)?,
        listen(cfg.login_listen, 128)?,
    ];
    if let Some(addr) = cfg.direct_listen {
        listeners.push(listen(addr, 1024)?);
    }
    Ok(listeners)
}

/// Binds the listeners and starts the runtime (its client thread also polls
/// `signals`) and the shard with its key pair: from `key_seed`, or fresh.
pub fn start(
    cfg: ShardServerCfg,
    signals: Vec<(i32, UnixStream)>,
) -> io::Result<Node<ShardServer>> {
    crate::cryptchan::init().map_err(|e| io::Error::other(e.to_string()))?;
    let runtime = Runtime::start(&runtime_cfg(&cfg), listeners(&cfg)?, signals)?;
    let keys = Arc::new(match &cfg.key_seed {
        Some(seed) => KeyPair::from_seed(seed),
        None => KeyPair::generate(),
    });
    let addrs = ShardAddrs {
        proxy: runtime.local_addr(PROXY_LISTENER as usize),
        login: runtime.local_addr(LOGIN_LISTENER as usize),
        direct: cfg
            .direct_listen
            .map(|_| runtime.local_addr(DIRECT_LISTENER as usize)),
    };
    if let Some(addr) = addrs.direct {
        info!("shard {:?}: players connect directly on {addr}", cfg.name);
    }
    info!(
        "shard {:?}: proxies on {}, login servers on {}, key {}",
        cfg.name,
        addrs.proxy,
        addrs.login,
        keys.public()
    );
    let server = ShardServer::from_config(cfg, keys, addrs, Instant::now());
    Ok(Node { server, runtime })
}

impl ShardServer {
    /// The shard's state for `cfg`, with its key pair and its listeners'
    /// addresses (`addrs.direct` set if `cfg.direct_listen` is), before any
    /// event.
    pub fn from_config(
        cfg: ShardServerCfg,
        keys: Arc<KeyPair>,
        addrs: ShardAddrs,
        now: Instant,
    ) -> ShardServer {
        let pool_cfg = PoolCfg {
            max_conns: n_conns(&cfg),
            out_buf_size: LINK_OUT_BUF_SIZE,
            idle_timeout: None, // proxy and login links may be idle for long
            connect_timeout: SOCKET_CONNECT_TIMEOUT, // unused: no outbound connections
        };
        let mut clients = Pool::new(PoolId::Client, &pool_cfg, now);
        // Players, on a public listener, must never take the slots the proxy
        // and login-server links need.
        clients.set_listener_limits(DIRECT_LISTENER, DIRECT_OUT_BUF_SIZE, n_direct(&cfg));
        let module = ProxyModule::new(keys.clone(), module_cfg(&cfg, addrs.direct));
        ShardServer {
            clients,
            module,
            game: Game::new(cfg.area_players),
            keys,
            cfg,
            pending: HashMap::new(),
            names: HashMap::new(),
            events: ProxyEvents::default(),
            addrs,
            started: now,
            last_game: GameStats::default(),
            last_frames: 0,
            scratch_late: Vec::new(),
        }
    }

    /// Where proxies connect.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.addrs.proxy
    }

    /// Where login servers connect.
    pub fn login_addr(&self) -> SocketAddr {
        self.addrs.login
    }

    /// Where players connect directly, if they do.
    pub fn direct_addr(&self) -> Option<SocketAddr> {
        self.addrs.direct
    }

    /// The shard's public key.
    pub fn public_key(&self) -> PublicKey {
        self.keys.public()
    }

    /// One round of [`Server::settle`]: the disconnects, then the module's
    /// events. True if there was anything.
    fn settle_once(&mut self) -> bool {
        let mut any = false;
        for gone in self.clients.take_disconnected() {
            any = true;
            match &gone.session {
                ShardConn::Proxy(_) => self.module.proxy_gone(gone.conn),
                ShardConn::Direct(conn) => self.module.direct_gone(conn, &gone.reason),
                ShardConn::Login(_) | ShardConn::None => {}
            }
        }
        if self.module.take_events(&mut self.events) {
            any = true;
            self.player_events();
        }
        any
    }

    /// Handles the events taken from the proxy module, in order. Every socket
    /// ends with one terminal event, which clears what this program keeps
    /// about it.
    fn player_events(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        for ev in events.list.drain(..) {
            match ev {
                ProxyEvent::SocketOpened(opened) => self.socket_opened(opened),
                ProxyEvent::PlayerConnected { socket, addr } => {
                    let name = self.names.remove(&socket).unwrap_or_default();
                    self.game
                        .player_connected(&mut self.module, socket, &name, addr);
                }
                ProxyEvent::PlayerPacket { socket, start, end } => {
                    self.player_packet(socket, &events.bytes[start..end]);
                }
                ProxyEvent::SocketClosed { socket, reason } => {
                    debug!("socket {socket:#x}: {reason}");
                    self.names.remove(&socket);
                }
                ProxyEvent::PlayerDisconnected { socket, reason } => {
                    debug!("socket {socket:#x}: {reason}");
                    self.game.player_disconnected(socket);
                }
            }
        }
        events.clear();
        self.events = events;
    }

    /// A player's messages to the game; one it cannot decode drops the
    /// player (thesis `proxy_delete_socket`).
    fn player_packet(&mut self, socket: u32, bytes: &[u8]) {
        if !self.game.player_packet(&mut self.module, socket, bytes) {
            warn!("socket {socket:#x}: undecodable game message; dropping the player");
            self.module.proxy_delete_socket(&mut self.clients, socket);
        }
    }

    /// Drops direct players that have not proved their token in time.
    fn expire_direct_handshakes(&mut self, now: Instant) {
        let mut late = std::mem::take(&mut self.scratch_late);
        late.extend(self.clients.iter_live().filter_map(|(client, slot)| {
            matches!(&slot.session, ShardConn::Direct(conn) if conn.is_late(now)).then_some(client)
        }));
        for &client in &late {
            self.clients.disconnect(
                client,
                DisconnectReason::Protocol(
                    "no valid auth proof before the handshake deadline".into(),
                ),
            );
        }
        late.clear();
        self.scratch_late = late;
    }

    /// The counters since the last tick, printed as a JSON line with
    /// `--stats-json`.
    fn tick_stats(&mut self) {
        let game = self.game.stats();
        let frames = self.module.stats().frames_out;
        if self.cfg.stats_json {
            self.print_stats(
                game.msgs_in - self.last_game.msgs_in,
                game.msgs_out - self.last_game.msgs_out,
                frames - self.last_frames,
            );
        }
        self.last_game = game;
        self.last_frames = frames;
    }

    fn print_stats(&mut self, msgs_in: u64, msgs_out: u64, frames_out: u64) {
        let mut proxies = String::new();
        for (i, &proxy) in self.module.proxies().iter().enumerate() {
            if let Some(link) = self
                .clients
                .get_mut(proxy)
                .and_then(|c| c.session.proxy_link())
            {
                if i > 0 {
                    proxies.push(',');
                }
                proxies += &format!(
                    "{{\"address\":\"{}\",\"players\":{}}}",
                    link.public_address, link.n_sockets
                );
            }
        }
        let line = format!(
            "{{\"t_ms\":{},\"players\":{},\"proxies\":[{proxies}],\"msgs_in\":{msgs_in},\"msgs_out\":{msgs_out},\"frames_out\":{frames_out}}}",
            self.started.elapsed().as_millis(),
            self.game.n_players()
        );
        let mut stdout = io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }
}

/// The proxy module's settings for `cfg`; with a direct listener bound at
/// `direct`, every socket is a direct one.
fn module_cfg(cfg: &ShardServerCfg, direct: Option<SocketAddr>) -> ProxyModuleCfg {
    let direct = direct.map(|addr| DirectCfg {
        public_address: cfg.direct_public.clone().unwrap_or(addr.to_string()),
        handshake_timeout: DIRECT_HANDSHAKE_TIMEOUT,
        require_announced_ip: cfg.direct_check_address,
        in_buf_size: DIRECT_IN_BUF_SIZE,
    });
    ProxyModuleCfg {
        shard_name: cfg.name.clone(),
        password: cfg.password.clone(),
        max_sockets: cfg.max_players,
        player_out_max: PLAYER_OUT_MAX,
        connect_timeout: SOCKET_CONNECT_TIMEOUT,
        in_buf_size: LINK_IN_BUF_SIZE,
        player_frame_max: cfg.player_frame_max,
        direct,
    }
}

impl Server for ShardServer {
    fn pools(&mut self) -> (&mut dyn AnyPool, Option<&mut dyn AnyPool>) {
        (&mut self.clients, None)
    }

    /// `EVENT_ACCEPT_CLIENT`: a slot, and the session its listener gives it.
    fn on_accept(&mut self, listener: u32, peer: SocketAddr, now: Instant) -> Option<ConnRef> {
        let conn = self.clients.accept(listener, peer, now)?;
        let session = match listener {
            PROXY_LISTENER => ShardConn::Proxy(self.module.new_link()),
            LOGIN_LISTENER => ShardConn::Login(LoginLink::new(self.keys.clone())),
            _ => ShardConn::Direct(self.module.new_direct_conn(now)),
        };
        self.clients.get_mut(conn).expect("just accepted").session = session;
        Some(conn)
    }

    /// `EVENT_READ_CLIENT`: to the proxy module or the login side, by the
    /// listener the connection came from.
    fn on_read(&mut self, conn: ConnRef, data: &mut [u8], now: Instant) {
        let Some(Origin::Listener(listener)) = self.clients.get(conn).map(|s| s.origin()) else {
            return; // stale (the shard opens no connections)
        };
        match listener {
            PROXY_LISTENER => self.module.proxy_read(&mut self.clients, conn, data, now),
            LOGIN_LISTENER => self.login_read(conn, data, now),
            _ => self.module.direct_read(&mut self.clients, conn, data, now),
        }
    }

    /// Once a second: sockets whose player never came, direct players late
    /// with their proof, and the stats line.
    fn on_tick(&mut self, now: Instant) {
        self.module.tick(&mut self.clients, now);
        self.expire_direct_handshakes(now);
        self.tick_stats();
    }

    /// Lets the module and the game react to each other until both are
    /// quiet: disconnects end sockets, and the module's events go to the
    /// game (which may drop a player, and so make more).
    fn settle(&mut self, _now: Instant) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            if !self.settle_once() {
                return;
            }
        }
        warn!("settle: still busy after {SETTLE_ROUNDS_MAX} rounds (bug: a loop)");
    }

    /// The module seals what the game sent each player this iteration (one
    /// frame per player); a player too far behind is dropped, which the
    /// runtime's next `settle` handles.
    fn before_flush(&mut self, _now: Instant) {
        self.module.flush(&mut self.clients);
    }

    /// Shutdown begins: every connection is disconnected, so `settle` ends
    /// every socket.
    fn on_shutdown(&mut self, _now: Instant) {
        info!("shard {:?} stopping", self.cfg.name);
        self.clients.disconnect_all(DisconnectReason::Shutdown);
    }
}

/// `muta-shard`'s usage text.
pub const USAGE: &str = "\
muta-shard: the reference MUTA shard (game server) behind muta-proxy

Usage: muta-shard [OPTIONS]

Options:
  --name NAME              shard name players ask for [default: shard-1]
  --proxy-listen ADDR      where proxies connect [default: 127.0.0.1:7701]
  --login-listen ADDR      where login servers connect [default: 127.0.0.1:7703]
  --password PW            password proxies present [default: change-me]
  --login-password PW      password login servers present [default: change-me-too]
  --key-seed HEX           64 hex digits: a fixed key pair proxies can pin
  --max-players N          most players at once [default: 100000]
  --direct-listen ADDR     serve players directly here, without proxies (the
                           shard before proxies, thesis 2.3; a benchmark baseline)
  --direct-public ADDR     the address players are told for it (a forwarder in
                           front of it) [default: the listener's]
  --max-direct N           most direct players at once, 1 to 1000000 [default: 10000]
  --direct-any-address     do not check that a direct player connects from the
                           address the login server saw (for a forwarder that
                           hides it)
  --area-players N         players per area; chat, moves and emotes reach only
                           the sender's area (0: everyone) [default: 0]
  --stats-json             print one JSON stats line per second on stdout
  -h, --help               print this help
  -V, --version            print the version (and the git revision) and exit
";

/// Parses `muta-shard`'s flags.
pub fn parse_args<I: IntoIterator<Item = OsString>>(
    args: I,
) -> Result<Option<ShardServerCfg>, String> {
    let mut cfg = ShardServerCfg::default();
    let mut args = crate::cli::FlagArgs::new(args)?;
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--name" => cfg.name = args.value(&flag)?,
            "--proxy-listen" => cfg.proxy_listen = args.parse(&flag)?,
            "--login-listen" => cfg.login_listen = args.parse(&flag)?,
            "--password" => cfg.password = Secret::new(args.value(&flag)?),
            "--login-password" => cfg.login_password = Secret::new(args.value(&flag)?),
            "--key-seed" => {
                let hex = args.value(&flag)?;
                let key = PublicKey::from_hex(&hex).ok_or("--key-seed needs 64 hex digits")?;
                cfg.key_seed = Some(key.0);
            }
            "--max-players" => cfg.max_players = args.parse(&flag)?,
            "--direct-listen" => cfg.direct_listen = Some(args.parse(&flag)?),
            "--direct-public" => cfg.direct_public = Some(args.value(&flag)?),
            "--max-direct" => cfg.max_direct = args.parse(&flag)?,
            "--direct-any-address" => cfg.direct_check_address = false,
            "--area-players" => cfg.area_players = args.parse(&flag)?,
            "--stats-json" => cfg.stats_json = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if !(1..=1_000_000).contains(&cfg.max_direct) {
        return Err("--max-direct must be 1 to 1000000".to_string());
    }
    if cfg.name.is_empty() || cfg.name.len() > crate::proto::SHARD_NAME_MAX {
        return Err("--name must be 1 to 32 bytes".to_string());
    }
    Ok(Some(cfg))
}

/// `muta-shard`'s `main`: 0 after a signal, 1 if it cannot start, 2 on bad
/// usage.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    let cfg = match parse_args(args) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            print!("{USAGE}");
            return 0;
        }
        Err(msg) => {
            eprintln!("muta-shard: {msg}\n\n{USAGE}");
            return 2;
        }
    };
    process::run_node("muta-shard", LevelFilter::Info, move |signals| {
        start(cfg, signals)
    })
}
