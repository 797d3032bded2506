//! The proxy's player connections (thesis §3.5.2 `cl_accept`, `cl_read`;
//! §3.8.3 forming connections with player clients; §3.8.4 routing and packet
//! filtering).
//!
//! A connection passes through the stages its listener chooses:
//! [`PLAYER_STAGES`] on `proxy.listen`, or [`PROXIED_PLAYER_STAGES`] with
//! `client.proxy_protocol = "required"`, where a trusted forwarder's PROXY
//! protocol header comes first and names the player's address:
//!
//! ```text
//! accept ── (PROXY required) peer in client.trusted_forwarders? ──no──▶ refused, nothing read
//!    │               │yes
//!    │               ▼
//!    │          ProxyHeader ── a valid v1/v2 header within client.proxy_header_timeout_ms
//!    │               │          sets the effective address (LOCAL: the forwarder's own)
//!    ▼               ▼
//! effective address announced by a shard? ──no──▶ refused (shard_check_client_ip)
//!    │yes
//!    ▼
//! Handshake ── PUB_KEY in, PUB_KEY + STREAM_HEADER out, STREAM_HEADER in ──▶ Proof
//! Proof ── first frame: AuthProof, claims the shard's reservation ──▶ Play
//!          (shard_check_client_auth_proof; then FPROXY_MSG_PLAYER_CRYPTCHAN)
//! Play ── each frame: decrypt in place, filter, FPROXY_MSG_PLAYER_PACKET ──▶ ...
//! ```
//!
//! Entering the handshake runs the admission checks on the connection's
//! *effective* address (the TCP peer's, unless a stage before set another):
//! every check that can run before the key exchange does. For a listener
//! whose first stage is the handshake that is at accept, before the
//! connection takes a slot. Everything before `Play` must finish within
//! `client.handshake_timeout_ms` of the accept. Any failure — a bad
//! handshake, a failed MAC, a wrong proof, a frame the filter refuses —
//! disconnects that one player with a log line; if the player was bound to
//! a shard socket, its shard is told (`client_gone`).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use log::debug;

use crate::com::ConnRef;
use crate::conn::{DisconnectReason, Disconnected, Origin, Session};
use crate::cryptchan::ABYTES;
use crate::proto::ProtoError;
use crate::proto::client::{AuthProof, filter_client_frame};
use crate::proto::frame::{Channel, ChannelError, FrameError, Frames, Unit};
use crate::proto::proxy_protocol::{self, ProxyHeader};
use crate::proto::proxy_shard::{
    CLOSE_REASON_FILTERED, CLOSE_REASON_LEFT, CLOSE_REASON_LIMIT, CLOSE_REASON_PROXY,
    CLOSE_REASON_TIMEOUT, FProxyMsg, PLAYER_PACKET_DATA_MAX,
};

use super::Proxy;
use super::limits::{AddrKey, AddrRefusal, TokenBucket};
use super::link::Forwarded;
use super::otc::OtcPath;
use super::refusals::Refusal;

/// A stage a listener's connections pass through (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageKind {
    /// A forwarder's PROXY protocol header (`proto::proxy_protocol`): only
    /// from `client.trusted_forwarders`, checked at accept.
    ProxyHeader,
    /// The cryptchan key exchange. Entering it runs the admission checks.
    Handshake,
    /// The auth proof: the first frame.
    Proof,
    /// Frames filtered and forwarded to the player's shard.
    Play,
    /// An OTClient path (`proxy::otc`): frames of the multi-path protocol.
    OtcPath,
}

/// The stages of a player on `proxy.listen`.
pub const PLAYER_STAGES: &[StageKind] = &[StageKind::Handshake, StageKind::Proof, StageKind::Play];

/// The stages of a player on `proxy.listen` behind forwarders
/// (`client.proxy_protocol = "required"`).
pub const PROXIED_PLAYER_STAGES: &[StageKind] = &[
    StageKind::ProxyHeader,
    StageKind::Handshake,
    StageKind::Proof,
    StageKind::Play,
];

/// The stages of an OTC connection on `otc.listen`.
pub const OTC_PATH_STAGES: &[StageKind] = &[StageKind::OtcPath];

/// The stages of an OTC connection behind forwarders
/// (`otc.proxy_protocol = "required"`).
pub const PROXIED_OTC_PATH_STAGES: &[StageKind] = &[StageKind::ProxyHeader, StageKind::OtcPath];

/// Where an authenticated player's messages go: a socket on one shard link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The shard link the socket belongs to.
    pub shard: ConnRef,
    /// The proxy socket id the shard chose.
    pub socket_id: u32,
}

/// Where a player connection is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the forwarder's PROXY protocol header.
    ProxyHeader,
    /// Key exchange not finished.
    #[default]
    Handshake,
    /// Keys exchanged; the next frame must be the auth proof.
    Proof,
    /// Authenticated and bound to a shard socket (thesis `CL_FLAG_AUTHED`).
    Play(Binding),
    /// An OTC path: its sessions are in `ClSession::otc`.
    OtcPath,
}

/// The protocol part of a proxy `client_t`: its cryptchan, its stage and its
/// deadline.
#[derive(Debug, Default)]
pub struct ClSession {
    /// The channel (acceptor side), from the handshake on. After the proof
    /// only its pull half is used; the push half was handed to the shard.
    pub chan: Option<Channel>,
    /// Where the connection is.
    pub stage: Stage,
    /// Everything before `Play` must be done by then.
    pub deadline: Option<Instant>,
    /// The PROXY protocol header must be complete by then.
    pub header_deadline: Option<Instant>,
    /// The per-address entry the connection is counted under, from its
    /// admission on.
    pub addr_key: Option<AddrKey>,
    /// What it may still send, from the auth proof on.
    pub budget: Option<Budget>,
    /// An OTC path's sessions and budget.
    pub otc: OtcPath,
}

/// An authenticated player's budgets: messages and bytes (decrypted
/// frames) a second, each a token bucket with a burst.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    msgs: TokenBucket,
    bytes: TokenBucket,
}

/// The proxy never encrypts to players (the shard does), so there is nothing
/// to seal before a flush.
impl Session for ClSession {}

/// Why a player is dropped while its bytes are processed.
#[derive(Debug)]
pub(super) enum ClError {
    Header(ProtoError),
    OverBudget(&'static str),
    Backlogged,
    Frame(FrameError),
    Proof(&'static str),
    Filter(ProtoError),
    ShardGone,
    /// An OTC path broke a rule or passed its budget.
    Otc(Refusal, String),
}

impl From<FrameError> for ClError {
    fn from(e: FrameError) -> ClError {
        ClError::Frame(e)
    }
}

impl From<ChannelError> for ClError {
    fn from(e: ChannelError) -> ClError {
        ClError::Frame(FrameError::Channel(e))
    }
}

impl Proxy {
    /// The admission checks on a connection's effective address, cheapest
    /// first and all before the key exchange: with
    /// `client.require_announced_ip`, only an address some shard announced
    /// in a reservation (thesis `shard_check_client_ip`); the share of slots
    /// connections before their proof may hold, unless the address was
    /// announced (a player who just logged in); the address's connections
    /// and rate; the handshakes of all clients. `in_pool`: the connection
    /// already holds a slot (it passed a stage before). Returns the entry
    /// it is counted under, to release when it goes.
    fn admit(&mut self, ip: IpAddr, now: Instant, in_pool: bool) -> Result<AddrKey, Refusal> {
        let result = self.admission(ip, now, in_pool);
        if let Err(class) = result {
            self.stats.refusals.count(class);
            debug!("refused {ip}: {}", class.as_str());
        }
        result
    }

    fn admission(&mut self, ip: IpAddr, now: Instant, in_pool: bool) -> Result<AddrKey, Refusal> {
        let announced = self.reservations.is_announced(ip);
        if self.settings.require_announced_ip && !announced {
            return Err(Refusal::NotAnnounced);
        }
        // Live connections only: a slot closing (a lost shard's players, for
        // one turn) holds no one's room.
        let unauthenticated = self
            .clients
            .n_live()
            .saturating_sub(usize::from(in_pool))
            .saturating_sub(self.n_playing)
            .saturating_sub(self.otc.n_paths());
        if unauthenticated >= self.settings.unauthenticated_max && !announced {
            return Err(Refusal::UnauthenticatedFull);
        }
        let key = AddrKey::of(ip);
        self.addrs.admit(key, now).map_err(|e| match e {
            AddrRefusal::TooManyConns => Refusal::AddrConns,
            AddrRefusal::TooFast => Refusal::AddrRate,
            AddrRefusal::TableFull => Refusal::AddrTableFull,
        })?;
        if !self.handshakes.take(1, self.settings.handshakes, now) {
            self.addrs.release(key);
            return Err(Refusal::HandshakeRate);
        }
        Ok(key)
    }

    /// On a listener that requires the PROXY protocol, only a trusted
    /// forwarder may connect: anyone else could name any address.
    fn admit_forwarder(&mut self, listener: u32, peer: SocketAddr) -> bool {
        let otc = self.is_otc_listener(listener);
        let trusted = if otc {
            self.otc.trusted_forwarders()
        } else {
            &self.settings.trusted_forwarders
        };
        if !trusted.contains(peer.ip()) {
            self.stats.refusals.count(Refusal::UntrustedForwarder);
            let key = if otc { "otc" } else { "client" };
            debug!("refused {peer}: not in {key}.trusted_forwarders");
            return false;
        }
        true
    }

    /// True if `listener` is the OTC front end's.
    fn is_otc_listener(&self, listener: u32) -> bool {
        self.listeners
            .get(listener as usize)
            .is_some_and(|stages| stages.contains(&StageKind::OtcPath))
    }

    /// An OTC path's admission: the per-address limits only (no key
    /// exchange follows, and no shard announces OTC clients).
    fn admit_path(&mut self, ip: IpAddr, now: Instant) -> Result<AddrKey, Refusal> {
        let key = AddrKey::of(ip);
        let result = self.addrs.admit(key, now).map_err(|e| match e {
            AddrRefusal::TooManyConns => Refusal::AddrConns,
            AddrRefusal::TooFast => Refusal::AddrRate,
            AddrRefusal::TableFull => Refusal::AddrTableFull,
        });
        match result {
            Ok(()) => Ok(key),
            Err(class) => {
                self.stats.refusals.count(class);
                debug!("refused OTC path from {ip}: {}", class.as_str());
                Err(class)
            }
        }
    }

    /// Handles `EVENT_ACCEPT_CLIENT` (thesis `cl_accept`): a connection is
    /// admitted or refused at once, before it takes a slot or anything is
    /// read (the forwarder check if it starts with a PROXY protocol header,
    /// the address checks if with the handshake); then it gets a slot, its
    /// deadlines and its first stage.
    pub(super) fn cl_accept(
        &mut self,
        listener: u32,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<ConnRef> {
        // Accepted before the drain closed the listeners: refused.
        if self.draining {
            return None;
        }
        let first = *self.listeners.get(listener as usize)?.first()?;
        // Refused: the runtime drops the socket, closing it.
        let key = match first {
            StageKind::ProxyHeader if self.admit_forwarder(listener, peer) => None,
            StageKind::Handshake => Some(self.admit(peer.ip(), now, false).ok()?),
            StageKind::OtcPath => Some(self.admit_path(peer.ip(), now).ok()?),
            _ => return None, // (no listener starts with the proof or play)
        };
        let Some(client) = self.clients.accept(listener, peer, now) else {
            if let Some(key) = key {
                self.addrs.release(key);
            }
            return None;
        };
        let slot = self.clients.get_mut(client).expect("just accepted");
        slot.session.addr_key = key;
        slot.session.deadline = Some(now + self.settings.handshake_timeout);
        if first == StageKind::ProxyHeader {
            slot.session.header_deadline = Some(now + self.settings.proxy_header_timeout);
        }
        self.cl_enter(client, first, now);
        Some(client)
    }

    /// The stages of the listener that accepted `client`.
    fn stages_of(&self, client: ConnRef) -> &'static [StageKind] {
        match self.clients.get(client).map(|s| s.origin()) {
            Some(Origin::Listener(l)) => self.listeners.get(l as usize).copied().unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The connection moves on from stage `from` to the next its listener
    /// has (from the handshake: the proof).
    fn cl_next_stage(
        &mut self,
        client: ConnRef,
        from: StageKind,
        now: Instant,
    ) -> Result<(), ClError> {
        let stages = self.stages_of(client);
        let next = stages
            .iter()
            .position(|&s| s == from)
            .and_then(|i| stages.get(i + 1));
        match next {
            Some(&next) => {
                self.cl_enter(client, next, now);
                Ok(())
            }
            None => Err(ClError::Proof(
                "no stage after this one (bug: the listener's stages)",
            )),
        }
    }

    /// A connection enters a stage of its listener. Entering the handshake
    /// makes its channel, and, for a listener whose connections pass a stage
    /// before it (one that may set the effective address), runs the
    /// admission checks on the effective address: a listener that starts
    /// with the handshake has run them at accept. Play is entered with its
    /// binding, by the proof.
    fn cl_enter(&mut self, client: ConnRef, stage: StageKind, now: Instant) {
        let first = self.stages_of(client).first() == Some(&stage);
        let Some(addr) = self.clients.get(client).map(|s| s.addr()) else {
            return;
        };
        let stage = match stage {
            StageKind::ProxyHeader => Stage::ProxyHeader,
            StageKind::Handshake if !first => match self.admit(addr.ip(), now, true) {
                Ok(key) => {
                    if let Some(slot) = self.clients.get_mut(client) {
                        slot.session.addr_key = Some(key);
                    }
                    return self.cl_enter_handshake(client);
                }
                Err(class) => {
                    let refused = match class {
                        Refusal::NotAnnounced => {
                            DisconnectReason::Closed("no shard announced its address")
                        }
                        class => DisconnectReason::Limit(class.as_str()),
                    };
                    self.clients.disconnect(client, refused);
                    return;
                }
            },
            StageKind::Handshake => return self.cl_enter_handshake(client),
            StageKind::OtcPath if !first => match self.admit_path(addr.ip(), now) {
                Ok(key) => {
                    if let Some(slot) = self.clients.get_mut(client) {
                        slot.session.addr_key = Some(key);
                    }
                    return self.otc_enter_path(client, now);
                }
                Err(class) => {
                    self.clients
                        .disconnect(client, DisconnectReason::Limit(class.as_str()));
                    return;
                }
            },
            StageKind::OtcPath => return self.otc_enter_path(client, now),
            StageKind::Proof => Stage::Proof,
            StageKind::Play => return,
        };
        if let Some(slot) = self.clients.get_mut(client) {
            slot.session.stage = stage;
        }
    }

    /// The handshake stage: the connection's channel is made.
    fn cl_enter_handshake(&mut self, client: ConnRef) {
        let mut chan = Channel::acceptor(self.keys.clone());
        // A frame must fit the buffer and, once decrypted, one
        // FPROXY_MSG_PLAYER_PACKET.
        chan.set_frame_max(
            (self.settings.client_in_buf_size - 2).min(PLAYER_PACKET_DATA_MAX + ABYTES),
        );
        if let Some(slot) = self.clients.get_mut(client) {
            slot.session.chan = Some(chan);
            slot.session.stage = Stage::Handshake;
        }
    }

    /// Handles `EVENT_READ_CLIENT` (thesis `cl_read`): runs the bytes through
    /// the player's stages: the PROXY protocol header first, if the
    /// listener has one, then the channel. Whole frames are decrypted in
    /// place in the secpool block; only a frame (or header) split across
    /// reads is copied.
    pub(super) fn cl_read(&mut self, client: ConnRef, data: &mut [u8], now: Instant) {
        let Some(mut in_buf) = self.clients.begin_read(client, data.len(), now) else {
            return; // stale: the block goes back to secpool
        };
        let result = self.cl_bytes(client, &mut in_buf, data, now);
        self.clients.end_read(client, in_buf);
        if let Err(err) = result {
            self.cl_refuse(client, err);
        }
    }

    fn cl_bytes(
        &mut self,
        client: ConnRef,
        in_buf: &mut Vec<u8>,
        mut data: &mut [u8],
        now: Instant,
    ) -> Result<(), ClError> {
        let stage = self.clients.get(client).map(|s| s.session.stage);
        if stage == Some(Stage::ProxyHeader) {
            match self.cl_proxy_header(client, in_buf, data, now)? {
                Some(used) => data = &mut data[used..],
                None => return Ok(()), // the header is not complete yet
            }
        }
        if self.clients.get(client).map(|s| s.session.stage) == Some(Stage::OtcPath) {
            return self.otc_path_read(client, in_buf, data, now);
        }
        let mut frames = Frames::new(in_buf, data, self.settings.client_in_buf_size);
        self.cl_units(client, &mut frames, now)
    }

    /// The PROXY protocol header (`proto::proxy_protocol`), which may come
    /// split across reads: kept in `in_buf` until complete (at most
    /// `HEADER_MAX` bytes). Once decoded, the named source becomes the
    /// connection's effective address (a `LOCAL` header, a forwarder's
    /// health check, keeps the forwarder's), and the connection moves on to
    /// the handshake, which checks that address. Returns how many bytes of
    /// `data` the header took, or `None` while it is incomplete.
    fn cl_proxy_header(
        &mut self,
        client: ConnRef,
        in_buf: &mut Vec<u8>,
        data: &[u8],
        now: Instant,
    ) -> Result<Option<usize>, ClError> {
        let had = in_buf.len();
        let decoded = if had == 0 {
            proxy_protocol::decode(data)
        } else {
            in_buf.extend_from_slice(&data[..data.len().min(proxy_protocol::HEADER_MAX - had)]);
            proxy_protocol::decode(in_buf)
        };
        let Some((header, len)) = decoded.map_err(ClError::Header)? else {
            if had == 0 {
                in_buf.extend_from_slice(data);
            }
            // The decoder refuses a header that would pass HEADER_MAX, so an
            // incomplete one always fits.
            debug_assert!(in_buf.len() < proxy_protocol::HEADER_MAX);
            return Ok(None);
        };
        in_buf.clear();
        if let ProxyHeader::Proxy { src, .. } = header {
            let peer = self.clients.get(client).map(|s| s.peer());
            debug!("{client} ({src}): through forwarder {peer:?}");
            self.clients.set_addr(client, src);
        }
        if let Some(slot) = self.clients.get_mut(client) {
            slot.session.header_deadline = None;
        }
        self.cl_next_stage(client, StageKind::ProxyHeader, now)?;
        Ok(Some(len - had))
    }

    fn cl_units(
        &mut self,
        client: ConnRef,
        frames: &mut Frames<'_>,
        now: Instant,
    ) -> Result<(), ClError> {
        loop {
            let Some(slot) = self.clients.get_mut(client) else {
                return Ok(()); // dropped meanwhile
            };
            let (session, out) = slot.session_and_out();
            let Some(chan) = session.chan.as_mut() else {
                return Ok(());
            };
            match frames.next(chan, out)? {
                None => return Ok(()),
                Some(Unit::Opened) => self.cl_next_stage(client, StageKind::Handshake, now)?,
                Some(Unit::Frame(frame)) => self.cl_frame(client, frame, now)?,
            }
        }
    }

    /// One decrypted frame of a player, by its stage.
    fn cl_frame(&mut self, client: ConnRef, frame: &[u8], now: Instant) -> Result<(), ClError> {
        let Some(slot) = self.clients.get(client) else {
            return Ok(());
        };
        match slot.session.stage {
            // The channel yields frames only once open; refused, not assumed.
            Stage::ProxyHeader | Stage::Handshake | Stage::OtcPath => {
                Err(ClError::Proof("a frame before the handshake ended"))
            }
            Stage::Proof => self.cl_proof(client, frame, now),
            Stage::Play(binding) => self.cl_forward(client, binding, frame, now),
        }
    }

    /// The auth proof (thesis `shard_check_client_auth_proof`): the shard by
    /// name, then its reservation of the account, checked with the token
    /// (constant time), before its deadline, from the address the shard
    /// announced. The push half of the player's stream goes to the shard in
    /// `FPROXY_MSG_PLAYER_CRYPTCHAN`, the reservation is claimed, and from
    /// then on the player plays.
    fn cl_proof(&mut self, client: ConnRef, frame: &[u8], now: Instant) -> Result<(), ClError> {
        let proof =
            AuthProof::decode_frame(frame).map_err(|_| ClError::Proof("not an auth proof"))?;
        let shard = self
            .ready_link_named(proof.shard_name)
            .ok_or(ClError::Proof("unknown shard"))?;
        let slot = self.clients.get_mut(client).ok_or(ClError::ShardGone)?;
        let from = self.settings.require_announced_ip.then(|| slot.addr().ip());
        let found = self
            .reservations
            .check(shard, proof.account_name, proof.token, from, now)
            .map_err(|e| ClError::Proof(e.as_str()))?;
        let chan = slot.session.chan.as_mut().ok_or(ClError::ShardGone)?;
        let state = chan.hand_over_push()?;
        let binding = Binding {
            shard,
            socket_id: found.socket_id,
        };
        let msg = FProxyMsg::PlayerCryptchan {
            socket_id: binding.socket_id,
            addr: slot.addr(),
            state: &state,
        };
        if !self.link_send(shard, &msg) {
            return Err(ClError::ShardGone);
        }
        // Only now, with the shard told, is the reservation used up (a token
        // works once); had the shard not been told, it would expire and the
        // shard hear of it.
        self.reservations.claim(shard, binding.socket_id);
        self.bind_player(binding, client);
        if let Some(slot) = self.clients.get_mut(client) {
            slot.session.stage = Stage::Play(binding);
            slot.session.budget = Some(Budget {
                msgs: TokenBucket::full(self.settings.player_msgs, now),
                bytes: TokenBucket::full(self.settings.player_bytes, now),
            });
            debug!("{client} ({}): authenticated", slot.addr());
            self.n_playing += 1;
        }
        self.stats.authenticated += 1;
        Ok(())
    }

    /// A frame of an authenticated player: filtered by the message table,
    /// paid for from its budgets, then forwarded whole (thesis
    /// `shard_forward_client_packet`).
    fn cl_forward(
        &mut self,
        client: ConnRef,
        binding: Binding,
        frame: &[u8],
        now: Instant,
    ) -> Result<(), ClError> {
        let n_msgs = filter_client_frame(frame).map_err(ClError::Filter)?;
        self.cl_spend(client, n_msgs as u64, frame.len() as u64, now)?;
        match self.shard_forward_client_packet(binding, frame) {
            Forwarded::Sent => {}
            Forwarded::LinkGone => return Err(ClError::ShardGone),
            Forwarded::Backlogged => return Err(ClError::Backlogged),
        }
        self.stats.msgs_to_shards += n_msgs as u64;
        Ok(())
    }

    /// Takes a frame's messages and bytes from the player's budgets; a
    /// player over either is cut off.
    fn cl_spend(
        &mut self,
        client: ConnRef,
        msgs: u64,
        bytes: u64,
        now: Instant,
    ) -> Result<(), ClError> {
        let (msg_rate, byte_rate) = (self.settings.player_msgs, self.settings.player_bytes);
        let Some(budget) = self
            .clients
            .get_mut(client)
            .and_then(|s| s.session.budget.as_mut())
        else {
            return Ok(());
        };
        if !budget.msgs.take(msgs, msg_rate, now) {
            return Err(ClError::OverBudget("client.player_msgs_per_s"));
        }
        if !budget.bytes.take(bytes, byte_rate, now) {
            return Err(ClError::OverBudget("client.player_bytes_per_s"));
        }
        Ok(())
    }

    /// Disconnects a player whose bytes broke a rule or passed a limit, with
    /// the reason, counting it by class.
    fn cl_refuse(&mut self, client: ConnRef, err: ClError) {
        let playing = self
            .clients
            .get(client)
            .is_some_and(|s| matches!(s.session.stage, Stage::Play(_)));
        let frame_class = if playing {
            Refusal::Filtered
        } else {
            Refusal::BadHandshake
        };
        let (class, reason) = match err {
            ClError::Header(e) => (
                Some(Refusal::BadProxyHeader),
                DisconnectReason::Protocol(format!("PROXY protocol header refused: {e}")),
            ),
            ClError::Frame(FrameError::TooLarge) => (
                Some(frame_class),
                DisconnectReason::Protocol("frame larger than client.in_buf_size".into()),
            ),
            ClError::Frame(FrameError::Channel(e)) => {
                (Some(frame_class), DisconnectReason::Protocol(e.to_string()))
            }
            ClError::Proof(why) => {
                self.stats.auth_failed += 1;
                let reason = DisconnectReason::Protocol(format!("auth proof refused: {why}"));
                (Some(Refusal::AuthFailed), reason)
            }
            ClError::Filter(e) => {
                self.stats.filtered += 1;
                let reason = DisconnectReason::Protocol(format!("filtered: {e}"));
                (Some(Refusal::Filtered), reason)
            }
            ClError::OverBudget(key) => (Some(Refusal::OverBudget), DisconnectReason::Limit(key)),
            ClError::Backlogged => (
                Some(Refusal::LinkBacklogged),
                DisconnectReason::Limit("its shard link's output is backed up"),
            ),
            ClError::ShardGone => (None, DisconnectReason::Closed("its shard is not connected")),
            ClError::Otc(Refusal::OtcPathBudget, _) => (
                Some(Refusal::OtcPathBudget),
                DisconnectReason::Limit("otc.path_frames_per_s"),
            ),
            ClError::Otc(class, why) => (Some(class), DisconnectReason::Protocol(why)),
        };
        if let Some(class) = class {
            self.stats.refusals.count(class);
        }
        self.clients.disconnect(client, reason);
    }

    /// Disconnects connections that have not sent their PROXY protocol
    /// header by its deadline (`client.proxy_header_timeout_ms`), or passed
    /// their auth proof by theirs (`client.handshake_timeout_ms`).
    pub(super) fn expire_handshakes(&mut self, now: Instant) {
        let mut late = std::mem::take(&mut self.scratch_clients);
        late.extend(self.clients.iter_live().filter_map(|(client, slot)| {
            let s = &slot.session;
            let late_header = s.header_deadline.is_some_and(|d| now >= d);
            let late_proof = s.deadline.is_some_and(|d| now >= d);
            (!matches!(s.stage, Stage::Play(_)) && (late_header || late_proof)).then_some(client)
        }));
        for &client in &late {
            let header = self
                .clients
                .get(client)
                .is_some_and(|s| s.session.stage == Stage::ProxyHeader);
            let why = if header {
                self.stats.refusals.count(Refusal::ProxyHeaderTimeout);
                "no complete PROXY protocol header before its deadline"
            } else {
                self.stats.refusals.count(Refusal::HandshakeTimeout);
                "no valid auth proof before the handshake deadline"
            };
            self.clients
                .disconnect(client, DisconnectReason::Protocol(why.into()));
        }
        late.clear();
        self.scratch_clients = late;
    }

    /// A player left or was dropped (thesis `shard_delete_client_info` with
    /// `inform_shard`): if it was bound to a socket of a link that still has
    /// it, the socket is removed and the shard told with
    /// `FPROXY_MSG_CLOSE_SOCKET`. A socket the shard closed itself is already
    /// gone, so the shard is not told of its own decision.
    pub(super) fn client_gone(&mut self, gone: Disconnected<ClSession>, now: Instant) {
        if let Some(key) = gone.session.addr_key {
            self.addrs.release(key);
        }
        if gone.session.stage == Stage::OtcPath {
            return self.otc_path_gone(gone.conn, gone.session.otc, now);
        }
        let Stage::Play(binding) = gone.session.stage else {
            return;
        };
        self.n_playing -= 1;
        if !self.unbind_player(binding, gone.conn) {
            return;
        }
        let reason = match gone.reason {
            DisconnectReason::Protocol(_) => CLOSE_REASON_FILTERED,
            DisconnectReason::IdleTimeout => CLOSE_REASON_TIMEOUT,
            DisconnectReason::SlowReader | DisconnectReason::Shutdown => CLOSE_REASON_PROXY,
            DisconnectReason::Limit(_) => CLOSE_REASON_LIMIT,
            _ => CLOSE_REASON_LEFT,
        };
        self.link_send(
            binding.shard,
            &FProxyMsg::CloseSocket {
                socket_id: binding.socket_id,
                reason,
            },
        );
    }
}
