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

use std::net::IpAddr;
use std::time::{Duration, Instant};

use log::debug;

use crate::client::{Clients, DisconnectReason};
use crate::com::ClientRef;
use crate::cryptchan::{ABYTES, PushStream, TOKEN_BYTES, memcmp_ct};
use crate::proto::ProtoError;
use crate::proto::client::{AuthProof, filter_client_frame};
use crate::proto::frame::{Channel, ChannelError, FRAME_LEN_BYTES, FeedError, Step, feed};
use crate::proto::proxy_shard::PLAYER_PACKET_DATA_MAX;
use crate::secpool::PoolBuf;

use super::{
    Carrier, ProxyEvent, ProxyModule, ProxySessions, SocketOpened, SocketState, find_slot,
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
    Channel(ChannelError),
    Proof(&'static str),
    Filter(ProtoError),
    /// The socket ended (the shard dropped the player) before the connection.
    Ended,
}

impl From<ChannelError> for DirectError {
    fn from(e: ChannelError) -> DirectError {
        DirectError::Channel(e)
    }
}

impl ProxyModule {
    /// `proxy_new_socket` with a direct listener: the shard reserves the
    /// socket itself and answers at once with the listener's address and the
    /// shard's key.
    pub(super) fn direct_new_socket<S: ProxySessions>(
        &mut self,
        clients: &mut Clients<S>,
        account_name: &str,
        account_id: u64,
        login_session_id: u32,
        ip: IpAddr,
        token: &[u8; TOKEN_BYTES],
    ) -> u32 {
        // A newer login replaces an older socket of the same session or
        // account still waiting for its player.
        if let Some(&old) = self.by_session.get(&(account_id, login_session_id)) {
            self.close(clients, old, true, "replaced by a newer login");
        }
        if let Some(&old) = self.direct_by_account.get(account_name) {
            self.close(clients, old, true, "replaced by a newer login");
        }
        let index = self.take_slot();
        let socket = self.handle(index);
        let public_address = self.cfg.direct.as_ref().map(|d| d.public_address.clone());
        let slot = &mut self.sockets[index as usize];
        slot.state = SocketState::Reserved(Some(Box::new(DirectTicket {
            account_name: account_name.to_string(),
            ip,
            token: *token,
        })));
        slot.carrier = Carrier::Direct(None);
        slot.account_id = account_id;
        slot.login_session_id = login_session_id;
        slot.deadline = Instant::now() + self.cfg.connect_timeout;
        self.by_session
            .insert((account_id, login_session_id), index);
        self.direct_by_account
            .insert(account_name.to_string(), index);
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
        clients: &mut Clients<S>,
        client: ClientRef,
        mut data: PoolBuf,
        now: Instant,
    ) {
        let Some(slot) = clients.cl_read(client, data.len(), now) else {
            return;
        };
        let ip = slot.addr.ip();
        let (session, in_buf, out) = slot.parts();
        let Some(conn) = session.direct_conn() else {
            return;
        };
        let out_before = out.len();
        let DirectConn {
            chan,
            socket,
            deadline,
        } = conn;
        let deadline = *deadline;
        let ProxyModule {
            cfg,
            sockets,
            direct_by_account,
            events,
            stats,
            ..
        } = self;
        let Some(direct) = cfg.direct.as_ref() else {
            return;
        };
        let result = feed(
            in_buf,
            data.as_mut_slice(),
            direct.in_buf_size,
            chan,
            |chan, buf| {
                let mut pos = 0;
                loop {
                    match chan.next(&mut buf[pos..], out)? {
                        Step::NeedMore => return Ok(pos),
                        Step::Handshake { consumed } | Step::Opened { consumed } => pos += consumed,
                        Step::Frame {
                            consumed,
                            plaintext,
                        } => {
                            pos += consumed;
                            if let Some(handle) = *socket {
                                // The socket may have ended (the shard dropped
                                // the player) with its connection not yet gone.
                                if find_slot(sockets, handle).is_none() {
                                    return Err(DirectError::Ended);
                                }
                                let n =
                                    filter_client_frame(plaintext).map_err(DirectError::Filter)?;
                                stats.msgs_in += n as u64;
                                let start = events.bytes.len();
                                events.bytes.extend_from_slice(plaintext);
                                events.list.push(ProxyEvent::PlayerPacket {
                                    socket: handle,
                                    start,
                                    end: events.bytes.len(),
                                });
                                continue;
                            }
                            // The first frame: the auth proof, in time.
                            if now >= deadline {
                                return Err(DirectError::Proof(
                                    "it came after the handshake deadline",
                                ));
                            }
                            let proof = AuthProof::decode_frame(plaintext)
                                .map_err(|_| DirectError::Proof("not an auth proof"))?;
                            if proof.shard_name != cfg.shard_name {
                                return Err(DirectError::Proof("unknown shard"));
                            }
                            let index = *direct_by_account
                                .get(proof.account_name)
                                .ok_or(DirectError::Proof("no reservation for this account"))?;
                            let slot = &mut sockets[index as usize];
                            let SocketState::Reserved(Some(ticket)) = &slot.state else {
                                return Err(DirectError::Proof("no reservation for this account"));
                            };
                            if !memcmp_ct(&ticket.token, proof.token) {
                                return Err(DirectError::Proof("wrong token"));
                            }
                            if now >= slot.deadline {
                                return Err(DirectError::Proof("the reservation expired"));
                            }
                            if direct.require_announced_ip
                                && ticket.ip.to_canonical() != ip.to_canonical()
                            {
                                return Err(DirectError::Proof(
                                    "connecting from another address than the one announced",
                                ));
                            }
                            let push = PushStream::import_state(&chan.hand_over_push()?);
                            direct_by_account.remove(proof.account_name);
                            slot.state = SocketState::Connected { push };
                            slot.carrier = Carrier::Direct(Some(client));
                            let handle = (slot.generation << super::SOCKET_INDEX_BITS) | index;
                            *socket = Some(handle);
                            events
                                .list
                                .push(ProxyEvent::PlayerConnected { socket: handle });
                        }
                    }
                }
            },
        );
        let wrote = out.len() != out_before;
        drop(data);
        let reason = match result {
            Ok(()) => {
                if wrote {
                    clients.cl_wrote(client);
                }
                return;
            }
            Err(FeedError::TooLarge) => "frame larger than the listener's in_buf_size".to_string(),
            Err(FeedError::Process(DirectError::Channel(e))) => e.to_string(),
            Err(FeedError::Process(DirectError::Proof(why))) => {
                format!("auth proof refused: {why}")
            }
            Err(FeedError::Process(DirectError::Filter(e))) => {
                self.stats.filtered += 1;
                format!("filtered: {e}")
            }
            Err(FeedError::Process(DirectError::Ended)) => {
                clients.cl_disconnect(client, DisconnectReason::Closed("its socket has ended"));
                return;
            }
        };
        clients.cl_disconnect(client, DisconnectReason::Protocol(reason));
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
