//! Players served by the shard itself, without a proxy: MUTA's shard as it
//! was before the thesis (§2.3, "The Initial Server Architecture": "Players
//! directly connect to the shard server"). It is the baseline the proxy is
//! measured against (`make bench`, path `direct`) and what a plain TCP
//! forwarder such as HAProxy points at (path `haproxy`).
//!
//! The shard speaks the client protocol itself, byte for byte what a player
//! speaks to a proxy (`docs/protocol.md` §3): the same handshake, the same
//! auth proof and checks (the reservation by account name, the token in
//! constant time, the reservation's deadline, the address the login server
//! announced), the same size filter on every frame. A direct socket lives in
//! the proxy module's table like any other: the shard reserves it itself when
//! the login server announces the player, and the ticket names the direct
//! listener's public address and the shard's own key. When the player's proof
//! checks out, the listener hands the socket its push stream, as a proxy
//! does with `FPROXY_MSG_PLAYER_CRYPTCHAN`, so the game cannot tell a direct
//! player from a proxied one.
//!
//! A direct player's reads come to [`ProxyModule::direct_read`], one step
//! each: the handshake, then the first frame as the auth proof
//! (`direct_proof`, checked by `direct_reservation`), then every frame as the
//! player's messages (`direct_packet`).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::debug;

use crate::com::ConnRef;
use crate::conn::{DisconnectReason, Pool};
use crate::cryptchan::{ABYTES, PushStream, TOKEN_BYTES, memcmp_ct};
use crate::proto::ProtoError;
use crate::proto::client::{AuthProof, filter_client_frame};
use crate::proto::frame::{Channel, ChannelError, FRAME_LEN_BYTES, FrameError, Frames, Unit};
use crate::proto::proxy_shard::PLAYER_PACKET_DATA_MAX;

use super::{
    Carrier, ProxyEvent, ProxyModule, ProxySessions, SOCKET_INDEX_BITS, SocketOpened, SocketState,
    find_slot,
};

/// Settings of the direct listener.
#[derive(Clone, Debug)]
pub struct DirectCfg {
    /// Where players are told to connect: the listener, or a forwarder in
    /// front of it.
    pub public_address: String,
    /// The handshake and the auth proof must be done this long after the
    /// accept.
    pub handshake_timeout: Duration,
    /// Refuse a proof from another address than the one the login server
    /// announced (as the proxy's `client.require_announced_ip`).
    pub require_announced_ip: bool,
    /// The listener's `in_buf_size`: the largest frame is 2 bytes less.
    pub in_buf_size: usize,
}

/// What the login server announced for a direct socket, checked against the
/// player's proof.
pub(super) struct DirectTicket {
    account_name: String,
    ip: IpAddr,
    token: [u8; TOKEN_BYTES],
}

impl DirectTicket {
    pub(super) fn account_name(&self) -> &str {
        &self.account_name
    }
}

/// A connection on the direct listener: the player's channel, and its socket
/// once the auth proof checked out.
#[derive(Debug)]
pub struct DirectConn {
    chan: Channel,
    socket: Option<u32>,
    deadline: Instant,
}

impl DirectConn {
    /// Not authenticated and past the handshake deadline.
    pub fn is_late(&self, now: Instant) -> bool {
        self.socket.is_none() && now >= self.deadline
    }
}

/// Why a direct player is dropped while its bytes are processed.
enum DirectError {
    Frame(FrameError),
    Proof(&'static str),
    Filter(ProtoError),
    /// The socket ended (the shard dropped the player) before the connection.
    Ended,
}

impl From<FrameError> for DirectError {
    fn from(e: FrameError) -> DirectError {
        DirectError::Frame(e)
    }
}

impl From<ChannelError> for DirectError {
    fn from(e: ChannelError) -> DirectError {
        DirectError::Frame(FrameError::Channel(e))
    }
}

impl ProxyModule {
    /// `proxy_new_socket` with a direct listener: the shard reserves the
    /// socket itself and answers at once with the listener's address and the
    /// shard's key.
    pub(super) fn direct_new_socket<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        account_name: &str,
        account_id: u64,
        login_session_id: u32,
        ip: IpAddr,
        token: &[u8; TOKEN_BYTES],
    ) -> u32 {
        // A newer login replaces the account's older socket, and an older
        // reservation under the same name.
        self.replace_older_socket(pool, account_id);
        if let Some(&old) = self.direct_by_account.get(account_name) {
            self.close(pool, old, true, "replaced by a newer login");
        }
        let index = self.take_slot();
        let ticket = DirectTicket {
            account_name: account_name.to_string(),
            ip,
            token: *token,
        };
        let state = SocketState::Reserved(Some(Box::new(ticket)));
        let login = (account_id, login_session_id);
        self.occupy(index, state, Carrier::Direct(None), login);
        self.direct_by_account
            .insert(account_name.to_string(), index);
        let socket = self.handle(index);
        let public_address = self.cfg.direct.as_ref().map(|d| d.public_address.clone());
        self.events
            .list
            .push(ProxyEvent::SocketOpened(SocketOpened {
                socket,
                proxy_address: public_address,
                proxy_key: Some(self.keys.public()),
            }));
        socket
    }

    /// The session for a connection accepted on the direct listener.
    pub fn new_direct_conn(&self, now: Instant) -> DirectConn {
        let direct = self.cfg.direct.as_ref();
        let mut chan = Channel::acceptor(self.keys.clone());
        let in_buf_size = direct.map_or(8192, |d| d.in_buf_size);
        // As at the proxy: a frame must fit the buffer and one
        // FPROXY_MSG_PLAYER_PACKET.
        chan.set_frame_max(
            in_buf_size
                .saturating_sub(FRAME_LEN_BYTES)
                .min(PLAYER_PACKET_DATA_MAX + ABYTES),
        );
        DirectConn {
            chan,
            socket: None,
            deadline: now + direct.map_or(Duration::ZERO, |d| d.handshake_timeout),
        }
    }

    /// Handles `EVENT_READ_CLIENT` for a direct player: the handshake, the
    /// auth proof, then its frames, decrypted in place, filtered, and handed
    /// to the game as [`ProxyEvent::PlayerPacket`]s.
    pub fn direct_read<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        client: ConnRef,
        data: &mut [u8],
        now: Instant,
    ) {
        let Some(in_buf_size) = self.cfg.direct.as_ref().map(|d| d.in_buf_size) else {
            return;
        };
        let Some(addr) = pool.get(client).map(|s| s.addr()) else {
            return;
        };
        // Out of the slot while its frames are handled, as on a proxy link.
        let Some(mut in_buf) = pool.begin_read(client, data.len(), now) else {
            return;
        };
        let mut frames = Frames::new(&mut in_buf, data, in_buf_size);
        let result = self.direct_units(pool, client, addr, &mut frames, now);
        drop(frames);
        pool.end_read(client, in_buf);
        if let Err(err) = result {
            self.direct_refuse(pool, client, err);
        }
    }

    /// The units of one read: the first frame is the auth proof, every later
    /// one the player's messages.
    fn direct_units<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        client: ConnRef,
        addr: SocketAddr,
        frames: &mut Frames<'_>,
        now: Instant,
    ) -> Result<(), DirectError> {
        loop {
            let Some(slot) = pool.get_mut(client) else {
                return Ok(()); // dropped meanwhile
            };
            let (session, out) = slot.session_and_out();
            let Some(conn) = session.direct_conn() else {
                return Ok(());
            };
            let (socket, deadline) = (conn.socket, conn.deadline);
            let frame = match frames.next(&mut conn.chan, out)? {
                None => return Ok(()),
                // Nothing to do until the proof arrives.
                Some(Unit::Opened) => continue,
                Some(Unit::Frame(frame)) => frame,
            };
            match socket {
                Some(handle) => self.direct_packet(handle, frame)?,
                // The first frame: the auth proof, in time.
                None if now >= deadline => {
                    return Err(DirectError::Proof("it came after the handshake deadline"));
                }
                None => self.direct_proof(pool, client, addr, frame, now)?,
            }
        }
    }

    /// A frame of an authenticated direct player: the size checks, then to
    /// the game as the proxy module's `PlayerPacket`.
    fn direct_packet(&mut self, socket: u32, frame: &[u8]) -> Result<(), DirectError> {
        // The socket may have ended (the shard dropped the player) with its
        // connection not yet gone.
        if find_slot(&mut self.sockets, socket).is_none() {
            return Err(DirectError::Ended);
        }
        let n = filter_client_frame(frame).map_err(DirectError::Filter)?;
        self.stats.msgs_in += n as u64;
        let bytes = &mut self.events.bytes;
        let start = bytes.len();
        bytes.extend_from_slice(frame);
        let end = bytes.len();
        self.events
            .list
            .push(ProxyEvent::PlayerPacket { socket, start, end });
        Ok(())
    }

    /// The auth proof of a direct player (as the proxy's
    /// `shard_check_client_auth_proof`): checked against the reservation the
    /// login server announced; then the connection takes over the socket and
    /// the socket its push stream, as a proxy's `FPROXY_MSG_PLAYER_CRYPTCHAN`
    /// would hand it over.
    fn direct_proof<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        client: ConnRef,
        addr: SocketAddr,
        frame: &[u8],
        now: Instant,
    ) -> Result<(), DirectError> {
        let proof =
            AuthProof::decode_frame(frame).map_err(|_| DirectError::Proof("not an auth proof"))?;
        let index = self.direct_reservation(&proof, addr.ip(), now)?;
        let Some(conn) = pool.get_mut(client).and_then(|s| s.session.direct_conn()) else {
            return Ok(());
        };
        let push = PushStream::import_state(&conn.chan.hand_over_push()?);
        self.direct_by_account.remove(proof.account_name);
        let slot = &mut self.sockets[index as usize];
        slot.state = SocketState::Connected { push };
        slot.carrier = Carrier::Direct(Some(client));
        let socket = (slot.generation << SOCKET_INDEX_BITS) | index;
        conn.socket = Some(socket);
        self.events
            .list
            .push(ProxyEvent::PlayerConnected { socket, addr });
        Ok(())
    }

    /// The reserved direct socket a proof claims, if every check passes: this
    /// shard, the account's reservation, its token (in constant time), its
    /// deadline, and (with `require_announced_ip`) the announced address.
    fn direct_reservation(
        &self,
        proof: &AuthProof<'_>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<u32, DirectError> {
        if proof.shard_name != self.cfg.shard_name {
            return Err(DirectError::Proof("unknown shard"));
        }
        let no_reservation = DirectError::Proof("no reservation for this account");
        let Some(&index) = self.direct_by_account.get(proof.account_name) else {
            return Err(no_reservation);
        };
        let slot = &self.sockets[index as usize];
        let SocketState::Reserved(Some(ticket)) = &slot.state else {
            return Err(no_reservation);
        };
        if !memcmp_ct(&ticket.token, proof.token) {
            return Err(DirectError::Proof("wrong token"));
        }
        if now >= slot.deadline {
            return Err(DirectError::Proof("the reservation expired"));
        }
        let check_ip = self
            .cfg
            .direct
            .as_ref()
            .is_some_and(|d| d.require_announced_ip);
        if check_ip && ticket.ip.to_canonical() != ip.to_canonical() {
            return Err(DirectError::Proof(
                "connecting from another address than the one announced",
            ));
        }
        Ok(index)
    }

    /// Disconnects a direct player whose bytes broke a rule, with the reason.
    fn direct_refuse<S: ProxySessions>(
        &mut self,
        pool: &mut Pool<S>,
        client: ConnRef,
        err: DirectError,
    ) {
        let reason = match err {
            DirectError::Frame(FrameError::TooLarge) => {
                "frame larger than the listener's in_buf_size".to_string()
            }
            DirectError::Frame(FrameError::Channel(e)) => e.to_string(),
            DirectError::Proof(why) => format!("auth proof refused: {why}"),
            DirectError::Filter(e) => {
                self.stats.filtered += 1;
                format!("filtered: {e}")
            }
            DirectError::Ended => {
                pool.disconnect(client, DisconnectReason::Closed("its socket has ended"));
                return;
            }
        };
        pool.disconnect(client, DisconnectReason::Protocol(reason));
    }

    /// A connection on the direct listener went away (from the pool's
    /// `take_disconnected`): its socket, if it had one, ends.
    pub fn direct_gone(&mut self, conn: &DirectConn, reason: &DisconnectReason) {
        let Some(socket) = conn.socket else {
            return;
        };
        if let Some((index, _)) = find_slot(&mut self.sockets, socket) {
            debug!("direct socket {socket:#x}: {reason}");
            let why = match reason {
                DisconnectReason::Protocol(_) => "its messages broke the protocol",
                DisconnectReason::SlowReader => "too much output queued (slow player)",
                _ => "the player left",
            };
            self.release(index, why);
        }
    }
}
