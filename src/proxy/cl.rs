//! The proxy's player connections (thesis §3.5.2 `cl_accept`, `cl_read`;
//! §3.8.3 forming connections with player clients; §3.8.4 routing and packet
//! filtering).
//!
//! A connection's life, as its [`ClSession`] records it:
//!
//! ```text
//! accept ── IP announced by a shard? ──no──▶ closed at once (shard_check_client_ip)
//!    │yes
//!    ▼
//! Handshake ── PUB_KEY in, PUB_KEY + STREAM_HEADER out, STREAM_HEADER in ──▶ AwaitProof
//! AwaitProof ── first frame: AuthProof, checked against the reservation ──▶ Authed
//!               (shard_check_client_auth_proof; then FPROXY_MSG_PLAYER_CRYPTCHAN)
//! Authed ── each frame: decrypt in place, filter, FPROXY_MSG_PLAYER_PACKET ──▶ ...
//! ```
//!
//! Everything before `Authed` must finish within `client.handshake_timeout_ms`
//! of the accept. Any failure — a bad handshake, a failed MAC, a wrong proof,
//! a frame the filter refuses — disconnects that one player with a log line;
//! if the player was authenticated, its shard is told (`client_gone`).

use std::net::SocketAddr;
use std::time::Instant;

use log::debug;
use mio::net::TcpStream;

use crate::client::{CL_FLAG_AUTHED, DisconnectReason, Disconnected, Session};
use crate::com::{ClientRef, ShardRef};
use crate::cryptchan::{ABYTES, memcmp_ct};
use crate::proto::ProtoError;
use crate::proto::client::{AuthProof, filter_client_frame};
use crate::proto::frame::{Channel, ChannelError, FeedError, Step, feed};
use crate::proto::proxy_shard::{
    CLOSE_REASON_FILTERED, CLOSE_REASON_LEFT, CLOSE_REASON_PROXY, CLOSE_REASON_TIMEOUT, FProxyMsg,
    PLAYER_PACKET_DATA_MAX,
};
use crate::secpool::PoolBuf;
use crate::shard::Shards;

use super::Proxy;
use super::link::{ShardLink, SocketState};

/// Where an authenticated player's messages go: a socket on one shard
/// connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The shard connection the socket belongs to.
    pub shard: ShardRef,
    /// The proxy socket id the shard chose.
    pub socket_id: u32,
}

/// Where a player connection is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClState {
    /// Key exchange not finished.
    #[default]
    Handshake,
    /// Keys exchanged; the next frame must be the auth proof.
    AwaitProof,
    /// Authenticated and bound to a shard socket (thesis `CL_FLAG_AUTHED`).
    Authed(Binding),
}

/// The protocol part of a proxy `client_t`: its cryptchan, where it is, and
/// its deadline.
#[derive(Debug, Default)]
pub struct ClSession {
    /// The channel (acceptor side). After authentication only its pull half
    /// is used; the push half was handed to the shard.
    pub chan: Option<Channel>,
    /// Where the connection is.
    pub state: ClState,
    /// The auth proof must arrive before this.
    pub deadline: Option<Instant>,
}

/// The proxy never encrypts to players (the shard does), so there is nothing
/// to seal before a flush.
impl Session for ClSession {}

/// Why a player is dropped while its bytes are processed.
enum ClError {
    Channel(ChannelError),
    Proof(&'static str),
    Filter(ProtoError),
    ShardGone,
}

impl From<ChannelError> for ClError {
    fn from(e: ChannelError) -> ClError {
        ClError::Channel(e)
    }
}

impl Proxy {
    /// Handles `EVENT_ACCEPT_CLIENT` (thesis `cl_accept`): refuses at once a
    /// connection from an address no shard announced, else gives it a slot
    /// and starts its handshake clock.
    pub(super) fn cl_accept(
        &mut self,
        listener: u32,
        stream: TcpStream,
        addr: SocketAddr,
        now: Instant,
    ) {
        if self.settings.require_announced_ip && !self.announced.contains(addr.ip()) {
            self.stats.refused_ip += 1;
            self.refused_ip_since_tick += 1;
            debug!("refused {addr}: no shard announced this address");
            return; // dropping the stream closes it
        }
        let Some(client) = self.clients.cl_accept(listener, stream, addr, now) else {
            return;
        };
        let mut chan = Channel::acceptor(self.keys.clone());
        // A frame must fit the buffer and, once decrypted, one
        // FPROXY_MSG_PLAYER_PACKET.
        chan.set_frame_max(
            (self.settings.client_in_buf_size - 2).min(PLAYER_PACKET_DATA_MAX + ABYTES),
        );
        let slot = self.clients.get_mut(client).expect("just accepted");
        slot.session = ClSession {
            chan: Some(chan),
            state: ClState::Handshake,
            deadline: Some(now + self.settings.handshake_timeout),
        };
    }

    /// Handles `EVENT_READ_CLIENT` (thesis `cl_read`): feeds the bytes through
    /// the player's channel. Whole frames are decrypted in place in the
    /// secpool block; only a frame split across reads is copied.
    pub(super) fn cl_read(&mut self, client: ClientRef, mut data: PoolBuf, now: Instant) {
        let Proxy {
            clients,
            shards,
            announced,
            n_reserved,
            settings,
            stats,
            ..
        } = self;
        let Some(slot) = clients.cl_read(client, data.len(), now) else {
            return; // stale: the block goes back to secpool
        };
        let ip = slot.addr.ip();
        let (session, in_buf, out) = slot.parts();
        let out_before = out.len();
        let ClSession { chan, state, .. } = session;
        let Some(chan) = chan.as_mut() else {
            return;
        };
        let mut authed_now = false;
        let result = feed(
            in_buf,
            data.as_mut_slice(),
            settings.client_in_buf_size,
            chan,
            |chan, buf| {
                let mut pos = 0;
                loop {
                    match chan.next(&mut buf[pos..], out)? {
                        Step::NeedMore => return Ok(pos),
                        Step::Handshake { consumed } => pos += consumed,
                        Step::Opened { consumed } => {
                            pos += consumed;
                            *state = ClState::AwaitProof;
                        }
                        Step::Frame {
                            consumed,
                            plaintext,
                        } => {
                            pos += consumed;
                            match *state {
                                ClState::Handshake => unreachable!("frames come only after Opened"),
                                ClState::AwaitProof => {
                                    let proof = shard_check_client_auth_proof(
                                        shards,
                                        plaintext,
                                        ip,
                                        now,
                                        settings.require_announced_ip,
                                    )
                                    .inspect_err(|_| stats.auth_failed += 1)?;
                                    let binding = proof.binding;
                                    let push_state = chan.hand_over_push()?;
                                    let sent =
                                        shards.shard_write(binding.shard.index, |link, out| {
                                            link.send(
                                                out,
                                                &FProxyMsg::PlayerCryptchan {
                                                    socket_id: binding.socket_id,
                                                    state: &push_state,
                                                },
                                            )?;
                                            // Only now, with the shard told, is the reservation consumed:
                                            // a replayed token finds nothing.
                                            link.by_account.remove(&proof.account_name);
                                            if let Some(socket) =
                                                link.sockets.get_mut(&binding.socket_id)
                                            {
                                                socket.state = SocketState::Connected(client);
                                            }
                                            Ok::<(), ChannelError>(())
                                        });
                                    if !matches!(sent, Some(Ok(()))) {
                                        return Err(ClError::ShardGone);
                                    }
                                    announced.release(proof.reserved_ip);
                                    *n_reserved -= 1;
                                    *state = ClState::Authed(binding);
                                    authed_now = true;
                                    stats.authenticated += 1;
                                }
                                ClState::Authed(binding) => {
                                    let n_msgs =
                                        filter_client_frame(plaintext).map_err(ClError::Filter)?;
                                    shard_forward_client_packet(shards, binding, plaintext)?;
                                    stats.msgs_to_shards += n_msgs as u64;
                                }
                            }
                        }
                    }
                }
            },
        );
        let wrote = out.len() != out_before;
        if authed_now {
            slot.flags |= CL_FLAG_AUTHED;
            debug!("client {} ({}): authenticated", client.index, slot.addr);
        }
        let reason = match result {
            Ok(()) => {
                if wrote {
                    clients.cl_wrote(client);
                }
                return;
            }
            Err(FeedError::TooLarge) => {
                DisconnectReason::Protocol("frame larger than client.in_buf_size".into())
            }
            Err(FeedError::Process(ClError::Channel(e))) => {
                DisconnectReason::Protocol(e.to_string())
            }
            Err(FeedError::Process(ClError::Proof(why))) => {
                DisconnectReason::Protocol(format!("auth proof refused: {why}"))
            }
            Err(FeedError::Process(ClError::Filter(e))) => {
                stats.filtered += 1;
                DisconnectReason::Protocol(format!("filtered: {e}"))
            }
            Err(FeedError::Process(ClError::ShardGone)) => {
                DisconnectReason::Closed("its shard is not connected")
            }
        };
        clients.cl_disconnect(client, reason);
    }
}

/// A proof that matched a reservation, before the reservation is consumed.
struct Proof {
    binding: Binding,
    account_name: String,
    /// The address the reservation announced (released when it is consumed).
    reserved_ip: std::net::IpAddr,
}

/// Checks an auth proof against the reservations (thesis
/// `shard_check_client_auth_proof`): the shard by name, the reservation by
/// account name, the 64-byte token in constant time, the reservation's
/// deadline, and the address the shard announced. Changes nothing: the caller
/// consumes the reservation once the shard has been told.
fn shard_check_client_auth_proof(
    shards: &mut Shards<ShardLink>,
    plaintext: &[u8],
    ip: std::net::IpAddr,
    now: Instant,
    require_announced_ip: bool,
) -> Result<Proof, ClError> {
    let proof =
        AuthProof::decode_frame(plaintext).map_err(|_| ClError::Proof("not an auth proof"))?;
    let index = (0..shards.all().len() as u32)
        .find(|&i| {
            let s = &shards.all()[i as usize];
            s.is_connected() && s.session.is_ready() && s.session.name == proof.shard_name
        })
        .ok_or(ClError::Proof("unknown shard"))?;
    let shard = shards.current(index).expect("connected");
    let link = &mut shards.get_mut(shard).expect("connected").session;
    let socket_id = *link
        .by_account
        .get(proof.account_name)
        .ok_or(ClError::Proof("no reservation for this account"))?;
    let Some(SocketState::Reserved(reservation)) = link.sockets.get(&socket_id).map(|s| &s.state)
    else {
        return Err(ClError::Proof("no reservation for this account"));
    };
    if !memcmp_ct(&reservation.token, proof.token) {
        return Err(ClError::Proof("wrong token"));
    }
    if now >= reservation.expires {
        return Err(ClError::Proof("the reservation expired"));
    }
    if require_announced_ip && reservation.ip.to_canonical() != ip.to_canonical() {
        return Err(ClError::Proof(
            "connecting from another address than the one the shard announced",
        ));
    }
    Ok(Proof {
        binding: Binding { shard, socket_id },
        account_name: proof.account_name.to_string(),
        reserved_ip: reservation.ip,
    })
}

/// Forwards a filtered frame of player messages to its shard (thesis
/// `shard_forward_client_packet`): one `FPROXY_MSG_PLAYER_PACKET` appended to
/// the shard's open frame, sealed with the rest at the end of the iteration.
fn shard_forward_client_packet(
    shards: &mut Shards<ShardLink>,
    binding: Binding,
    plaintext: &[u8],
) -> Result<(), ClError> {
    if shards.current(binding.shard.index) != Some(binding.shard) {
        return Err(ClError::ShardGone);
    }
    match shards.shard_write(binding.shard.index, |link, out| {
        link.forward(out, binding.socket_id, plaintext)
    }) {
        Some(Ok(())) => Ok(()),
        _ => Err(ClError::ShardGone),
    }
}

/// A player left or was dropped: if it was bound to a shard socket of a link
/// that still exists, the socket is removed and the shard told with
/// `FPROXY_MSG_CLOSE_SOCKET` (thesis `shard_delete_client_info` with
/// `inform_shard`). A socket the shard closed itself is already gone, so the
/// shard is not told of its own decision.
pub(super) fn client_gone(gone: Disconnected<ClSession>, shards: &mut Shards<ShardLink>) {
    let ClState::Authed(binding) = gone.session.state else {
        return;
    };
    if shards.current(binding.shard.index) != Some(binding.shard) {
        return;
    }
    let reason = match gone.reason {
        DisconnectReason::Protocol(_) => CLOSE_REASON_FILTERED,
        DisconnectReason::IdleTimeout => CLOSE_REASON_TIMEOUT,
        DisconnectReason::SlowReader | DisconnectReason::Shutdown => CLOSE_REASON_PROXY,
        _ => CLOSE_REASON_LEFT,
    };
    shards.shard_write(binding.shard.index, |link, out| {
        let bound_here = matches!(
            link.sockets.get(&binding.socket_id).map(|s| &s.state),
            Some(SocketState::Connected(c)) if *c == gone.client
        );
        if bound_here {
            link.sockets.remove(&binding.socket_id);
            link.send(
                out,
                &FProxyMsg::CloseSocket {
                    socket_id: binding.socket_id,
                    reason,
                },
            )
            .ok();
        }
    });
}
