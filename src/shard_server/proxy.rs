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
//!   at [`ProxyModule::flush`], encrypted with the player's stream (received
//!   in `FPROXY_MSG_PLAYER_CRYPTCHAN`) into client frames — cut between
//!   messages, never inside one — each in a `TPROXY_MSG_PLAYER_PACKET`,
//!   itself batched into the proxy link's frame.
//!
//! Players' messages come out as [`ProxyEvent`]s (taken with
//! [`ProxyModule::take_events`]), after the same size checks the proxy runs
//! (`filter_client_frame`, "just in case"); a player whose messages fail them
//! is dropped and its proxy told. A proxy may speak only for its own sockets.
//! A proxy's messages are applied one by one in the order they arrived, so a
//! player's first packet, batched behind its `FPROXY_MSG_PLAYER_CRYPTCHAN`, is
//! played, not lost. Every socket ends with exactly one terminal event:
//! `SocketOpened` without a ticket (the proxy never reserved it),
//! `SocketClosed` (reserved, never connected) or `PlayerDisconnected` (was
//! connected), so a host's per-socket state can always be cleared.
//!
//! The module accepts any number of proxies, each checked by password
//! (`FPROXY_MSG_LOGIN`), and learns each one's public address, key and
//! capacity. It owns no sockets and no threads: the host program is a
//! [`Server`](crate::runtime::Server) on the shared runtime, and hands the
//! module the reads of its proxy listener together with its connection
//! [`Pool`], whose sessions give the module its links through
//! [`ProxySessions`].
//!
//! This file holds the socket table and the thesis's calls; reading a proxy
//! link (the handshake, `FPROXY_MSG_LOGIN`, one function per message) is in
//! `proxy/link.rs`, players connected to the shard itself in
//! `proxy/direct.rs`.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::com::ConnRef;
use crate::config::Secret;
use crate::conn::{DisconnectReason, Pool, Session};
use crate::cryptchan::{ABYTES, KeyPair, PublicKey, PushStream, TOKEN_BYTES};
use crate::proto::frame::{Channel, ChannelError, FRAME_LEN_BYTES, seal_with};
use crate::proto::proxy_shard::{
    PLAYER_PACKET_DATA_MAX, PLAYER_PACKET_HEADER_BYTES, TPROXY_MSG_PLAYER_PACKET, TProxyMsg,
    put_player_packet_header,
};

mod direct;
mod link;
use direct::DirectTicket;
pub use direct::{DirectCfg, DirectConn};

/// Most plaintext bytes in one frame to a player; a longer batch is cut into
/// several frames (between messages), each in its own
/// `TPROXY_MSG_PLAYER_PACKET`.
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
    /// Largest frame a proxy may send, with its length: the most a link's
    /// `in_buf` holds.
    pub in_buf_size: usize,
    /// Most plaintext bytes in one frame to a player (at most
    /// [`PLAYER_FRAME_PLAINTEXT_MAX`]); a longer batch is cut between messages.
    pub player_frame_max: usize,
    /// Serve players directly, without proxies ([`DirectCfg`]): if set, every new
    /// socket is a direct one.
    pub direct: Option<DirectCfg>,
}

/// How the module finds a proxy link's state inside the host's per-connection
/// session type, which also serves the host's other connections.
pub trait ProxySessions: Session {
    /// This connection's proxy link, if it is one.
    fn proxy_link(&mut self) -> Option<&mut ProxyLink>;
    /// This connection's direct player, if it is one.
    fn direct_conn(&mut self) -> Option<&mut DirectConn> {
        None
    }
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
    /// Sockets bound to this proxy (opening, reserved or connected).
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

/// What carries a socket's traffic to and from its player.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carrier {
    /// A proxy link (thesis §3.6): messages travel in
    /// `TPROXY_MSG_PLAYER_PACKET`s.
    Proxy(ConnRef),
    /// The player's own connection on the direct listener ([`DirectConn`]), once
    /// it has authenticated.
    Direct(Option<ConnRef>),
}

/// Where a proxy socket is.
enum SocketState {
    Free,
    /// `TPROXY_MSG_OPENED_SOCKET` sent; waiting for the proxy's answer.
    Opening,
    /// The proxy reserved a slot (or, for a direct socket, the shard did:
    /// then with the ticket to check); waiting for the player's auth proof.
    Reserved(Option<Box<DirectTicket>>),
    /// The player is connected; `push` encrypts what the shard sends it.
    Connected {
        push: PushStream,
    },
}

struct SocketSlot {
    generation: u32,
    state: SocketState,
    carrier: Carrier,
    account_id: u64,
    login_session_id: u32,
    /// Plaintext messages for the player, not yet sealed.
    pending: Vec<u8>,
    /// Offsets in `pending` where a new client frame starts: cuts fall
    /// between messages, so no frame ends inside one.
    cuts: Vec<usize>,
    /// More than `player_out_max` was queued: the player is dropped at flush.
    overflow: bool,
    /// A socket not connected by then is cancelled.
    deadline: Instant,
}

/// The answer to [`ProxyModule::proxy_new_socket`], for the login server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOpened {
    /// The socket.
    pub socket: u32,
    /// The proxy's public `HOST:PORT`, on success.
    pub proxy_address: Option<String>,
    /// The proxy's key, on success.
    pub proxy_key: Option<PublicKey>,
}

/// What happened to players, for the game. Each socket ends with exactly
/// one of `SocketOpened` without an address, `SocketClosed` or
/// `PlayerDisconnected`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyEvent {
    /// The proxy answered `TPROXY_MSG_OPENED_SOCKET` (without an address: it
    /// refused, or the socket ended before it answered; the handle is dead).
    SocketOpened(SocketOpened),
    /// The player authenticated at the proxy and can be sent messages.
    PlayerConnected {
        /// The socket.
        socket: u32,
        /// The player's effective address, as its proxy saw it (a direct
        /// player's: its TCP peer).
        addr: SocketAddr,
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
    /// A socket that never connected is gone (expired, cancelled, closed by
    /// its proxy, or its proxy went away); the handle is dead.
    SocketClosed {
        /// The socket.
        socket: u32,
        /// Why, for the log.
        reason: &'static str,
    },
    /// A connected player is gone (left, dropped by the proxy or the shard, or
    /// its proxy went away); the handle is dead.
    PlayerDisconnected {
        /// The socket.
        socket: u32,
        /// Why, for the log.
        reason: &'static str,
    },
}

/// Events with the bytes of their packets (reused between calls: no
/// allocation once warm).
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
    /// Messages from a proxy about a socket that is not its own, or not
    /// connected (dropped).
    pub foreign: u64,
}

/// The proxy module (thesis §3.6).
pub struct ProxyModule {
    keys: Arc<KeyPair>,
    cfg: ProxyModuleCfg,
    sockets: Vec<SocketSlot>,
    free: Vec<u32>,
    /// Sockets with pending plaintext (or overflow), handled at the next flush.
    dirty: Vec<u32>,
    /// The open socket of each account: at most one, as a newer login
    /// replaces an older socket, whatever its state (an account is never in
    /// game twice). Also finds the socket `proxy_cancel_socket` names.
    by_account: HashMap<u64, u32>,
    /// Proxies that are logged in, for picking the least loaded.
    proxies: Vec<ConnRef>,
    /// Events for the host, taken with [`ProxyModule::take_events`].
    events: ProxyEvents,
    /// Direct sockets waiting for their player, by account name.
    direct_by_account: HashMap<String, u32>,
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

/// The live socket a handle names: index bits select the slot, the rest must
/// match its generation.
fn find_slot(sockets: &mut [SocketSlot], socket: u32) -> Option<(u32, &mut SocketSlot)> {
    let index = socket & ((1 << SOCKET_INDEX_BITS) - 1);
    let slot = sockets.get_mut(index as usize)?;
    (slot.generation == socket >> SOCKET_INDEX_BITS && !matches!(slot.state, SocketState::Free))
        .then_some((index, slot))
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
            by_account: HashMap::new(),
            proxies: Vec::new(),
            events: ProxyEvents::default(),
            direct_by_account: HashMap::new(),
            stats: ProxyModuleStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyModuleStats {
        self.stats
    }

    /// The proxies logged in now.
    pub fn proxies(&self) -> &[ConnRef] {
        &self.proxies
    }

    /// Proxy sockets in use.
    pub fn n_sockets(&self) -> usize {
        self.sockets.len() - self.free.len()
    }

    /// A fresh link for a connection accepted on the proxy listener.
    pub fn new_link(&self) -> ProxyLink {
        ProxyLink::new(self.keys.clone(), self.cfg.in_buf_size)
    }

    /// Moves the events collected so far into `into` (emptied first) and
    /// returns whether there were any. The host handles them, possibly calling
    /// the module again, and repeats until none are left.
    pub fn take_events(&mut self, into: &mut ProxyEvents) -> bool {
        into.clear();
        std::mem::swap(&mut self.events, into);
        !into.list.is_empty()
    }

    fn handle(&self, index: u32) -> u32 {
        (self.sockets[index as usize].generation << SOCKET_INDEX_BITS) | index
    }

    /// Creates a proxy socket for a player the login server announced (thesis
    /// `proxy_new_socket`) on the least-loaded proxy, and sends the proxy
    /// `TPROXY_MSG_OPENED_SOCKET`. The answer comes as
    /// [`ProxyEvent::SocketOpened`].
    pub fn proxy_new_socket<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        account_name: &str,
        account_id: u64,
        login_session_id: u32,
        ip: IpAddr,
        token: &[u8; TOKEN_BYTES],
    ) -> Result<u32, NewSocketError> {
        // A login that replaces its account's older socket takes no more
        // (one slot of the handles' range stays free for that moment).
        let replacing = usize::from(self.by_account.contains_key(&account_id));
        if self.n_sockets() - replacing >= self.cfg.max_sockets.min(MAX_SOCKETS - 1) {
            return Err(NewSocketError::TooManySockets);
        }
        if self.cfg.direct.is_some() {
            return Ok(self.direct_new_socket(
                pool,
                account_name,
                account_id,
                login_session_id,
                ip,
                token,
            ));
        }
        let proxy = self
            .least_loaded_proxy(pool)
            .ok_or(NewSocketError::NoProxy)?;
        let index = self.take_slot();
        let msg = TProxyMsg::OpenedSocket {
            socket_id: self.handle(index),
            account_id,
            login_session_id,
            ip,
            account_name,
            token,
        };
        if !send_opened_socket(pool, proxy, &msg) {
            self.free.push(index);
            return Err(NewSocketError::NoProxy);
        }
        // Only now that the new login has its socket does the older go.
        self.replace_older_socket(pool, account_id);
        let login = (account_id, login_session_id);
        self.occupy(index, SocketState::Opening, Carrier::Proxy(proxy), login);
        Ok(self.handle(index))
    }

    /// The logged-in proxy with room whose capacity is least used, as a share
    /// (proxies may differ in size).
    fn least_loaded_proxy<S: ProxySessions>(&self, pool: &mut Pool<S>) -> Option<ConnRef> {
        self.proxies
            .iter()
            .filter_map(|&c| {
                let link = pool.get_mut(c)?.session.proxy_link()?;
                (link.n_sockets < link.capacity)
                    .then_some((c, link.n_sockets as f64 / link.capacity as f64))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(c, _)| c)
    }

    /// A free slot's index (growing the table if none is free).
    fn take_slot(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.sockets.push(SocketSlot {
                generation: 0,
                state: SocketState::Free,
                carrier: Carrier::Direct(None),
                account_id: 0,
                login_session_id: 0,
                pending: Vec::new(),
                cuts: Vec::new(),
                overflow: false,
                deadline: Instant::now(),
            });
            (self.sockets.len() - 1) as u32
        })
    }

    /// Puts a taken slot in use for a player's `login` (account id, login
    /// session id): its first state, its carrier, and the deadline for its
    /// player to connect. Shared by proxied and direct sockets.
    fn occupy(&mut self, index: u32, state: SocketState, carrier: Carrier, login: (u64, u32)) {
        let slot = &mut self.sockets[index as usize];
        slot.state = state;
        slot.carrier = carrier;
        (slot.account_id, slot.login_session_id) = login;
        slot.deadline = Instant::now() + self.cfg.connect_timeout;
        self.by_account.insert(login.0, index);
    }

    /// A newer login of an account replaces its older socket, reserved or
    /// playing: the older player is disconnected (its proxy told with
    /// `TPROXY_MSG_CLOSED_SOCKET`), so one account is never in game twice
    /// (port decision, as TFS's `replaceKickOnLogin`; `docs/protocol.md` §5).
    fn replace_older_socket<S: ProxySessions>(&mut self, pool: &mut Pool<S>, account_id: u64) {
        if let Some(&old) = self.by_account.get(&account_id) {
            info!("account {account_id}: a newer login replaces the older session");
            self.close(pool, old, true, "replaced by a newer login of the account");
        }
    }

    /// Forgets a player who has not connected yet (thesis
    /// `proxy_cancel_socket`): the login server gave up on them.
    pub fn proxy_cancel_socket<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        account_id: u64,
        login_session_id: u32,
    ) {
        if let Some(&index) = self.by_account.get(&account_id)
            && self.sockets[index as usize].login_session_id == login_session_id
            && matches!(
                self.sockets[index as usize].state,
                SocketState::Opening | SocketState::Reserved(_)
            )
        {
            self.close(pool, index, true, "cancelled by the login server");
        }
    }

    /// Disconnects a player (thesis `proxy_delete_socket`): the proxy is told
    /// with `TPROXY_MSG_CLOSED_SOCKET` and the handle is dead at once.
    pub fn proxy_delete_socket<S: ProxySessions>(&mut self, pool: &mut Pool<S>, socket: u32) {
        if let Some((index, _)) = find_slot(&mut self.sockets, socket) {
            self.close(pool, index, true, "deleted by the shard");
        }
    }

    /// Ends socket `index`: updates its proxy's count (telling it with
    /// `TPROXY_MSG_CLOSED_SOCKET` if `tell_proxy`; a direct player's
    /// connection is closed instead), emits the socket's terminal event, and
    /// frees the slot.
    fn close<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        index: u32,
        tell_proxy: bool,
        reason: &'static str,
    ) {
        let socket = self.handle(index);
        match self.sockets[index as usize].carrier {
            Carrier::Proxy(proxy) => {
                pool.write(proxy, |session, out| {
                    if let Some(link) = session.proxy_link() {
                        link.n_sockets = link.n_sockets.saturating_sub(1);
                        if tell_proxy {
                            link.send(out, &TProxyMsg::ClosedSocket { socket_id: socket })
                                .ok();
                        }
                    }
                });
            }
            // A direct player has no proxy to tell: its connection ends with
            // its socket, whoever ended the socket.
            Carrier::Direct(Some(client)) => {
                pool.disconnect(client, DisconnectReason::Closed(reason));
            }
            Carrier::Direct(None) => {}
        }
        self.release(index, reason);
    }

    /// Emits the socket's terminal event and frees the slot.
    fn release(&mut self, index: u32, reason: &'static str) {
        let socket = self.handle(index);
        let slot = &mut self.sockets[index as usize];
        let event = match std::mem::replace(&mut slot.state, SocketState::Free) {
            SocketState::Free => return,
            SocketState::Opening => ProxyEvent::SocketOpened(SocketOpened {
                socket,
                proxy_address: None,
                proxy_key: None,
            }),
            SocketState::Reserved(ticket) => {
                if let Some(ticket) = ticket
                    && self.direct_by_account.get(ticket.account_name()) == Some(&index)
                {
                    self.direct_by_account.remove(ticket.account_name());
                }
                ProxyEvent::SocketClosed { socket, reason }
            }
            SocketState::Connected { .. } => ProxyEvent::PlayerDisconnected { socket, reason },
        };
        if self.by_account.get(&slot.account_id) == Some(&index) {
            self.by_account.remove(&slot.account_id);
        }
        slot.pending.clear();
        slot.cuts.clear();
        slot.overflow = false;
        slot.generation = (slot.generation + 1) & ((1 << (32 - SOCKET_INDEX_BITS)) - 1);
        self.free.push(index);
        self.events.list.push(event);
    }

    /// A buffer of `size` bytes to write one message for the player into
    /// (thesis `proxy_forward_msg`, which returns a `bbuf_t`). `None` if the
    /// socket is not connected, the message is larger than a frame, or the
    /// player was just marked for dropping, having more than `player_out_max`
    /// bytes waiting.
    pub fn proxy_forward_msg(&mut self, socket: u32, size: usize) -> Option<&mut [u8]> {
        let limit = self.cfg.player_out_max;
        let frame_max = self.cfg.player_frame_max.min(PLAYER_FRAME_PLAINTEXT_MAX);
        let (index, slot) = find_slot(&mut self.sockets, socket)?;
        if !matches!(slot.state, SocketState::Connected { .. }) || slot.overflow || size > frame_max
        {
            return None;
        }
        let was_empty = slot.pending.is_empty();
        if slot.pending.len() + size > limit {
            // Dropped at the next flush (the pool is not at hand here).
            slot.overflow = true;
            if was_empty {
                self.dirty.push(index);
            }
            return None;
        }
        let frame_start = slot.cuts.last().copied().unwrap_or(0);
        if slot.pending.len() > frame_start && slot.pending.len() - frame_start + size > frame_max {
            slot.cuts.push(slot.pending.len());
        }
        if was_empty {
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
    /// on its proxy link (one client frame per player per flush, more only
    /// past `player_frame_max`), and drops players marked for overflow. Call
    /// before the pool's flush (the host's `Server::settle`). Allocates
    /// nothing once warm: the dirty list and each socket's buffers are reused.
    pub fn flush<S: ProxySessions>(&mut self, pool: &mut Pool<S>) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            self.flush_socket(pool, index);
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// One player's part of [`ProxyModule::flush`].
    fn flush_socket<S: ProxySessions>(&mut self, pool: &mut Pool<S>, index: u32) {
        let socket = self.handle(index);
        let slot = &mut self.sockets[index as usize];
        if slot.overflow {
            warn!(
                "proxy socket {socket:#x}: over {} bytes queued; dropping the player",
                self.cfg.player_out_max
            );
            self.close(pool, index, true, "too much output queued (slow player)");
            return;
        }
        let SocketState::Connected { push } = &mut slot.state else {
            slot.pending.clear();
            slot.cuts.clear();
            return;
        };
        let chunks = Chunks {
            pending: &slot.pending,
            cuts: &slot.cuts,
        };
        let mut frames = 0;
        let carrier = slot.carrier;
        let sealed = match carrier {
            Carrier::Proxy(proxy) => pool.write(proxy, |session, out| {
                let link = session.proxy_link().ok_or(ChannelError::NotOpen)?;
                chunks.seal(push, Some((link, socket)), out, &mut frames)
            }),
            Carrier::Direct(Some(client)) => {
                pool.write(client, |_, out| chunks.seal(push, None, out, &mut frames))
            }
            Carrier::Direct(None) => None,
        };
        slot.pending.clear();
        slot.cuts.clear();
        self.stats.frames_out += frames;
        match (sealed, carrier) {
            (Some(Ok(())), _) => {}
            (_, Carrier::Proxy(_)) => self.release(index, "its proxy is gone"),
            // Dropped by the pool (a slow reader), or sealing failed: the
            // socket and its connection end together.
            (_, Carrier::Direct(_)) => {
                self.close(pool, index, true, "its connection failed or fell behind")
            }
        }
    }

    /// Once a second: sockets whose player never connected are cancelled.
    pub fn tick<S: ProxySessions>(&mut self, pool: &mut Pool<S>, now: Instant) {
        for index in 0..self.sockets.len() as u32 {
            let slot = &self.sockets[index as usize];
            if matches!(slot.state, SocketState::Opening | SocketState::Reserved(_))
                && now >= slot.deadline
            {
                debug!(
                    "proxy socket {:#x}: the player never connected",
                    self.handle(index)
                );
                self.close(pool, index, true, "the player never connected");
            }
        }
    }

    /// A connection on the proxy listener went away (from the pool's
    /// `take_disconnected`): its sockets end.
    pub fn proxy_gone(&mut self, proxy: ConnRef) {
        if let Some(i) = self.proxies.iter().position(|&p| p == proxy) {
            self.proxies.swap_remove(i);
            info!("proxy link {} gone", proxy.index);
        }
        for index in 0..self.sockets.len() as u32 {
            let slot = &self.sockets[index as usize];
            if !matches!(slot.state, SocketState::Free) && slot.carrier == Carrier::Proxy(proxy) {
                self.release(index, "its proxy went away");
            }
        }
    }
}

/// Appends `TPROXY_MSG_OPENED_SOCKET` to a proxy's open frame and counts the
/// socket against its capacity; false if the link is gone or cannot take it.
fn send_opened_socket<S: ProxySessions>(
    pool: &mut Pool<S>,
    proxy: ConnRef,
    msg: &TProxyMsg<'_>,
) -> bool {
    let sent = pool.write(proxy, |session, out| {
        let link = session.proxy_link().ok_or(ChannelError::NotOpen)?;
        link.send(out, msg)?;
        link.n_sockets += 1;
        Ok::<(), ChannelError>(())
    });
    matches!(sent, Some(Ok(())))
}

/// A player's pending plaintext and where it is cut into client frames.
#[derive(Clone, Copy)]
struct Chunks<'a> {
    pending: &'a [u8],
    cuts: &'a [usize],
}

impl Chunks<'_> {
    /// Seals one client frame per chunk with the player's stream, straight
    /// into `out` (no copy in between): on a proxy link (`link`: the link and
    /// the socket) each goes in a `TPROXY_MSG_PLAYER_PACKET` appended to the
    /// link's open frame; to a direct player, as it is. `frames` counts the
    /// frames sealed.
    fn seal(
        self,
        push: &mut PushStream,
        mut link: Option<(&mut ProxyLink, u32)>,
        out: &mut Vec<u8>,
        frames: &mut u64,
    ) -> Result<(), ChannelError> {
        let ends = self
            .cuts
            .iter()
            .copied()
            .chain(std::iter::once(self.pending.len()));
        let mut start = 0;
        for end in ends {
            let chunk = &self.pending[start..end];
            start = end;
            if chunk.is_empty() {
                continue;
            }
            if let Some((link, socket)) = link.as_mut() {
                let data_len = FRAME_LEN_BYTES + ABYTES + chunk.len();
                link.chan.room(out, PLAYER_PACKET_HEADER_BYTES + data_len)?;
                put_player_packet_header(out, TPROXY_MSG_PLAYER_PACKET, *socket, data_len);
            }
            let frame_start = out.len();
            out.extend_from_slice(&[0, 0, 0]);
            out.extend_from_slice(chunk);
            seal_with(push, out, frame_start)?;
            *frames += 1;
        }
        Ok(())
    }
}
