//! The shard's proxy module (thesis §3.6, "The Proxy Module of the Shard
//! Server"): what a game server embeds to serve players through MUTA
//! proxies.
//!
//! It keeps track of *proxy sockets*, one per player connected (or about to
//! connect) through a proxy, named by 32-bit handles, with the thesis's API:
//!
//! - [`ProxyModule::proxy_new_socket`]: the login server announced a player;
//!   pick the least-loaded proxy, send it `TPROXY_MSG_OPENED_SOCKET`, and
//!   report its answer later as [`ProxyEvent::SocketOpened`] (with the
//!   proxy's public address and key, for the login server to hand out);
//! - [`ProxyModule::proxy_cancel_socket`]: forget a player who has not
//!   connected yet;
//! - [`ProxyModule::proxy_delete_socket`]: disconnect a player;
//! - [`ProxyModule::proxy_forward_msg`]: a buffer to write a message for a
//!   player into (the thesis's `bbuf_t`). Messages are batched per player and,
//!   at [`ProxyModule::flush`], encrypted once per player per flush with the
//!   player's stream (received in `FPROXY_MSG_PLAYER_CRYPTCHAN`) into a
//!   `TPROXY_MSG_PLAYER_PACKET`, itself batched into the proxy link's frame.
//!
//! Players' messages come out as [`ProxyEvent`]s, after the same size checks
//! the proxy runs (`filter_client_frame`, "just in case"); a player whose
//! messages fail them is dropped.
//!
//! The module accepts any number of proxies, each checked by password
//! (`FPROXY_MSG_LOGIN`), and learns each one's public address, key and
//! capacity. It owns no sockets and no threads: the host program runs the
//! thesis runtime (client thread, event buffer, `Clients` pool) and hands the
//! module the events of its proxy listener, with access to the pool through
//! [`ProxySessions`].

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::client::{Clients, DisconnectReason, Session};
use crate::com::ClientRef;
use crate::config::Secret;
use crate::cryptchan::ABYTES;
use crate::cryptchan::{KeyPair, PublicKey, PushStream, TOKEN_BYTES, memcmp_ct};
use crate::proto::ProtoError;
use crate::proto::client::filter_client_frame;
use crate::proto::frame::{
    Channel, ChannelError, FRAME_LEN_BYTES, FeedError, Step, feed, seal_with,
};
use crate::proto::proxy_shard::{
    FProxyMsg, LOGIN_RESULT_BAD_PASSWORD, LOGIN_RESULT_OK, OPENED_SOCKET_OK,
    PLAYER_PACKET_DATA_MAX, PLAYER_PACKET_HEADER_BYTES, TPROXY_MSG_PLAYER_PACKET, TProxyMsg,
    put_player_packet_header,
};
use crate::secpool::PoolBuf;

/// Most plaintext bytes in one frame to a player; a longer batch is cut into
/// several frames, each in its own `TPROXY_MSG_PLAYER_PACKET`.
pub const PLAYER_FRAME_PLAINTEXT_MAX: usize = PLAYER_PACKET_DATA_MAX - FRAME_LEN_BYTES - ABYTES;
/// Bits of a socket handle that index the socket table; the rest count reuse.
const SOCKET_INDEX_BITS: u32 = 20;
/// Most proxy sockets at once (2^20).
pub const MAX_SOCKETS: usize = 1 << SOCKET_INDEX_BITS;

/// What the module needs from the host.
#[derive(Clone, Debug)]
pub struct ProxyModuleCfg {
    /// This shard's name, told to proxies in `TPROXY_MSG_LOGIN_RESULT`.
    pub shard_name: String,
    /// The password proxies must present.
    pub password: Secret,
    /// Most proxy sockets (players connected or expected) at once.
    pub max_sockets: usize,
    /// Most plaintext bytes queued for one player before it is dropped.
    pub player_out_max: usize,
    /// How long a socket waits for its player to connect through the proxy.
    pub connect_timeout: Duration,
    /// Largest frame a proxy may send (the pool's `in_buf_size`).
    pub in_buf_size: usize,
}

/// How the module finds a proxy link's state inside the host's per-connection
/// session type, which also serves the host's other connections.
pub trait ProxySessions: Session {
    /// This connection's proxy link, if it is one.
    fn proxy_link(&mut self) -> Option<&mut ProxyLink>;
}

/// Where a proxy link is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyLinkState {
    /// Key exchange not finished.
    #[default]
    Handshake,
    /// Keys exchanged; waiting for `FPROXY_MSG_LOGIN`.
    AwaitLogin,
    /// Logged in.
    Ready,
}

/// One connected proxy: its channel and what it told about itself.
#[derive(Debug)]
pub struct ProxyLink {
    /// The channel (acceptor side).
    pub chan: Channel,
    /// Where the link is.
    pub state: ProxyLinkState,
    /// Where players should connect (`FPROXY_MSG_LOGIN`).
    pub public_address: String,
    /// How many players the proxy takes.
    pub capacity: u32,
    /// Sockets bound to this proxy (reserved or connected).
    pub n_sockets: u32,
}

impl ProxyLink {
    /// A link for a newly accepted proxy connection.
    pub fn new(keys: Arc<KeyPair>, in_buf_size: usize) -> ProxyLink {
        let mut chan = Channel::acceptor(keys);
        chan.set_frame_max(in_buf_size.saturating_sub(FRAME_LEN_BYTES));
        ProxyLink {
            chan,
            state: ProxyLinkState::Handshake,
            public_address: String::new(),
            capacity: 0,
            n_sockets: 0,
        }
    }

    fn send(&mut self, out: &mut Vec<u8>, msg: &TProxyMsg<'_>) -> Result<(), ChannelError> {
        self.chan.room(out, TProxyMsg::CONTROL_MAX)?;
        msg.encode(out);
        Ok(())
    }

    /// The proxy's key, learned in the handshake.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.chan.peer_key()
    }
}

/// Where a proxy socket is.
enum SocketState {
    Free,
    /// `TPROXY_MSG_OPENED_SOCKET` sent; waiting for the proxy's answer.
    Opening,
    /// The proxy reserved a slot; waiting for the player's auth proof.
    Reserved,
    /// The player is connected; `push` encrypts what the shard sends it.
    Connected {
        push: Box<PushStream>,
    },
}

struct SocketSlot {
    generation: u32,
    state: SocketState,
    proxy: ClientRef,
    account_id: u64,
    login_session_id: u32,
    /// Plaintext messages for the player, not yet sealed.
    pending: Vec<u8>,
    /// The player has more than `player_out_max` waiting: drop it at flush.
    overflow: bool,
    /// A socket not connected by then is cancelled.
    deadline: Instant,
}

/// The answer to [`ProxyModule::proxy_new_socket`], sent to the login server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOpened {
    /// The socket.
    pub socket: u32,
    /// The proxy's public `HOST:PORT`, on success.
    pub proxy_address: Option<String>,
    /// The proxy's key, on success.
    pub proxy_key: Option<PublicKey>,
}

/// What happened to players, for the game.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyEvent {
    /// The proxy answered `TPROXY_MSG_OPENED_SOCKET`.
    SocketOpened(SocketOpened),
    /// The player authenticated at the proxy and can be sent messages.
    PlayerConnected {
        /// The socket.
        socket: u32,
    },
    /// Messages from a player, checked: `bytes[start..end]` of
    /// [`ProxyEvents::bytes`].
    PlayerPacket {
        /// The socket.
        socket: u32,
        /// Start in `ProxyEvents::bytes`.
        start: usize,
        /// End in `ProxyEvents::bytes`.
        end: usize,
    },
    /// The player is gone (left, dropped by the proxy or the shard, or its
    /// proxy went away); the handle is dead.
    PlayerDisconnected {
        /// The socket.
        socket: u32,
        /// Why, for the log.
        reason: &'static str,
    },
}

/// Events collected by one call, with the bytes of their packets (reused
/// between calls: no allocation once warm).
#[derive(Debug, Default)]
pub struct ProxyEvents {
    /// The events, in order.
    pub list: Vec<ProxyEvent>,
    /// Packet bytes the events point into.
    pub bytes: Vec<u8>,
}

impl ProxyEvents {
    /// Empties both lists, keeping their memory.
    pub fn clear(&mut self) {
        self.list.clear();
        self.bytes.clear();
    }
}

/// Why `proxy_new_socket` could not send a player anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewSocketError {
    /// No proxy is logged in, or all are full.
    NoProxy,
    /// `max_sockets` are in use.
    TooManySockets,
}

impl fmt::Display for NewSocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NewSocketError::NoProxy => "no proxy can take the player",
            NewSocketError::TooManySockets => "too many proxy sockets",
        })
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyModuleStats {
    /// Messages received from players (after the checks).
    pub msgs_in: u64,
    /// Frames sealed for players.
    pub frames_out: u64,
    /// Players dropped by the size checks.
    pub filtered: u64,
}

/// The proxy module (thesis §3.6).
pub struct ProxyModule {
    keys: Arc<KeyPair>,
    cfg: ProxyModuleCfg,
    sockets: Vec<SocketSlot>,
    free: Vec<u32>,
    /// Sockets with pending plaintext, sealed at the next flush.
    dirty: Vec<u32>,
    /// Proxies that are logged in, for picking the least loaded.
    proxies: Vec<ClientRef>,
    stats: ProxyModuleStats,
}

impl fmt::Debug for ProxyModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyModule")
            .field("proxies", &self.proxies.len())
            .field("sockets", &(self.sockets.len() - self.free.len()))
            .finish()
    }
}

impl ProxyModule {
    /// A module with no proxies yet; `keys` is the shard's key pair.
    pub fn new(keys: Arc<KeyPair>, cfg: ProxyModuleCfg) -> ProxyModule {
        ProxyModule {
            keys,
            cfg,
            sockets: Vec::new(),
            free: Vec::new(),
            dirty: Vec::new(),
            proxies: Vec::new(),
            stats: ProxyModuleStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyModuleStats {
        self.stats
    }

    /// The proxies logged in now.
    pub fn proxies(&self) -> &[ClientRef] {
        &self.proxies
    }

    /// A fresh link for a connection accepted on the proxy listener.
    pub fn new_link(&self) -> ProxyLink {
        ProxyLink::new(self.keys.clone(), self.cfg.in_buf_size)
    }

    fn handle(&self, index: u32) -> u32 {
        (self.sockets[index as usize].generation << SOCKET_INDEX_BITS) | index
    }

    fn slot(&mut self, socket: u32) -> Option<(u32, &mut SocketSlot)> {
        find_slot(&mut self.sockets, socket)
    }

    /// Creates a proxy socket for a player the login server announced (thesis
    /// `proxy_new_socket`) on the least-loaded proxy, and sends the proxy
    /// `TPROXY_MSG_OPENED_SOCKET`. The answer comes as
    /// [`ProxyEvent::SocketOpened`].
    pub fn proxy_new_socket<S: ProxySessions>(
        &mut self,
        clients: &mut Clients<S>,
        account_name: &str,
        account_id: u64,
        login_session_id: u32,
        ip: IpAddr,
        token: &[u8; TOKEN_BYTES],
    ) -> Result<u32, NewSocketError> {
        if self.sockets.len() - self.free.len() >= self.cfg.max_sockets.min(MAX_SOCKETS) {
            return Err(NewSocketError::TooManySockets);
        }
        // Least loaded: the smallest share of its capacity in use.
        let proxy = self
            .proxies
            .iter()
            .filter_map(|&c| {
                let link = clients.get_mut(c)?.session.proxy_link()?;
                (link.n_sockets < link.capacity)
                    .then_some((c, link.n_sockets as f64 / link.capacity as f64))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(c, _)| c)
            .ok_or(NewSocketError::NoProxy)?;
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.sockets.push(SocketSlot {
                    generation: 0,
                    state: SocketState::Free,
                    proxy,
                    account_id: 0,
                    login_session_id: 0,
                    pending: Vec::new(),
                    overflow: false,
                    deadline: Instant::now(),
                });
                (self.sockets.len() - 1) as u32
            }
        };
        let slot = &mut self.sockets[index as usize];
        slot.state = SocketState::Opening;
        slot.proxy = proxy;
        slot.account_id = account_id;
        slot.login_session_id = login_session_id;
        slot.pending.clear();
        slot.overflow = false;
        slot.deadline = Instant::now() + self.cfg.connect_timeout;
        let socket = self.handle(index);
        let sent = clients.cl_write(proxy, |session, out| {
            let link = session.proxy_link().expect("a proxy");
            link.n_sockets += 1;
            link.send(
                out,
                &TProxyMsg::OpenedSocket {
                    socket_id: socket,
                    account_id,
                    login_session_id,
                    ip,
                    account_name,
                    token,
                },
            )
        });
        if !matches!(sent, Some(Ok(()))) {
            self.free_socket(index);
            return Err(NewSocketError::NoProxy);
        }
        Ok(socket)
    }

    /// Forgets a player who has not connected yet (thesis
    /// `proxy_cancel_socket`): the login server gave up on them.
    pub fn proxy_cancel_socket<S: ProxySessions>(
        &mut self,
        clients: &mut Clients<S>,
        account_id: u64,
        login_session_id: u32,
    ) {
        let found = self.sockets.iter().position(|s| {
            matches!(s.state, SocketState::Opening | SocketState::Reserved)
                && s.account_id == account_id
                && s.login_session_id == login_session_id
        });
        if let Some(index) = found {
            let socket = self.handle(index as u32);
            self.close_at_proxy(clients, index as u32, socket);
        }
    }

    /// Disconnects a player (thesis `proxy_delete_socket`): the proxy is told
    /// with `TPROXY_MSG_CLOSED_SOCKET` and the handle is dead at once.
    pub fn proxy_delete_socket<S: ProxySessions>(&mut self, clients: &mut Clients<S>, socket: u32) {
        if let Some((index, _)) = self.slot(socket) {
            self.close_at_proxy(clients, index, socket);
        }
    }

    fn close_at_proxy<S: ProxySessions>(
        &mut self,
        clients: &mut Clients<S>,
        index: u32,
        socket: u32,
    ) {
        let proxy = self.sockets[index as usize].proxy;
        clients.cl_write(proxy, |session, out| {
            if let Some(link) = session.proxy_link() {
                link.n_sockets = link.n_sockets.saturating_sub(1);
                link.send(out, &TProxyMsg::ClosedSocket { socket_id: socket })
                    .ok();
            }
        });
        self.free_socket(index);
    }

    fn free_socket(&mut self, index: u32) {
        let slot = &mut self.sockets[index as usize];
        slot.state = SocketState::Free;
        slot.pending.clear();
        slot.overflow = false;
        slot.generation = (slot.generation + 1) & ((1 << (32 - SOCKET_INDEX_BITS)) - 1);
        self.free.push(index);
    }

    /// A buffer of `size` bytes to write one message for the player into
    /// (thesis `proxy_forward_msg`, which returns a `bbuf_t`). `None` if the
    /// socket is not connected, or the player was just dropped for having
    /// more than `player_out_max` bytes waiting.
    pub fn proxy_forward_msg(&mut self, socket: u32, size: usize) -> Option<&mut [u8]> {
        let limit = self.cfg.player_out_max;
        let (index, slot) = find_slot(&mut self.sockets, socket)?;
        if !matches!(slot.state, SocketState::Connected { .. }) {
            return None;
        }
        if slot.overflow {
            return None;
        }
        if slot.pending.len() + size > limit {
            // A player this far behind is dropped at the next flush (the pool
            // is not at hand here).
            slot.overflow = true;
            if slot.pending.is_empty() {
                self.dirty.push(index);
            }
            return None;
        }
        if slot.pending.is_empty() {
            self.dirty.push(index);
        }
        let start = slot.pending.len();
        slot.pending.resize(start + size, 0);
        Some(&mut slot.pending[start..])
    }

    /// Writes one whole message for the player (copying `msg`).
    pub fn proxy_send(&mut self, socket: u32, msg: &[u8]) -> bool {
        match self.proxy_forward_msg(socket, msg.len()) {
            Some(buf) => {
                buf.copy_from_slice(msg);
                true
            }
            None => false,
        }
    }

    /// Seals every player's pending messages into `TPROXY_MSG_PLAYER_PACKET`s
    /// on its proxy link (one client frame per player per flush). Call before
    /// the pool's `cl_flush`.
    pub fn flush<S: ProxySessions>(&mut self, clients: &mut Clients<S>, events: &mut ProxyEvents) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            let socket = self.handle(index);
            let slot = &mut self.sockets[index as usize];
            if slot.overflow {
                warn!(
                    "proxy socket {socket:#x}: over {} bytes queued; dropping the player",
                    self.cfg.player_out_max
                );
                self.close_at_proxy(clients, index, socket);
                events.list.push(ProxyEvent::PlayerDisconnected {
                    socket,
                    reason: "too much output queued (slow player)",
                });
                continue;
            }
            match &mut slot.state {
                SocketState::Connected { push } => {
                    let proxy = slot.proxy;
                    let pending = &slot.pending;
                    let mut frames = 0;
                    let sealed =
                        clients.cl_write(proxy, |session, out| -> Result<(), ChannelError> {
                            let link = session.proxy_link().ok_or(ChannelError::NotOpen)?;
                            for chunk in pending.chunks(PLAYER_FRAME_PLAINTEXT_MAX) {
                                let data_len = FRAME_LEN_BYTES + ABYTES + chunk.len();
                                link.chan.room(out, PLAYER_PACKET_HEADER_BYTES + data_len)?;
                                put_player_packet_header(
                                    out,
                                    TPROXY_MSG_PLAYER_PACKET,
                                    socket,
                                    data_len,
                                );
                                let start = out.len();
                                out.extend_from_slice(&[0, 0, 0]);
                                out.extend_from_slice(chunk);
                                seal_with(push, out, start)?;
                                frames += 1;
                            }
                            Ok(())
                        });
                    slot.pending.clear();
                    self.stats.frames_out += frames;
                    if !matches!(sealed, Some(Ok(()))) {
                        self.drop_socket(index, socket, "its proxy is gone", events);
                    }
                }
                _ => slot.pending.clear(),
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    fn drop_socket(
        &mut self,
        index: u32,
        socket: u32,
        reason: &'static str,
        events: &mut ProxyEvents,
    ) {
        let was_connected = matches!(
            self.sockets[index as usize].state,
            SocketState::Connected { .. }
        );
        self.free_socket(index);
        if was_connected {
            events
                .list
                .push(ProxyEvent::PlayerDisconnected { socket, reason });
        }
    }

    /// Once a second: sockets whose player never connected are cancelled.
    pub fn tick<S: ProxySessions>(&mut self, clients: &mut Clients<S>, now: Instant) {
        for index in 0..self.sockets.len() as u32 {
            let slot = &self.sockets[index as usize];
            if matches!(slot.state, SocketState::Opening | SocketState::Reserved)
                && now >= slot.deadline
            {
                let socket = self.handle(index);
                debug!("proxy socket {socket:#x}: the player never connected");
                self.close_at_proxy(clients, index, socket);
            }
        }
    }

    /// A connection on the proxy listener went away (from the pool's
    /// `take_disconnected`): its players are disconnected.
    pub fn proxy_gone(&mut self, proxy: ClientRef, events: &mut ProxyEvents) {
        if let Some(i) = self.proxies.iter().position(|&p| p == proxy) {
            self.proxies.swap_remove(i);
            info!("proxy link {} gone", proxy.index);
        }
        for index in 0..self.sockets.len() as u32 {
            let slot = &self.sockets[index as usize];
            if !matches!(slot.state, SocketState::Free) && slot.proxy == proxy {
                let socket = self.handle(index);
                let was = std::mem::replace(
                    &mut self.sockets[index as usize].state,
                    SocketState::Opening,
                );
                self.free_socket(index);
                match was {
                    SocketState::Connected { .. } => {
                        events.list.push(ProxyEvent::PlayerDisconnected {
                            socket,
                            reason: "its proxy went away",
                        })
                    }
                    SocketState::Opening => {
                        events.list.push(ProxyEvent::SocketOpened(SocketOpened {
                            socket,
                            proxy_address: None,
                            proxy_key: None,
                        }))
                    }
                    _ => {}
                }
            }
        }
    }

    /// Handles `EVENT_READ_CLIENT` for a connection on the proxy listener: the
    /// handshake, `FPROXY_MSG_LOGIN`, and the proxy's messages. Player events
    /// are appended to `events`.
    pub fn proxy_read<S: ProxySessions>(
        &mut self,
        clients: &mut Clients<S>,
        proxy: ClientRef,
        mut data: PoolBuf,
        now: Instant,
        events: &mut ProxyEvents,
    ) {
        let Some(slot) = clients.cl_read(proxy, data.len(), now) else {
            return;
        };
        let (session, in_buf, out) = slot.parts();
        let Some(link) = session.proxy_link() else {
            return;
        };
        let out_before = out.len();
        let ProxyLink {
            chan,
            state,
            public_address,
            capacity,
            ..
        } = link;
        let mut logged_in = false;
        let mut opened: Vec<(u32, u8)> = Vec::new();
        let mut cryptchans: Vec<(u32, PushStream)> = Vec::new();
        // Sockets the proxy closed, and sockets whose packets failed the checks
        // here (the proxy must be told to close those).
        let mut closes: Vec<u32> = Vec::new();
        let mut refused: Vec<u32> = Vec::new();
        let cfg = &self.cfg;
        let stats = &mut self.stats;
        let result = feed(
            in_buf,
            data.as_mut_slice(),
            cfg.in_buf_size,
            chan,
            |chan, buf| {
                let mut pos = 0;
                loop {
                    match chan.next(&mut buf[pos..], out)? {
                        Step::NeedMore => return Ok(pos),
                        Step::Handshake { consumed } => pos += consumed,
                        Step::Opened { consumed } => {
                            pos += consumed;
                            *state = ProxyLinkState::AwaitLogin;
                        }
                        Step::Frame {
                            consumed,
                            plaintext,
                        } => {
                            pos += consumed;
                            let mut at = 0;
                            while at < plaintext.len() {
                                let (msg, len) = FProxyMsg::decode(&plaintext[at..])
                                    .map_err(LinkError::Proto)?
                                    .ok_or(LinkError::Proto(ProtoError::Truncated(
                                        "proxy message",
                                    )))?;
                                at += len;
                                match (msg, *state) {
                                    (
                                        FProxyMsg::Login {
                                            password,
                                            public_address: address,
                                            capacity: cap,
                                        },
                                        ProxyLinkState::AwaitLogin,
                                    ) => {
                                        if !memcmp_ct(password, cfg.password.expose().as_bytes()) {
                                            chan.room(out, TProxyMsg::CONTROL_MAX)?;
                                            TProxyMsg::LoginResult {
                                                result: LOGIN_RESULT_BAD_PASSWORD,
                                                shard_name: &cfg.shard_name,
                                            }
                                            .encode(out);
                                            return Err(LinkError::Login("wrong password"));
                                        }
                                        *public_address = address.to_string();
                                        *capacity = cap;
                                        *state = ProxyLinkState::Ready;
                                        logged_in = true;
                                        chan.room(out, TProxyMsg::CONTROL_MAX)?;
                                        TProxyMsg::LoginResult {
                                            result: LOGIN_RESULT_OK,
                                            shard_name: &cfg.shard_name,
                                        }
                                        .encode(out);
                                    }
                                    (_, ProxyLinkState::Handshake | ProxyLinkState::AwaitLogin) => {
                                        return Err(LinkError::Login(
                                            "message before FPROXY_MSG_LOGIN",
                                        ));
                                    }
                                    (FProxyMsg::Login { .. }, ProxyLinkState::Ready) => {
                                        return Err(LinkError::Login("a second FPROXY_MSG_LOGIN"));
                                    }
                                    (FProxyMsg::OpenedSocketResult { socket_id, result }, _) => {
                                        opened.push((socket_id, result));
                                    }
                                    (
                                        FProxyMsg::PlayerCryptchan {
                                            socket_id,
                                            state: push,
                                        },
                                        _,
                                    ) => {
                                        cryptchans
                                            .push((socket_id, PushStream::import_state(push)));
                                    }
                                    (FProxyMsg::PlayerPacket { socket_id, data }, _) => {
                                        // The same size checks as the proxy, just in case.
                                        match filter_client_frame(data) {
                                            Ok(n) => {
                                                stats.msgs_in += n as u64;
                                                let start = events.bytes.len();
                                                events.bytes.extend_from_slice(data);
                                                events.list.push(ProxyEvent::PlayerPacket {
                                                    socket: socket_id,
                                                    start,
                                                    end: events.bytes.len(),
                                                });
                                            }
                                            Err(e) => {
                                                warn!(
                                                    "proxy socket {socket_id:#x}: packet refused by the size checks: {e}"
                                                );
                                                stats.filtered += 1;
                                                refused.push(socket_id);
                                            }
                                        }
                                    }
                                    (FProxyMsg::CloseSocket { socket_id, .. }, _) => {
                                        closes.push(socket_id)
                                    }
                                }
                            }
                        }
                    }
                }
            },
        );
        let wrote = out.len() != out_before;
        let address = public_address.clone();
        drop(data);
        if let Err(err) = result {
            let why = match err {
                FeedError::TooLarge => "frame larger than the pool's in_buf_size".to_string(),
                FeedError::Process(e) => e.to_string(),
            };
            warn!("proxy link {} ({}): {why}", proxy.index, slot.addr);
            clients.cl_disconnect(proxy, DisconnectReason::Protocol(why));
            return;
        }
        if logged_in {
            info!(
                "proxy {} logged in: players will connect to {address}",
                slot.addr
            );
            self.proxies.push(proxy);
        }
        if wrote {
            clients.cl_wrote(proxy);
        }
        for (socket, result) in opened {
            self.opened_socket_result(clients, proxy, socket, result, events);
        }
        for (socket, push) in cryptchans {
            match self.slot(socket) {
                Some((_, slot))
                    if slot.proxy == proxy && matches!(slot.state, SocketState::Reserved) =>
                {
                    slot.state = SocketState::Connected {
                        push: Box::new(push),
                    };
                    events.list.push(ProxyEvent::PlayerConnected { socket });
                }
                _ => debug!("FPROXY_MSG_PLAYER_CRYPTCHAN for unknown socket {socket:#x}"),
            }
        }
        for socket in refused {
            if let Some((index, slot)) = self.slot(socket)
                && slot.proxy == proxy
            {
                let was_connected = matches!(slot.state, SocketState::Connected { .. });
                self.close_at_proxy(clients, index, socket);
                if was_connected {
                    events.list.push(ProxyEvent::PlayerDisconnected {
                        socket,
                        reason: "its messages failed the size checks",
                    });
                }
            }
        }
        for socket in closes {
            if let Some((index, slot)) = self.slot(socket)
                && slot.proxy == proxy
            {
                let opening = matches!(slot.state, SocketState::Opening);
                if let Some(link) = clients.get_mut(proxy).and_then(|c| c.session.proxy_link()) {
                    link.n_sockets = link.n_sockets.saturating_sub(1);
                }
                self.drop_socket(index, socket, "closed by the proxy", events);
                if opening {
                    events.list.push(ProxyEvent::SocketOpened(SocketOpened {
                        socket,
                        proxy_address: None,
                        proxy_key: None,
                    }));
                }
            }
        }
    }

    fn opened_socket_result<S: ProxySessions>(
        &mut self,
        clients: &mut Clients<S>,
        proxy: ClientRef,
        socket: u32,
        result: u8,
        events: &mut ProxyEvents,
    ) {
        let Some((index, slot)) = self.slot(socket) else {
            return;
        };
        if slot.proxy != proxy || !matches!(slot.state, SocketState::Opening) {
            return;
        }
        let link = clients.get_mut(proxy).and_then(|c| c.session.proxy_link());
        let answer = match link {
            Some(link) if result == OPENED_SOCKET_OK => {
                slot.state = SocketState::Reserved;
                SocketOpened {
                    socket,
                    proxy_address: Some(link.public_address.clone()),
                    proxy_key: link.public_key(),
                }
            }
            other => {
                if let Some(link) = other {
                    link.n_sockets = link.n_sockets.saturating_sub(1);
                }
                self.free_socket(index);
                SocketOpened {
                    socket,
                    proxy_address: None,
                    proxy_key: None,
                }
            }
        };
        events.list.push(ProxyEvent::SocketOpened(answer));
    }
}

/// The live socket a handle names: index bits select the slot, the rest must
/// match its generation.
fn find_slot(sockets: &mut [SocketSlot], socket: u32) -> Option<(u32, &mut SocketSlot)> {
    let index = socket & ((1 << SOCKET_INDEX_BITS) - 1);
    let slot = sockets.get_mut(index as usize)?;
    (slot.generation == socket >> SOCKET_INDEX_BITS && !matches!(slot.state, SocketState::Free))
        .then_some((index, slot))
}

/// Why a proxy link is dropped.
enum LinkError {
    Channel(ChannelError),
    Proto(ProtoError),
    Login(&'static str),
}

impl From<ChannelError> for LinkError {
    fn from(e: ChannelError) -> LinkError {
        LinkError::Channel(e)
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Channel(e) => write!(f, "{e}"),
            LinkError::Proto(e) => write!(f, "protocol violation: {e}"),
            LinkError::Login(why) => f.write_str(why),
        }
    }
}
