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
//! Players' messages come out as [`ProxyEvent`]s, after the same size checks
//! the proxy runs (`filter_client_frame`, "just in case"); a player whose
//! messages fail them is dropped and its proxy told. A proxy may speak only
//! for its own sockets. The messages of one read are applied in the order
//! they arrived, so a player's first packet, batched behind its
//! `FPROXY_MSG_PLAYER_CRYPTCHAN`, is played, not lost. Every socket ends
//! with exactly one terminal event: `SocketOpened` without a ticket (the
//! proxy never reserved it), `SocketClosed` (reserved, never connected) or
//! `PlayerDisconnected` (was connected), so a host's per-socket state can
//! always be cleared.
//!
//! The module accepts any number of proxies, each checked by password
//! (`FPROXY_MSG_LOGIN`), and learns each one's public address, key and
//! capacity. It owns no sockets and no threads: the host program runs the
//! thesis runtime (client thread, event buffer, `Clients` pool) and hands the
//! module the events of its proxy listener, with access to the pool through
//! [`ProxySessions`].

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::client::{Clients, DisconnectReason, Session};
use crate::com::ClientRef;
use crate::config::Secret;
use crate::cryptchan::{ABYTES, KeyPair, PublicKey, PushStream, TOKEN_BYTES, memcmp_ct};
use crate::proto::ProtoError;
use crate::proto::client::filter_client_frame;
use crate::proto::frame::{
    Channel, ChannelError, FRAME_LEN_BYTES, FeedError, PeerError, Step, feed, seal_with,
};
use crate::proto::proxy_shard::{
    FProxyMsg, LOGIN_RESULT_BAD_PASSWORD, LOGIN_RESULT_OK, OPENED_SOCKET_OK,
    PLAYER_PACKET_DATA_MAX, PLAYER_PACKET_HEADER_BYTES, TPROXY_MSG_PLAYER_PACKET, TProxyMsg,
    put_player_packet_header,
};
use crate::secpool::PoolBuf;

mod direct;
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
    /// Largest frame a proxy may send (the pool's `in_buf_size`).
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
    Proxy(ClientRef),
    /// The player's own connection on the direct listener ([`DirectConn`]), once
    /// it has authenticated.
    Direct(Option<ClientRef>),
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

/// One message of a proxy's read, applied after the read in wire order.
enum Action {
    Opened {
        socket: u32,
        result: u8,
    },
    Cryptchan {
        socket: u32,
        push: PushStream,
    },
    Packet {
        socket: u32,
        start: usize,
        end: usize,
    },
    Refused {
        socket: u32,
    },
    Closed {
        socket: u32,
    },
}

/// The proxy module (thesis §3.6).
pub struct ProxyModule {
    keys: Arc<KeyPair>,
    cfg: ProxyModuleCfg,
    sockets: Vec<SocketSlot>,
    free: Vec<u32>,
    /// Sockets with pending plaintext (or overflow), handled at the next flush.
    dirty: Vec<u32>,
    /// Open sockets by (account, login session), for `proxy_cancel_socket`.
    by_session: HashMap<(u64, u32), u32>,
    /// Proxies that are logged in, for picking the least loaded.
    proxies: Vec<ClientRef>,
    /// Events for the host, taken with [`ProxyModule::take_events`].
    events: ProxyEvents,
    /// Reused by `proxy_read`.
    actions: Vec<Action>,
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
            by_session: HashMap::new(),
            proxies: Vec::new(),
            events: ProxyEvents::default(),
            actions: Vec::new(),
            direct_by_account: HashMap::new(),
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
        clients: &mut Clients<S>,
        account_name: &str,
        account_id: u64,
        login_session_id: u32,
        ip: IpAddr,
        token: &[u8; TOKEN_BYTES],
    ) -> Result<u32, NewSocketError> {
        if self.n_sockets() >= self.cfg.max_sockets.min(MAX_SOCKETS) {
            return Err(NewSocketError::TooManySockets);
        }
        if self.cfg.direct.is_some() {
            return Ok(self.direct_new_socket(
                clients,
                account_name,
                account_id,
                login_session_id,
                ip,
                token,
            ));
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
        // A newer login of the same session replaces an older socket.
        if let Some(&old) = self.by_session.get(&(account_id, login_session_id)) {
            self.close(clients, old, true, "replaced by a newer login");
        }
        let index = self.take_slot();
        let socket = self.handle(index);
        let sent = clients.cl_write(proxy, |session, out| {
            let link = session.proxy_link().expect("a proxy");
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
            )?;
            link.n_sockets += 1;
            Ok::<(), ChannelError>(())
        });
        if !matches!(sent, Some(Ok(()))) {
            self.free.push(index);
            return Err(NewSocketError::NoProxy);
        }
        let slot = &mut self.sockets[index as usize];
        slot.state = SocketState::Opening;
        slot.carrier = Carrier::Proxy(proxy);
        slot.account_id = account_id;
        slot.login_session_id = login_session_id;
        slot.deadline = Instant::now() + self.cfg.connect_timeout;
        self.by_session
            .insert((account_id, login_session_id), index);
        Ok(socket)
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

    /// Forgets a player who has not connected yet (thesis
    /// `proxy_cancel_socket`): the login server gave up on them.
    pub fn proxy_cancel_socket<S: ProxySessions>(
        &mut self,
        clients: &mut Clients<S>,
        account_id: u64,
        login_session_id: u32,
    ) {
        if let Some(&index) = self.by_session.get(&(account_id, login_session_id))
            && matches!(
                self.sockets[index as usize].state,
                SocketState::Opening | SocketState::Reserved(_)
            )
        {
            self.close(clients, index, true, "cancelled by the login server");
        }
    }

    /// Disconnects a player (thesis `proxy_delete_socket`): the proxy is told
    /// with `TPROXY_MSG_CLOSED_SOCKET` and the handle is dead at once.
    pub fn proxy_delete_socket<S: ProxySessions>(&mut self, clients: &mut Clients<S>, socket: u32) {
        if let Some((index, _)) = find_slot(&mut self.sockets, socket) {
            self.close(clients, index, true, "deleted by the shard");
        }
    }

    /// Ends socket `index`: updates its proxy's count (telling it with
    /// `TPROXY_MSG_CLOSED_SOCKET` if `tell_proxy`; a direct player's
    /// connection is closed instead), emits the socket's terminal event, and
    /// frees the slot.
    fn close<S: ProxySessions>(
        &mut self,
        clients: &mut Clients<S>,
        index: u32,
        tell_proxy: bool,
        reason: &'static str,
    ) {
        let socket = self.handle(index);
        match self.sockets[index as usize].carrier {
            Carrier::Proxy(proxy) => {
                clients.cl_write(proxy, |session, out| {
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
                clients.cl_disconnect(client, DisconnectReason::Closed(reason));
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
        if self
            .by_session
            .get(&(slot.account_id, slot.login_session_id))
            == Some(&index)
        {
            self.by_session
                .remove(&(slot.account_id, slot.login_session_id));
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
    /// past `PLAYER_FRAME_PLAINTEXT_MAX`), and drops players marked for
    /// overflow. Call before the pool's `cl_flush`.
    pub fn flush<S: ProxySessions>(&mut self, clients: &mut Clients<S>) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            let socket = self.handle(index);
            let slot = &mut self.sockets[index as usize];
            if slot.overflow {
                warn!(
                    "proxy socket {socket:#x}: over {} bytes queued; dropping the player",
                    self.cfg.player_out_max
                );
                self.close(clients, index, true, "too much output queued (slow player)");
                continue;
            }
            let SocketState::Connected { push } = &mut slot.state else {
                slot.pending.clear();
                slot.cuts.clear();
                continue;
            };
            let (pending, cuts) = (&slot.pending, &slot.cuts);
            let mut frames = 0;
            // One client frame per chunk, sealed with the player's stream; on
            // a proxy link each goes in a TPROXY_MSG_PLAYER_PACKET, to a
            // direct player as it is.
            let mut seal_chunks = |mut header: Option<&mut ProxyLink>,
                                   out: &mut Vec<u8>|
             -> Result<(), ChannelError> {
                let mut start = 0;
                for end in cuts.iter().copied().chain(std::iter::once(pending.len())) {
                    let chunk = &pending[start..end];
                    start = end;
                    if chunk.is_empty() {
                        continue;
                    }
                    if let Some(link) = header.as_deref_mut() {
                        let data_len = FRAME_LEN_BYTES + ABYTES + chunk.len();
                        link.chan.room(out, PLAYER_PACKET_HEADER_BYTES + data_len)?;
                        put_player_packet_header(out, TPROXY_MSG_PLAYER_PACKET, socket, data_len);
                    }
                    let frame_start = out.len();
                    out.extend_from_slice(&[0, 0, 0]);
                    out.extend_from_slice(chunk);
                    seal_with(push, out, frame_start)?;
                    frames += 1;
                }
                Ok(())
            };
            let sealed = match slot.carrier {
                Carrier::Proxy(proxy) => clients.cl_write(proxy, |session, out| {
                    let link = session.proxy_link().ok_or(ChannelError::NotOpen)?;
                    seal_chunks(Some(link), out)
                }),
                Carrier::Direct(Some(client)) => {
                    clients.cl_write(client, |_, out| seal_chunks(None, out))
                }
                Carrier::Direct(None) => None,
            };
            slot.pending.clear();
            slot.cuts.clear();
            self.stats.frames_out += frames;
            match (sealed, slot.carrier) {
                (Some(Ok(())), _) => {}
                (_, Carrier::Proxy(_)) => self.release(index, "its proxy is gone"),
                // Dropped by the pool (a slow reader), or sealing failed: the
                // socket and its connection end together.
                (_, Carrier::Direct(_)) => {
                    self.close(clients, index, true, "its connection failed or fell behind")
                }
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Once a second: sockets whose player never connected are cancelled.
    pub fn tick<S: ProxySessions>(&mut self, clients: &mut Clients<S>, now: Instant) {
        for index in 0..self.sockets.len() as u32 {
            let slot = &self.sockets[index as usize];
            if matches!(slot.state, SocketState::Opening | SocketState::Reserved(_))
                && now >= slot.deadline
            {
                debug!(
                    "proxy socket {:#x}: the player never connected",
                    self.handle(index)
                );
                self.close(clients, index, true, "the player never connected");
            }
        }
    }

    /// A connection on the proxy listener went away (from the pool's
    /// `take_disconnected`): its sockets end.
    pub fn proxy_gone(&mut self, proxy: ClientRef) {
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

    /// Handles `EVENT_READ_CLIENT` for a connection on the proxy listener: the
    /// handshake, `FPROXY_MSG_LOGIN`, and the proxy's messages, applied in the
    /// order they arrived.
    pub fn proxy_read<S: ProxySessions>(
        &mut self,
        clients: &mut Clients<S>,
        proxy: ClientRef,
        mut data: PoolBuf,
        now: Instant,
    ) {
        let Some(slot) = clients.cl_read(proxy, data.len(), now) else {
            return;
        };
        let addr = slot.addr;
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
        let ProxyModule {
            cfg,
            stats,
            actions,
            events,
            ..
        } = self;
        actions.clear();
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
                                    .map_err(PeerError::Proto)?
                                    .ok_or(PeerError::Proto(ProtoError::Truncated(
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
                                        let ok =
                                            memcmp_ct(password, cfg.password.expose().as_bytes());
                                        chan.room(out, TProxyMsg::CONTROL_MAX)?;
                                        TProxyMsg::LoginResult {
                                            result: if ok {
                                                LOGIN_RESULT_OK
                                            } else {
                                                LOGIN_RESULT_BAD_PASSWORD
                                            },
                                            shard_name: &cfg.shard_name,
                                        }
                                        .encode(out);
                                        if !ok {
                                            return Err(PeerError::Refused("wrong password"));
                                        }
                                        *public_address = address.to_string();
                                        *capacity = cap;
                                        *state = ProxyLinkState::Ready;
                                        logged_in = true;
                                    }
                                    (_, ProxyLinkState::Handshake | ProxyLinkState::AwaitLogin) => {
                                        return Err(PeerError::Refused(
                                            "message before FPROXY_MSG_LOGIN",
                                        ));
                                    }
                                    (FProxyMsg::Login { .. }, ProxyLinkState::Ready) => {
                                        return Err(PeerError::Refused(
                                            "a second FPROXY_MSG_LOGIN",
                                        ));
                                    }
                                    (FProxyMsg::OpenedSocketResult { socket_id, result }, _) => {
                                        actions.push(Action::Opened {
                                            socket: socket_id,
                                            result,
                                        });
                                    }
                                    (
                                        FProxyMsg::PlayerCryptchan {
                                            socket_id,
                                            state: push,
                                        },
                                        _,
                                    ) => {
                                        actions.push(Action::Cryptchan {
                                            socket: socket_id,
                                            push: PushStream::import_state(push),
                                        });
                                    }
                                    (FProxyMsg::PlayerPacket { socket_id, data }, _) => {
                                        // The same size checks as the proxy, just in case.
                                        match filter_client_frame(data) {
                                            Ok(n) => {
                                                stats.msgs_in += n as u64;
                                                let start = events.bytes.len();
                                                events.bytes.extend_from_slice(data);
                                                actions.push(Action::Packet {
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
                                                actions.push(Action::Refused { socket: socket_id });
                                            }
                                        }
                                    }
                                    (FProxyMsg::CloseSocket { socket_id, .. }, _) => {
                                        actions.push(Action::Closed { socket: socket_id });
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
            warn!("proxy link {} ({addr}): {why}", proxy.index);
            clients.cl_disconnect(proxy, DisconnectReason::Protocol(why));
            return;
        }
        if logged_in {
            info!("proxy {addr} logged in: players will connect to {address}");
            self.proxies.push(proxy);
        }
        if wrote {
            clients.cl_wrote(proxy);
        }
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            self.apply(clients, proxy, action);
        }
        self.actions = actions;
    }

    /// Applies one message of a proxy's read. A proxy speaks only for its own
    /// sockets: anything about another proxy's socket is dropped.
    fn apply<S: ProxySessions>(
        &mut self,
        clients: &mut Clients<S>,
        proxy: ClientRef,
        action: Action,
    ) {
        let socket = match &action {
            Action::Opened { socket, .. }
            | Action::Cryptchan { socket, .. }
            | Action::Packet { socket, .. }
            | Action::Refused { socket }
            | Action::Closed { socket } => *socket,
        };
        let Some((index, slot)) = find_slot(&mut self.sockets, socket)
            .filter(|(_, s)| s.carrier == Carrier::Proxy(proxy))
        else {
            self.stats.foreign += 1;
            debug!(
                "proxy link {}: message about socket {socket:#x}, not one of its own",
                proxy.index
            );
            return;
        };
        match (action, &slot.state) {
            (Action::Opened { result, .. }, SocketState::Opening) => {
                if result != OPENED_SOCKET_OK {
                    self.close(clients, index, false, "refused by the proxy");
                    return;
                }
                slot.state = SocketState::Reserved(None);
                let link = clients.get_mut(proxy).and_then(|c| c.session.proxy_link());
                self.events
                    .list
                    .push(ProxyEvent::SocketOpened(SocketOpened {
                        socket,
                        proxy_address: link.as_ref().map(|l| l.public_address.clone()),
                        proxy_key: link.and_then(|l| l.public_key()),
                    }));
            }
            (Action::Cryptchan { push, .. }, SocketState::Reserved(None)) => {
                slot.state = SocketState::Connected { push };
                self.events
                    .list
                    .push(ProxyEvent::PlayerConnected { socket });
            }
            (Action::Packet { start, end, .. }, SocketState::Connected { .. }) => {
                self.events
                    .list
                    .push(ProxyEvent::PlayerPacket { socket, start, end });
            }
            (Action::Refused { .. }, _) => {
                self.close(clients, index, true, "its messages failed the size checks");
            }
            (Action::Closed { .. }, _) => self.close(clients, index, false, "closed by the proxy"),
            (_, _) => {
                self.stats.foreign += 1;
                debug!(
                    "proxy link {}: message out of order for socket {socket:#x}",
                    proxy.index
                );
            }
        }
    }
}
