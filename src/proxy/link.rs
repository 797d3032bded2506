//! The proxy's links to shards (thesis §3.5.3 `shard_read`; §3.8.1 forming
//! connections with shard servers; §3.8.2 the proxy–shard protocol).
//!
//! On every new connection the proxy (the initiator) runs the cryptchan
//! handshake, refusing a shard whose key differs from one pinned in
//! `shards.cfg`, then sends `FPROXY_MSG_LOGIN` with the password, its public
//! address and its capacity. `TPROXY_MSG_LOGIN_RESULT` names the shard; a
//! wrong password or a name another link already uses drops the link (and the
//! shard thread tries again in 2 s).
//!
//! Once logged in, the shard's messages:
//! - `TPROXY_MSG_OPENED_SOCKET`: reserve a slot for a player, announcing their
//!   IP (thesis `shard_check_client_ip`), answered by
//!   `FPROXY_MSG_OPENED_SOCKET_RESULT`. A reservation counts against
//!   `client.max_clients` and expires after `client.reservation_timeout_ms`,
//!   when the shard is told with `FPROXY_MSG_CLOSE_SOCKET`.
//! - `TPROXY_MSG_PLAYER_PACKET`: bytes for a player, already encrypted by the
//!   shard, appended to the player's output as they are
//!   (`cl_forward_shard_packet`).
//! - `TPROXY_MSG_CLOSED_SOCKET`: disconnect the player, or drop the
//!   reservation (thesis `cl_disconnect` called from the shard module).
//!
//! A link's sockets and reservations live in its session, so a lost shard
//! takes them with it (`shard_gone`).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, error, info, warn};

use crate::client::{Clients, DisconnectReason, Session};
use crate::com::{ClientRef, ShardRef};
use crate::cryptchan::{TOKEN_BYTES, memzero};
use crate::proto::ProtoError;
use crate::proto::frame::{Channel, ChannelError, FeedError, PeerError, Step, feed};
use crate::proto::proxy_shard::{
    CLOSE_REASON_REPLACED, CLOSE_REASON_TIMEOUT, FPROXY_MSG_PLAYER_PACKET, FProxyMsg,
    LOGIN_RESULT_OK, OPENED_SOCKET_DUPLICATE, OPENED_SOCKET_FULL, OPENED_SOCKET_OK,
    PLAYER_PACKET_DATA_MAX, PLAYER_PACKET_HEADER_BYTES, TProxyMsg, put_player_packet_header,
};
use crate::secpool::PoolBuf;
use crate::shard::ShardDisconnected;

use super::cl::ClSession;
use super::{AnnouncedIps, Proxy};

/// A player the shard announced: what the auth proof is checked against.
/// The token is wiped when the reservation goes.
pub struct Reservation {
    /// The account's name (also the key of `ShardLink::by_account`).
    pub account_name: String,
    /// The account.
    pub account_id: u64,
    /// The login session.
    pub login_session_id: u32,
    /// Where the player will connect from.
    pub ip: IpAddr,
    /// The token.
    pub token: [u8; TOKEN_BYTES],
    /// Released, and the shard told, if unclaimed by then.
    pub expires: Instant,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        memzero(&mut self.token);
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("account_name", &self.account_name)
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

/// What a proxy socket id refers to.
#[derive(Debug)]
pub enum SocketState {
    /// Waiting for the player's auth proof.
    Reserved(Box<Reservation>),
    /// The authenticated player's connection.
    Connected(ClientRef),
}

/// One proxy socket (thesis: the shard's "proxy socket", seen from the proxy).
#[derive(Debug)]
pub struct ProxySocket {
    /// Reserved or connected.
    pub state: SocketState,
}

/// Where a shard link is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkState {
    /// Key exchange not finished.
    #[default]
    Handshake,
    /// `FPROXY_MSG_LOGIN` sent, waiting for `TPROXY_MSG_LOGIN_RESULT`.
    LoggingIn,
    /// Logged in; routing.
    Ready,
}

/// The protocol state of one shard connection.
#[derive(Debug, Default)]
pub struct ShardLink {
    /// The channel (initiator side).
    pub chan: Option<Channel>,
    /// Where the link is.
    pub state: LinkState,
    /// The shard's name, from `TPROXY_MSG_LOGIN_RESULT`.
    pub name: String,
    /// Reservations and connected players, by the socket id the shard chose.
    pub sockets: HashMap<u32, ProxySocket>,
    /// Reservations by account name (a player proves an account, not a socket id).
    pub by_account: HashMap<String, u32>,
}

impl Session for ShardLink {
    /// Seals the frame of messages queued this iteration: one encryption per
    /// shard per flush.
    fn before_flush(&mut self, out: &mut Vec<u8>) {
        if let Some(chan) = &mut self.chan
            && let Err(err) = chan.seal(out)
        {
            error!("shard link: cannot seal a frame: {err}");
        }
    }
}

impl ShardLink {
    /// True once logged in.
    pub fn is_ready(&self) -> bool {
        self.state == LinkState::Ready
    }

    /// Appends a control message to the open frame.
    pub fn send(&mut self, out: &mut Vec<u8>, msg: &FProxyMsg<'_>) -> Result<(), ChannelError> {
        let chan = self.chan.as_mut().ok_or(ChannelError::NotOpen)?;
        chan.room(out, FProxyMsg::CONTROL_MAX)?;
        msg.encode(out);
        Ok(())
    }

    /// Appends `FPROXY_MSG_PLAYER_PACKET` with `data`, written straight into
    /// the output buffer (no intermediate message).
    pub fn forward(
        &mut self,
        out: &mut Vec<u8>,
        socket_id: u32,
        data: &[u8],
    ) -> Result<(), ChannelError> {
        if data.len() > PLAYER_PACKET_DATA_MAX {
            return Err(ProtoError::BadLength("player packet").into());
        }
        let chan = self.chan.as_mut().ok_or(ChannelError::NotOpen)?;
        chan.room(out, PLAYER_PACKET_HEADER_BYTES + data.len())?;
        put_player_packet_header(out, FPROXY_MSG_PLAYER_PACKET, socket_id, data.len());
        out.extend_from_slice(data);
        Ok(())
    }

    /// Removes a reservation, releasing its announced IP.
    fn release(&mut self, socket_id: u32, announced: &mut AnnouncedIps, n_reserved: &mut usize) {
        release_reservation(
            &mut self.sockets,
            &mut self.by_account,
            socket_id,
            announced,
            n_reserved,
        );
    }
}

/// Removes reservation `socket_id` (if it is one), releasing its announced IP.
fn release_reservation(
    sockets: &mut HashMap<u32, ProxySocket>,
    by_account: &mut HashMap<String, u32>,
    socket_id: u32,
    announced: &mut AnnouncedIps,
    n_reserved: &mut usize,
) {
    if let Some(SocketState::Reserved(_)) = sockets.get(&socket_id).map(|s| &s.state)
        && let Some(ProxySocket {
            state: SocketState::Reserved(r),
        }) = sockets.remove(&socket_id)
    {
        by_account.remove(&r.account_name);
        announced.release(r.ip);
        *n_reserved -= 1;
    }
}

impl Proxy {
    /// Handles `EVENT_CONNECT_SHARD`: starts the handshake (the proxy speaks
    /// first, with its public key).
    pub(super) fn shard_connected(&mut self, shard: ShardRef, stream: Arc<mio::net::TcpStream>) {
        let Some(s) = self.shards.shard_connected(shard, stream) else {
            return;
        };
        let pinned = s.entry.key;
        let (link, _, out) = s.parts();
        link.chan = Some(Channel::initiator(self.keys.clone(), pinned, out));
        self.shards.shard_wrote(shard.index);
    }

    /// Handles `EVENT_READ_SHARD` (thesis `shard_read`).
    pub(super) fn shard_read(&mut self, shard: ShardRef, mut data: PoolBuf) {
        let Proxy {
            clients,
            shards,
            announced,
            n_reserved,
            settings,
            stats,
            ..
        } = self;
        let Some(s) = shards.shard_read(shard) else {
            return;
        };
        let shard_addr = s.entry.addr();
        let (link, in_buf, out) = s.parts();
        let ShardLink {
            chan,
            state,
            name,
            sockets,
            by_account,
        } = link;
        let Some(chan) = chan.as_mut() else {
            return;
        };
        let now = Instant::now();
        let out_before = out.len();
        let mut logged_in = false;
        let result = feed(
            in_buf,
            data.as_mut_slice(),
            settings.shard_in_buf_size,
            chan,
            |chan, buf| {
                let mut pos = 0;
                loop {
                    match chan.next(&mut buf[pos..], out)? {
                        Step::NeedMore => return Ok(pos),
                        Step::Handshake { consumed } => pos += consumed,
                        Step::Opened { consumed } => {
                            pos += consumed;
                            chan.room(out, FProxyMsg::CONTROL_MAX)?;
                            FProxyMsg::Login {
                                password: settings.password.expose().as_bytes(),
                                public_address: &settings.public_address,
                                capacity: settings.max_clients,
                            }
                            .encode(out);
                            *state = LinkState::LoggingIn;
                        }
                        Step::Frame {
                            consumed,
                            plaintext,
                        } => {
                            pos += consumed;
                            let mut at = 0;
                            while at < plaintext.len() {
                                let (msg, len) = TProxyMsg::decode(&plaintext[at..])
                                    .map_err(PeerError::Proto)?
                                    .ok_or(PeerError::Proto(ProtoError::Truncated(
                                        "shard message",
                                    )))?;
                                at += len;
                                match (msg, *state) {
                                    (
                                        TProxyMsg::LoginResult { result, shard_name },
                                        LinkState::LoggingIn,
                                    ) => {
                                        if result != LOGIN_RESULT_OK {
                                            return Err(PeerError::Refused(
                                                "the shard refused the password (shard.password)",
                                            ));
                                        }
                                        *name = shard_name.to_string();
                                        *state = LinkState::Ready;
                                        logged_in = true;
                                    }
                                    (_, LinkState::Handshake | LinkState::LoggingIn) => {
                                        return Err(PeerError::Refused(
                                            "message before TPROXY_MSG_LOGIN_RESULT",
                                        ));
                                    }
                                    (TProxyMsg::LoginResult { .. }, LinkState::Ready) => {
                                        return Err(PeerError::Refused(
                                            "a second TPROXY_MSG_LOGIN_RESULT",
                                        ));
                                    }
                                    (
                                        TProxyMsg::OpenedSocket {
                                            socket_id,
                                            account_id,
                                            login_session_id,
                                            ip,
                                            account_name,
                                            token,
                                        },
                                        LinkState::Ready,
                                    ) => {
                                        let result = if sockets.contains_key(&socket_id) {
                                            OPENED_SOCKET_DUPLICATE
                                        } else if *n_reserved + clients.in_use()
                                            >= settings.max_clients as usize
                                        {
                                            OPENED_SOCKET_FULL
                                        } else {
                                            // A newer login of the same account replaces the old reservation.
                                            if let Some(old) = by_account.get(account_name).copied()
                                            {
                                                release_reservation(
                                                    sockets, by_account, old, announced, n_reserved,
                                                );
                                                // The shard must forget the old socket too.
                                                chan.room(out, FProxyMsg::CONTROL_MAX)?;
                                                FProxyMsg::CloseSocket {
                                                    socket_id: old,
                                                    reason: CLOSE_REASON_REPLACED,
                                                }
                                                .encode(out);
                                            }
                                            sockets.insert(
                                                socket_id,
                                                ProxySocket {
                                                    state: SocketState::Reserved(Box::new(
                                                        Reservation {
                                                            account_name: account_name.to_string(),
                                                            account_id,
                                                            login_session_id,
                                                            ip,
                                                            token: *token,
                                                            expires: now
                                                                + settings.reservation_timeout,
                                                        },
                                                    )),
                                                },
                                            );
                                            by_account.insert(account_name.to_string(), socket_id);
                                            announced.add(ip);
                                            *n_reserved += 1;
                                            OPENED_SOCKET_OK
                                        };
                                        chan.room(out, FProxyMsg::CONTROL_MAX)?;
                                        FProxyMsg::OpenedSocketResult { socket_id, result }
                                            .encode(out);
                                    }
                                    (TProxyMsg::ClosedSocket { socket_id }, LinkState::Ready) => {
                                        match sockets.remove(&socket_id).map(|s| s.state) {
                                            Some(SocketState::Connected(client)) => {
                                                clients.cl_disconnect(
                                                    client,
                                                    DisconnectReason::Closed("closed by the shard"),
                                                );
                                            }
                                            Some(SocketState::Reserved(r)) => {
                                                by_account.remove(&r.account_name);
                                                announced.release(r.ip);
                                                *n_reserved -= 1;
                                            }
                                            None => {
                                                debug!("shard closed unknown socket {socket_id}")
                                            }
                                        }
                                    }
                                    (
                                        TProxyMsg::PlayerPacket { socket_id, data },
                                        LinkState::Ready,
                                    ) => {
                                        // A packet for a player who just left is dropped: the
                                        // shard will see FPROXY_MSG_CLOSE_SOCKET.
                                        if let Some(ProxySocket {
                                            state: SocketState::Connected(client),
                                        }) = sockets.get(&socket_id)
                                            && clients.cl_send(*client, data)
                                        {
                                            stats.packets_to_clients += 1;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        );
        let wrote = out.len() != out_before;
        if let Err(err) = result {
            let why = match err {
                FeedError::TooLarge => "frame larger than shard.in_buf_size".to_string(),
                FeedError::Process(PeerError::Refused(why)) => {
                    error!("shard {shard_addr}: {why}");
                    why.to_string()
                }
                FeedError::Process(e) => e.to_string(),
            };
            shards.shard_disconnect(shard, &why);
            return;
        }
        if logged_in {
            let s = &shards.all()[shard.index as usize];
            let taken = shards.all().iter().enumerate().any(|(i, other)| {
                i != shard.index as usize
                    && other.session.is_ready()
                    && other.session.name == s.session.name
            });
            if taken {
                let why = format!("another shard is already named {:?}", s.session.name);
                error!("shard {shard_addr}: {why}");
                shards.shard_disconnect(shard, &why);
                return;
            }
            info!("shard {shard_addr}: logged in as {:?}", s.session.name);
        }
        if wrote {
            shards.shard_wrote(shard.index);
        }
    }

    /// Releases reservations nobody claimed in time (thesis §3.8.5 "Timing
    /// clients out") and tells their shards.
    pub(super) fn expire_reservations(&mut self, now: Instant) {
        let Proxy {
            shards,
            announced,
            n_reserved,
            scratch_sockets,
            ..
        } = self;
        for index in 0..shards.all().len() as u32 {
            shards.shard_write(index, |link, out| {
                scratch_sockets.clear();
                scratch_sockets.extend(link.sockets.iter().filter_map(|(&id, s)| match &s.state {
                    SocketState::Reserved(r) if now >= r.expires => Some(id),
                    _ => None,
                }));
                for &socket_id in scratch_sockets.iter() {
                    debug!("reservation {socket_id} of shard {:?} expired", link.name);
                    link.release(socket_id, announced, n_reserved);
                    link.send(
                        out,
                        &FProxyMsg::CloseSocket {
                            socket_id,
                            reason: CLOSE_REASON_TIMEOUT,
                        },
                    )
                    .ok();
                }
            });
        }
    }
}

/// A shard connection ended: its players are disconnected cleanly and its
/// reservations released. Their shard is not told (it is gone).
pub(super) fn shard_gone(
    gone: ShardDisconnected<ShardLink>,
    clients: &mut Clients<ClSession>,
    announced: &mut AnnouncedIps,
    n_reserved: &mut usize,
) {
    let link = gone.session;
    let mut players = 0;
    for (_, socket) in link.sockets {
        match socket.state {
            SocketState::Connected(client) => {
                players += 1;
                clients.cl_disconnect(client, DisconnectReason::Closed("its shard disconnected"));
            }
            SocketState::Reserved(r) => {
                announced.release(r.ip);
                *n_reserved -= 1;
            }
        }
    }
    if link.state == LinkState::Ready {
        warn!(
            "shard {:?} (connection {}) lost: {players} player(s) disconnected",
            link.name, gone.shard.conn_id
        );
    }
}
