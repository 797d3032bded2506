//! The reference shard, `muta-shard` (thesis §2.3 "MUTA", §3.6 "Converting the
//! shard server to work with proxies"): a small game server built on the
//! shard's proxy module ([`proxy`]) and the same runtime as the proxy.
//!
//! One client thread accepts on two listeners: proxies (the thesis's proxy
//! links) and login servers. The main thread drains the event buffer and
//! dispatches: proxy connections to the [`proxy::ProxyModule`], login-server
//! connections to `ShardServer::login_read`, player events to the
//! [`game::Game`]. Players never connect here; the shard's address is known
//! only to its proxies and login servers. The exception is the optional
//! direct listener (`--direct-listen`, [`proxy::DirectCfg`]): MUTA's shard
//! before proxies (thesis §2.3), where players connect to the shard itself;
//! `make bench` measures the proxy against it.
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
pub mod proxy;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::UnixStream;

use crate::client::{Clients, ClientsCfg, DisconnectReason, Session, cl_start};
use crate::com::{ClientRef, ComEventBuf, Event};
use crate::config::Secret;
use crate::cryptchan::{KeyPair, PublicKey, TOKEN_BYTES, memcmp_ct};
use crate::event_buf::EventBuf;
use crate::netpoll;
use crate::proto::ProtoError;
use crate::proto::frame::{Channel, FeedError, PeerError, Step, feed};
use crate::proto::login::{
    FromShard, ProxyTicket, RESULT_BAD_CREDENTIALS, RESULT_NO_PROXY, RESULT_OK, ToShard,
};
use crate::secpool::{PoolBuf, Secpool, SecpoolConfig};
use game::Game;
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
/// How often timers run and stats are printed.
const TICK: Duration = Duration::from_secs(1);

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

/// Where a login-server link is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoginLinkState {
    /// Key exchange not finished.
    #[default]
    Handshake,
    /// Waiting for `TSHARD_MSG_LOGIN`.
    AwaitLogin,
    /// Logged in.
    Ready,
}

/// A connected login server.
#[derive(Debug)]
pub struct LoginLink {
    chan: Channel,
    state: LoginLinkState,
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

/// A player request from a login server, copied out of its frame.
struct PlayerRequest {
    request_id: u32,
    account_id: u64,
    login_session_id: u32,
    ip: IpAddr,
    account_name: String,
    token: [u8; TOKEN_BYTES],
}

/// The shard program's main-thread state.
pub struct ShardServer {
    clients: Clients<ShardConn>,
    module: ProxyModule,
    game: Game,
    keys: Arc<KeyPair>,
    cfg: ShardServerCfg,
    /// Players announced by a login server, waiting for their proxy's
    /// answer: socket → (login link, request id, account name).
    pending: HashMap<u32, (ClientRef, u32, String)>,
    /// Names of players whose socket is open, until they connect.
    names: HashMap<u32, String>,
    events: ProxyEvents,
    evbuf: Arc<ComEventBuf>,
    running: bool,
    addrs: (SocketAddr, SocketAddr),
    direct_addr: Option<SocketAddr>,
    started: Instant,
}

impl std::fmt::Debug for ShardServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardServer")
            .field("name", &self.cfg.name)
            .field("module", &self.module)
            .finish()
    }
}

impl ShardServer {
    /// Binds both listeners and starts the client thread (also polling
    /// `signals`).
    pub fn start(cfg: ShardServerCfg, signals: Vec<(i32, UnixStream)>) -> io::Result<ShardServer> {
        crate::cryptchan::init().map_err(|e| io::Error::other(e.to_string()))?;
        let keys = Arc::new(match &cfg.key_seed {
            Some(seed) => KeyPair::from_seed(seed),
            None => KeyPair::generate(),
        });
        let in_buf_size = 70 * 1024;
        let n_direct = if cfg.direct_listen.is_some() {
            cfg.max_direct
        } else {
            0
        };
        let pool_cfg = ClientsCfg {
            max_clients: cfg.max_links.saturating_add(n_direct),
            out_buf_size: 16 * 1024 * 1024,
            read_size: 64 * 1024,
            reads_per_wakeup: 16,
            accepts_per_wakeup: 16,
            idle_timeout_ms: 0, // proxy and login links may be idle for long
            netpoll_events_max: 256,
            io_batch_max: 64,
        };
        let pool = Secpool::new(SecpoolConfig {
            bytes_max: 256 << 20,
            block_size_max: 64 * 1024,
            free_blocks_max: 256,
        })
        .leak();
        let evbuf: Arc<ComEventBuf> = Arc::new(EventBuf::new(1024));
        let listen = |addr: SocketAddr| {
            netpoll::listen(addr, 128).map_err(|err| {
                io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}"))
            })
        };
        let mut listeners = vec![listen(cfg.proxy_listen)?, listen(cfg.login_listen)?];
        if let Some(addr) = cfg.direct_listen {
            listeners.push(netpoll::listen(addr, 1024).map_err(|err| {
                io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}"))
            })?);
        }
        let io = cl_start(listeners, signals, &pool_cfg, evbuf.clone(), pool)?;
        let addrs = (
            io.local_addr(PROXY_LISTENER as usize),
            io.local_addr(LOGIN_LISTENER as usize),
        );
        let direct_addr = cfg
            .direct_listen
            .map(|_| io.local_addr(DIRECT_LISTENER as usize));
        let direct = direct_addr.map(|addr| {
            info!("shard {:?}: players connect directly on {addr}", cfg.name);
            DirectCfg {
                public_address: cfg.direct_public.clone().unwrap_or(addr.to_string()),
                handshake_timeout: Duration::from_secs(5),
                require_announced_ip: cfg.direct_check_address,
                in_buf_size: DIRECT_IN_BUF_SIZE,
            }
        });
        info!(
            "shard {:?}: proxies on {}, login servers on {}, key {}",
            cfg.name,
            addrs.0,
            addrs.1,
            keys.public()
        );
        let module = ProxyModule::new(
            keys.clone(),
            ProxyModuleCfg {
                shard_name: cfg.name.clone(),
                password: cfg.password.clone(),
                max_sockets: cfg.max_players,
                player_out_max: PLAYER_OUT_MAX,
                connect_timeout: Duration::from_secs(30),
                in_buf_size,
                player_frame_max: cfg.player_frame_max,
                direct,
            },
        );
        let mut clients = Clients::new(&pool_cfg, io);
        // Players, on a public listener, must never take the slots the proxy
        // and login-server links need.
        clients.set_listener_limits(DIRECT_LISTENER, DIRECT_OUT_BUF_SIZE, n_direct);
        Ok(ShardServer {
            clients,
            module,
            game: Game::new(cfg.area_players),
            keys,
            cfg,
            pending: HashMap::new(),
            names: HashMap::new(),
            events: ProxyEvents::default(),
            evbuf,
            running: true,
            addrs,
            direct_addr,
            started: Instant::now(),
        })
    }

    /// Where proxies connect.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.addrs.0
    }

    /// Where login servers connect.
    pub fn login_addr(&self) -> SocketAddr {
        self.addrs.1
    }

    /// Where players connect directly, if they do.
    pub fn direct_addr(&self) -> Option<SocketAddr> {
        self.direct_addr
    }

    /// The shard's public key.
    pub fn public_key(&self) -> PublicKey {
        self.keys.public()
    }

    /// The event buffer; pushing `Event::Signal` stops the loop.
    pub fn event_buf(&self) -> Arc<ComEventBuf> {
        self.evbuf.clone()
    }

    /// The main loop: events, player events, timers, flush.
    pub fn main_loop(&mut self) {
        let mut next_tick = Instant::now() + TICK;
        let mut list: Vec<Event> = Vec::with_capacity(256);
        let mut last = self.game.stats();
        let mut last_frames = 0;
        while self.running {
            let timeout_ms = next_tick
                .saturating_duration_since(Instant::now())
                .as_millis() as i32;
            if self.evbuf.event_wait(&mut list, 256, timeout_ms).is_err() {
                break;
            }
            let now = Instant::now();
            for ev in list.drain(..) {
                self.handle_event(ev, now);
            }
            self.settle();
            if now >= next_tick {
                self.clients.cl_tick(now);
                self.module.tick(&mut self.clients, now);
                self.expire_direct_handshakes(now);
                let stats = self.game.stats();
                let frames = self.module.stats().frames_out;
                if self.cfg.stats_json {
                    self.print_stats(
                        stats.msgs_in - last.msgs_in,
                        stats.msgs_out - last.msgs_out,
                        frames - last_frames,
                    );
                }
                last = stats;
                last_frames = frames;
                next_tick = now + TICK;
            }
            self.module.flush(&mut self.clients);
            self.settle();
            self.clients.cl_flush();
            self.clients.io().wake_if_pending();
        }
    }

    fn handle_event(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::AcceptClient {
                listener,
                stream,
                addr,
            } => {
                let Some(client) = self.clients.cl_accept(listener, stream, addr, now) else {
                    return;
                };
                let slot = self.clients.get_mut(client).expect("just accepted");
                slot.session = match listener {
                    PROXY_LISTENER => ShardConn::Proxy(self.module.new_link()),
                    LOGIN_LISTENER => ShardConn::Login(LoginLink {
                        chan: Channel::acceptor(self.keys.clone()),
                        state: LoginLinkState::Handshake,
                    }),
                    _ => ShardConn::Direct(self.module.new_direct_conn(now)),
                };
            }
            Event::ReadClient { client, data } => {
                match self.clients.get(client).map(|c| c.listener) {
                    Some(PROXY_LISTENER) => {
                        self.module.proxy_read(&mut self.clients, client, data, now);
                    }
                    Some(LOGIN_LISTENER) => self.login_read(client, data, now),
                    Some(_) => {
                        self.module
                            .direct_read(&mut self.clients, client, data, now);
                    }
                    None => {}
                }
            }
            Event::ClientWritable { client } => self.clients.cl_writable(client),
            Event::ClientHup { client, reason } => self.clients.cl_hup(client, reason),
            Event::ClientClosed { client } => self.clients.cl_closed(client),
            Event::Signal { signal } => {
                info!(
                    "{} received, shutting down",
                    crate::daemon::signal_name(signal)
                );
                self.running = false;
            }
            other => debug!("unexpected {}", other.name()),
        }
    }

    /// Handles disconnects and player events until none are left.
    fn settle(&mut self) {
        loop {
            let mut any = false;
            for gone in self.clients.take_disconnected() {
                any = true;
                match &gone.session {
                    ShardConn::Proxy(_) => self.module.proxy_gone(gone.client),
                    ShardConn::Direct(conn) => self.module.direct_gone(conn, &gone.reason),
                    _ => {}
                }
            }
            if self.module.take_events(&mut self.events) {
                any = true;
                self.player_events();
            }
            if !any {
                break;
            }
        }
    }

    /// Handles the events taken from the proxy module. Every socket ends with
    /// one terminal event, which clears what this program keeps about it.
    fn player_events(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        for ev in events.list.drain(..) {
            match ev {
                ProxyEvent::SocketOpened(opened) => {
                    let Some((login, request_id, name)) = self.pending.remove(&opened.socket)
                    else {
                        continue;
                    };
                    let ticket = match (&opened.proxy_address, opened.proxy_key) {
                        (Some(address), Some(key)) => {
                            self.names.insert(opened.socket, name);
                            Some(ProxyTicket { address, key })
                        }
                        _ => None,
                    };
                    let result = if ticket.is_some() {
                        RESULT_OK
                    } else {
                        RESULT_NO_PROXY
                    };
                    self.send_to_login(
                        login,
                        &FromShard::PlayerResult {
                            request_id,
                            result,
                            ticket,
                        },
                    );
                }
                ProxyEvent::PlayerConnected { socket } => {
                    let name = self.names.remove(&socket).unwrap_or_default();
                    self.game.player_connected(&mut self.module, socket, &name);
                }
                ProxyEvent::PlayerPacket { socket, start, end } => {
                    if !self
                        .game
                        .player_packet(&mut self.module, socket, &events.bytes[start..end])
                    {
                        warn!("socket {socket:#x}: undecodable game message; dropping the player");
                        self.module.proxy_delete_socket(&mut self.clients, socket);
                    }
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

    /// Drops direct players that have not proved their token in time.
    fn expire_direct_handshakes(&mut self, now: Instant) {
        let late: Vec<ClientRef> = self
            .clients
            .iter_open()
            .filter(|(_, c)| matches!(&c.session, ShardConn::Direct(conn) if conn.is_late(now)))
            .map(|(client, _)| client)
            .collect();
        for client in late {
            self.clients.cl_disconnect(
                client,
                DisconnectReason::Protocol(
                    "no valid auth proof before the handshake deadline".into(),
                ),
            );
        }
    }

    fn send_to_login(&mut self, login: ClientRef, msg: &FromShard<'_>) {
        self.clients.cl_write(login, |session, out| {
            if let ShardConn::Login(link) = session
                && link.chan.room(out, FromShard::MAX).is_ok()
            {
                msg.encode(out);
            }
        });
    }

    /// Handles `EVENT_READ_CLIENT` for a login-server link (port decision).
    fn login_read(&mut self, client: ClientRef, mut data: PoolBuf, now: Instant) {
        let login_password = self.cfg.login_password.clone();
        let shard_name = self.cfg.name.clone();
        let Some(slot) = self.clients.cl_read(client, data.len(), now) else {
            return;
        };
        let (session, in_buf, out) = slot.parts();
        let ShardConn::Login(link) = session else {
            return;
        };
        let out_before = out.len();
        let LoginLink { chan, state } = link;
        let mut requests: Vec<PlayerRequest> = Vec::new();
        let mut cancels: Vec<(u64, u32)> = Vec::new();
        let result = feed(in_buf, data.as_mut_slice(), 70 * 1024, chan, |chan, buf| {
            let mut pos = 0;
            loop {
                match chan.next(&mut buf[pos..], out)? {
                    Step::NeedMore => return Ok(pos),
                    Step::Handshake { consumed } => pos += consumed,
                    Step::Opened { consumed } => {
                        pos += consumed;
                        *state = LoginLinkState::AwaitLogin;
                    }
                    Step::Frame {
                        consumed,
                        plaintext,
                    } => {
                        pos += consumed;
                        let mut at = 0;
                        while at < plaintext.len() {
                            let (msg, len) = ToShard::decode(&plaintext[at..])
                                .map_err(PeerError::Proto)?
                                .ok_or(PeerError::Proto(ProtoError::Truncated("login message")))?;
                            at += len;
                            match (msg, *state) {
                                (ToShard::Login { password }, LoginLinkState::AwaitLogin) => {
                                    let ok =
                                        memcmp_ct(password, login_password.expose().as_bytes());
                                    chan.room(out, FromShard::MAX)?;
                                    FromShard::LoginResult {
                                        result: if ok {
                                            RESULT_OK
                                        } else {
                                            RESULT_BAD_CREDENTIALS
                                        },
                                        shard_name: &shard_name,
                                    }
                                    .encode(out);
                                    if !ok {
                                        return Err(PeerError::Refused("wrong login password"));
                                    }
                                    *state = LoginLinkState::Ready;
                                }
                                (
                                    ToShard::Player {
                                        request_id,
                                        account_id,
                                        login_session_id,
                                        ip,
                                        account_name,
                                        token,
                                    },
                                    LoginLinkState::Ready,
                                ) => requests.push(PlayerRequest {
                                    request_id,
                                    account_id,
                                    login_session_id,
                                    ip,
                                    account_name: account_name.to_string(),
                                    token: *token,
                                }),
                                (
                                    ToShard::Cancel {
                                        account_id,
                                        login_session_id,
                                    },
                                    LoginLinkState::Ready,
                                ) => cancels.push((account_id, login_session_id)),
                                _ => return Err(PeerError::Refused("message out of order")),
                            }
                        }
                    }
                }
            }
        });
        let wrote = out.len() != out_before;
        if let Err(err) = result {
            let why = match err {
                FeedError::TooLarge => "frame too large".to_string(),
                FeedError::Process(e) => e.to_string(),
            };
            warn!("login link {}: {why}", client.index);
            self.clients
                .cl_disconnect(client, DisconnectReason::Protocol(why));
            return;
        }
        if wrote {
            self.clients.cl_wrote(client);
        }
        for (account_id, login_session_id) in cancels {
            self.module
                .proxy_cancel_socket(&mut self.clients, account_id, login_session_id);
        }
        for r in requests {
            match self.module.proxy_new_socket(
                &mut self.clients,
                &r.account_name,
                r.account_id,
                r.login_session_id,
                r.ip,
                &r.token,
            ) {
                Ok(socket) => {
                    self.pending
                        .insert(socket, (client, r.request_id, r.account_name));
                }
                Err(err) => {
                    info!("player {} cannot join: {err}", r.account_name);
                    self.send_to_login(
                        client,
                        &FromShard::PlayerResult {
                            request_id: r.request_id,
                            result: RESULT_NO_PROXY,
                            ticket: None,
                        },
                    );
                }
            }
        }
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

    /// Stops the client thread.
    pub fn shutdown(mut self) {
        self.clients.cl_disconnect_all(DisconnectReason::Shutdown);
        self.evbuf.close();
        self.clients.io().stop_and_join();
        info!("shard {:?} stopped", self.cfg.name);
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

/// `muta-shard`'s `main`.
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
    crate::daemon::init_logger(log::LevelFilter::Info);
    crate::daemon::install_panic_abort_hook();
    let signals = match crate::daemon::signal_pipes(&[
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("muta-shard: cannot install signal handlers: {err}");
            return 1;
        }
    };
    let mut server = match ShardServer::start(cfg, signals) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("muta-shard: {err}");
            return 1;
        }
    };
    server.main_loop();
    server.shutdown();
    0
}
