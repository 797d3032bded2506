//! The proxy's links to shards (thesis §3.5.3 `shard_read`; §3.8.1 forming
//! connections with shard servers; §3.8.2 the proxy–shard protocol).
//!
//! On every new connection the proxy (the initiator) runs the cryptchan
//! handshake, refusing a shard whose key differs from one pinned in
//! `shards.cfg`, then sends `FPROXY_MSG_LOGIN` with the password, its public
//! address and its capacity. `TPROXY_MSG_LOGIN_RESULT` names the shard; a
//! wrong password or a name another link already uses drops the link (and
//! the shard module tries again in 2 s).
//!
//! Once logged in, the shard's messages, one function each:
//! - `TPROXY_MSG_OPENED_SOCKET` (`on_opened_socket`): reserve a slot
//!   for a player, announcing their address (thesis
//!   `shard_check_client_ip`), answered by `FPROXY_MSG_OPENED_SOCKET_RESULT`.
//!   A reservation counts against `client.max_clients` and expires after
//!   `client.reservation_timeout_ms`, when the shard is told with
//!   `FPROXY_MSG_CLOSE_SOCKET`.
//! - `TPROXY_MSG_PLAYER_PACKET` (`on_player_packet`): bytes for a
//!   player, already encrypted by the shard, appended to the player's output
//!   as they are (`cl_forward_shard_packet`).
//! - `TPROXY_MSG_CLOSED_SOCKET` (`on_closed_socket`): disconnect the
//!   player, or drop the reservation (thesis `cl_disconnect` called from the
//!   shard module).
//!
//! A link's connected players live in its session and its reservations in
//! [`Reservations`](super::reservations::Reservations), keyed by the link:
//! a lost shard takes both with it (`shard_gone`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use crate::com::ConnRef;
use crate::conn::{DisconnectReason, Session};
use crate::proto::frame::{Channel, ChannelError, FRAME_OVERHEAD, Frames, PeerError, Unit};
use crate::proto::proxy_shard::{
    CLOSE_REASON_REPLACED, CLOSE_REASON_TIMEOUT, FPROXY_MSG_PLAYER_PACKET, FProxyMsg,
    LOGIN_RESULT_OK, OPENED_SOCKET_DUPLICATE, OPENED_SOCKET_FULL, OPENED_SOCKET_OK,
    PLAYER_PACKET_DATA_MAX, PLAYER_PACKET_HEADER_BYTES, TProxyMsg, put_player_packet_header,
};
use crate::proto::{ProtoError, messages};

use super::cl::Binding;
use super::refusals::Refusal;
use super::reservations::Reservation;
use super::{Outbound, Proxy};

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
    /// The players connected through this link, by the socket id the shard
    /// chose (thesis §3.8.4: ids known to both sides).
    pub players: HashMap<u32, ConnRef>,
    /// Until `TPROXY_MSG_LOGIN_RESULT`: the link is dropped if it has not
    /// come by then (`shard.login_timeout_ms`; an address that answers with
    /// something else, or nothing, is not counted as connected for ever).
    pub login_deadline: Option<Instant>,
    /// The heartbeat: the last `FPROXY_MSG_PING` not yet answered (its
    /// number and when it went), when the next is due, and the round trip
    /// of the last answered one.
    pub ping: Option<(u32, Instant)>,
    /// When the next ping is due.
    pub next_ping: Option<Instant>,
    /// The last round trip measured.
    pub rtt: Option<Duration>,
    ping_seq: u32,
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

impl Outbound {
    /// Appends a control message to the link's open frame; a connection
    /// that is not a link has none.
    pub fn send(&mut self, out: &mut Vec<u8>, msg: &FProxyMsg<'_>) -> Result<(), ChannelError> {
        self.link_mut().ok_or(ChannelError::NotOpen)?.send(out, msg)
    }

    /// See [`ShardLink::forward`].
    pub fn forward(
        &mut self,
        out: &mut Vec<u8>,
        socket_id: u32,
        data: &[u8],
    ) -> Result<(), ChannelError> {
        self.link_mut()
            .ok_or(ChannelError::NotOpen)?
            .forward(out, socket_id, data)
    }
}

impl ShardLink {
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
}

/// What became of a player's packet (`shard_forward_client_packet`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Forwarded {
    /// Queued on the link.
    Sent,
    /// The link is gone.
    LinkGone,
    /// The link's output is backed up: not queued.
    Backlogged,
}

impl Proxy {
    /// True if `shard` is a link that has logged in.
    pub(super) fn is_ready(&self, shard: ConnRef) -> bool {
        self.shards
            .get(shard)
            .and_then(|s| s.session.link())
            .is_some_and(|l| l.state == LinkState::Ready)
    }

    /// The logged-in link to the shard named `name`.
    pub(super) fn ready_link_named(&self, name: &str) -> Option<ConnRef> {
        self.links.up().find(|&shard| {
            self.shards
                .get(shard)
                .and_then(|s| s.session.link())
                .is_some_and(|l| l.state == LinkState::Ready && l.name == name)
        })
    }

    /// Appends a message to a shard link's open frame; false if the link is
    /// gone (or was just dropped, its output full).
    pub(super) fn link_send(&mut self, shard: ConnRef, msg: &FProxyMsg<'_>) -> bool {
        matches!(
            self.shards.write(shard, |link, out| link.send(out, msg)),
            Some(Ok(()))
        )
    }

    /// Thesis `shard_forward_client_packet`: one `FPROXY_MSG_PLAYER_PACKET`
    /// appended to the shard's open frame, sealed with the rest at the end
    /// of the iteration. A player never makes the link pass its output
    /// limit: when the link is backed up (less room left than the packet
    /// plus `shard_out_reserve`, kept for the link's own messages) the
    /// packet is refused, and the player who sent it is cut off, not the
    /// link.
    pub(super) fn shard_forward_client_packet(
        &mut self,
        binding: Binding,
        frame: &[u8],
    ) -> Forwarded {
        let Some(room) = self.shards.out_room(binding.shard) else {
            return Forwarded::LinkGone;
        };
        let needed = frame.len() + PLAYER_PACKET_HEADER_BYTES + FRAME_OVERHEAD;
        if room < needed + self.settings.shard_out_reserve {
            return Forwarded::Backlogged;
        }
        let sent = self.shards.write(binding.shard, |link, out| {
            link.forward(out, binding.socket_id, frame)
        });
        match sent {
            Some(Ok(())) => Forwarded::Sent,
            _ => Forwarded::LinkGone,
        }
    }

    /// Records a player on the link of its binding.
    pub(super) fn bind_player(&mut self, binding: Binding, client: ConnRef) {
        if let Some(s) = self.shards.get_mut(binding.shard) {
            if let Some(link) = s.session.link_mut() {
                link.players.insert(binding.socket_id, client);
            }
        }
    }

    /// Forgets a player's socket, if the link still has it bound to that
    /// player; true if it did (and the shard is to be told).
    pub(super) fn unbind_player(&mut self, binding: Binding, client: ConnRef) -> bool {
        let Some(s) = self.shards.get_mut(binding.shard) else {
            return false;
        };
        let Some(link) = s.session.link_mut() else {
            return false;
        };
        let players = &mut link.players;
        if players.get(&binding.socket_id) != Some(&client) {
            return false;
        }
        players.remove(&binding.socket_id);
        true
    }

    /// Handles `EVENT_CONNECT_SHARD`: starts the handshake (the proxy speaks
    /// first, with its public key).
    pub(super) fn shard_connected(&mut self, shard: ConnRef, now: Instant) {
        let Some(entry) = self.links.connected(shard) else {
            return;
        };
        let pinned = entry.key;
        let keys = self.keys.clone();
        let login_deadline = Some(now + self.settings.shard_login_timeout);
        self.shards.write(shard, |s, out| {
            *s = Outbound::Link(Box::new(ShardLink {
                chan: Some(Channel::initiator(keys, pinned, out)),
                login_deadline,
                ..ShardLink::default()
            }));
        });
    }

    /// At the tick: links that never logged in by their deadline are
    /// dropped; ready links are pinged every `shard.heartbeat_ms`, and
    /// dropped (and reconnected) when a ping goes unanswered for
    /// `shard.heartbeat_timeout_ms`.
    pub(super) fn shard_heartbeats(&mut self, now: Instant) {
        let up: Vec<ConnRef> = self.links.up().collect();
        for shard in up {
            let Some(link) = self.shards.get(shard).and_then(|s| s.session.link()) else {
                continue;
            };
            let why = if link.state != LinkState::Ready {
                link.login_deadline
                    .filter(|&at| now >= at)
                    .map(|_| "no TPROXY_MSG_LOGIN_RESULT within shard.login_timeout_ms (is it a MUTA shard?)")
            } else {
                link.ping
                    .filter(|&(_, sent)| {
                        now.duration_since(sent) >= self.settings.heartbeat_timeout
                    })
                    .map(|_| "no TPROXY_MSG_PONG within shard.heartbeat_timeout_ms")
            };
            if let Some(why) = why {
                warn!("shard {}: {why}; reconnecting", self.links.addr(shard));
                self.shards
                    .disconnect(shard, DisconnectReason::Protocol(why.to_string()));
                continue;
            }
            let due = link.state == LinkState::Ready
                && link.ping.is_none()
                && !self.settings.heartbeat.is_zero()
                && link.next_ping.is_none_or(|at| now >= at);
            if due {
                self.send_ping(shard, now);
            }
        }
    }

    fn send_ping(&mut self, shard: ConnRef, now: Instant) {
        let seq = match self
            .shards
            .get_mut(shard)
            .and_then(|s| s.session.link_mut())
        {
            Some(link) => {
                link.ping_seq = link.ping_seq.wrapping_add(1);
                link.ping = Some((link.ping_seq, now));
                link.ping_seq
            }
            None => return,
        };
        self.link_send(shard, &FProxyMsg::Ping { seq });
    }

    /// `TPROXY_MSG_PONG`: the round trip of the ping it answers.
    fn on_pong(&mut self, shard: ConnRef, seq: u32, now: Instant) {
        let every = self.settings.heartbeat;
        let Some(link) = self
            .shards
            .get_mut(shard)
            .and_then(|s| s.session.link_mut())
        else {
            return;
        };
        match link.ping {
            Some((sent_seq, sent)) if sent_seq == seq => {
                link.rtt = Some(now.saturating_duration_since(sent));
                link.ping = None;
                link.next_ping = Some(sent + every);
            }
            _ => debug!("shard: a pong for no ping in flight ({seq})"),
        }
    }

    /// Handles `EVENT_READ_SHARD` (thesis `shard_read`): the bytes through
    /// the link's channel, each message of each frame to its handler.
    pub(super) fn shard_read(&mut self, shard: ConnRef, data: &mut [u8], now: Instant) {
        let Some(mut in_buf) = self.shards.begin_read(shard, data.len(), now) else {
            return;
        };
        let mut frames = Frames::new(&mut in_buf, data, self.settings.shard_in_buf_size);
        let result = self.shard_units(shard, &mut frames, now);
        drop(frames);
        self.shards.end_read(shard, in_buf);
        let Err(err) = result else {
            return;
        };
        let why = match err {
            PeerError::TooLarge => "frame larger than shard.in_buf_size".to_string(),
            PeerError::Refused(why) => {
                error!("shard {}: {why}", self.links.addr(shard));
                why.to_string()
            }
            e => e.to_string(),
        };
        self.shards
            .disconnect(shard, DisconnectReason::Protocol(why));
    }

    fn shard_units(
        &mut self,
        shard: ConnRef,
        frames: &mut Frames<'_>,
        now: Instant,
    ) -> Result<(), PeerError> {
        loop {
            let Some(slot) = self.shards.get_mut(shard) else {
                return Ok(()); // dropped meanwhile
            };
            let (s, out) = slot.session_and_out();
            let Some(chan) = s.link_mut().and_then(|l| l.chan.as_mut()) else {
                return Ok(());
            };
            let unit = frames.next(chan, out).map_err(PeerError::from)?;
            match unit {
                None => return Ok(()),
                Some(Unit::Opened) => self.shard_opened(shard)?,
                Some(Unit::Frame(frame)) => {
                    for msg in messages::<TProxyMsg<'_>>(frame) {
                        self.shard_msg(shard, msg?, now)?;
                    }
                }
            }
        }
    }

    /// The handshake finished: log in.
    fn shard_opened(&mut self, shard: ConnRef) -> Result<(), PeerError> {
        let settings = &self.settings;
        let login = FProxyMsg::Login {
            password: settings.password.expose().as_bytes(),
            public_address: &settings.public_address,
            capacity: settings.max_clients,
        };
        let Some(s) = self.shards.get_mut(shard) else {
            return Ok(());
        };
        let (s, out) = s.session_and_out();
        let Some(link) = s.link_mut() else {
            return Ok(());
        };
        link.send(out, &login)?;
        link.state = LinkState::LoggingIn;
        Ok(())
    }

    /// One message of a shard, in the order the link allows: the login result
    /// first and once, then the rest.
    fn shard_msg(
        &mut self,
        shard: ConnRef,
        msg: TProxyMsg<'_>,
        now: Instant,
    ) -> Result<(), PeerError> {
        let state = self
            .shards
            .get(shard)
            .and_then(|s| s.session.link())
            .map(|l| l.state);
        match (msg, state) {
            (TProxyMsg::LoginResult { result, shard_name }, Some(LinkState::LoggingIn)) => {
                self.on_login_result(shard, result, shard_name)
            }
            (TProxyMsg::LoginResult { .. }, _) => {
                Err(PeerError::Refused("a second TPROXY_MSG_LOGIN_RESULT"))
            }
            (_, Some(LinkState::Handshake | LinkState::LoggingIn)) => {
                Err(PeerError::Refused("message before TPROXY_MSG_LOGIN_RESULT"))
            }
            (_, None) => Ok(()), // dropped meanwhile
            (
                TProxyMsg::OpenedSocket {
                    socket_id,
                    account_id,
                    login_session_id,
                    ip,
                    account_name,
                    token,
                },
                Some(LinkState::Ready),
            ) => self.on_opened_socket(
                shard,
                socket_id,
                Reservation {
                    account_name: account_name.to_string(),
                    account_id,
                    login_session_id,
                    ip,
                    token: *token,
                    expires: now + self.settings.reservation_timeout,
                },
            ),
            (TProxyMsg::ClosedSocket { socket_id }, Some(LinkState::Ready)) => {
                self.on_closed_socket(shard, socket_id);
                Ok(())
            }
            (TProxyMsg::PlayerPacket { socket_id, data }, Some(LinkState::Ready)) => {
                self.on_player_packet(shard, socket_id, data);
                Ok(())
            }
            (TProxyMsg::Pong { seq }, Some(LinkState::Ready)) => {
                self.on_pong(shard, seq, now);
                Ok(())
            }
        }
    }

    /// `TPROXY_MSG_LOGIN_RESULT`: the shard accepted the password and told
    /// its name, which no other link may have.
    fn on_login_result(&mut self, shard: ConnRef, result: u8, name: &str) -> Result<(), PeerError> {
        if result != LOGIN_RESULT_OK {
            return Err(PeerError::Refused(
                "the shard refused the password (shard.password)",
            ));
        }
        if self.ready_link_named(name).is_some() {
            error!(
                "shard {}: another shard is already named {name:?}",
                self.links.addr(shard)
            );
            return Err(PeerError::Refused("another shard is already named so"));
        }
        if let Some(link) = self
            .shards
            .get_mut(shard)
            .and_then(|s| s.session.link_mut())
        {
            link.name = name.to_string();
            link.state = LinkState::Ready;
            link.login_deadline = None;
        }
        let addr = self.links.addr(shard);
        info!("shard {addr}: logged in as {name:?}");
        Ok(())
    }

    /// `TPROXY_MSG_OPENED_SOCKET`: a reservation, if the socket id is new on
    /// this link and the proxy has room; a newer login of the same account
    /// replaces the older (and the shard is told to forget it).
    fn on_opened_socket(
        &mut self,
        shard: ConnRef,
        socket_id: u32,
        r: Reservation,
    ) -> Result<(), PeerError> {
        let taken = self.reservations.contains(shard, socket_id)
            || self
                .shards
                .get(shard)
                .and_then(|s| s.session.link())
                .is_some_and(|l| l.players.contains_key(&socket_id));
        let result = if taken {
            OPENED_SOCKET_DUPLICATE
        } else if self.draining || self.links.is_removed(shard) {
            // Stopping, or this shard was removed from shards.cfg: no new
            // player (the login server tries another proxy).
            OPENED_SOCKET_FULL
        } else if self.reservations.len() + self.muta_clients_in_use()
            >= self.settings.max_clients as usize
        {
            OPENED_SOCKET_FULL
        } else if !self.reservations.holds_account(shard, &r.account_name)
            && self.reservations.count_for(r.ip) >= self.settings.addr_limits.conns_max
        {
            // One address's logins hold no more slots than its connections
            // may (reservation squatting from one address, or one IPv6 /64);
            // a login that replaces its account's older one adds none.
            self.stats.refusals.count(Refusal::ReservationsPerAddr);
            OPENED_SOCKET_FULL
        } else {
            if let Some(old) = self.reservations.reserve(shard, socket_id, r) {
                self.send_or_refuse(
                    shard,
                    &FProxyMsg::CloseSocket {
                        socket_id: old,
                        reason: CLOSE_REASON_REPLACED,
                    },
                )?;
            }
            OPENED_SOCKET_OK
        };
        self.send_or_refuse(shard, &FProxyMsg::OpenedSocketResult { socket_id, result })
    }

    /// Appends a reply to the link's frame; the link's own failure ends it.
    fn send_or_refuse(&mut self, shard: ConnRef, msg: &FProxyMsg<'_>) -> Result<(), PeerError> {
        match self.shards.write(shard, |link, out| link.send(out, msg)) {
            Some(result) => result.map_err(PeerError::from),
            None => Ok(()), // dropped (its output full): nothing more to do
        }
    }

    /// `TPROXY_MSG_CLOSED_SOCKET`: the shard ends a player, or a reservation.
    fn on_closed_socket(&mut self, shard: ConnRef, socket_id: u32) {
        let player = self
            .shards
            .get_mut(shard)
            .and_then(|s| s.session.link_mut())
            .and_then(|l| l.players.remove(&socket_id));
        if let Some(client) = player {
            self.clients
                .disconnect(client, DisconnectReason::Closed("closed by the shard"));
        } else if !self.reservations.release(shard, socket_id) {
            debug!(
                "shard {}: closed unknown socket {socket_id}",
                self.links.addr(shard)
            );
        }
    }

    /// `TPROXY_MSG_PLAYER_PACKET` (thesis `cl_forward_shard_packet`): a frame
    /// the shard encrypted for its player, copied to the player's output. A
    /// packet for a player who just left is dropped: the shard will see
    /// `FPROXY_MSG_CLOSE_SOCKET`.
    fn on_player_packet(&mut self, shard: ConnRef, socket_id: u32, data: &[u8]) {
        let Some(&client) = self
            .shards
            .get(shard)
            .and_then(|s| s.session.link())
            .and_then(|l| l.players.get(&socket_id))
        else {
            return;
        };
        if self.clients.send(client, data) {
            self.stats.packets_to_clients += 1;
        }
    }

    /// Releases reservations nobody claimed in time (thesis §3.8.5 "Timing
    /// clients out") and tells their shards.
    pub(super) fn expire_reservations(&mut self, now: Instant) {
        let mut expired = std::mem::take(&mut self.scratch_expired);
        self.reservations.expired(now, &mut expired);
        for &(shard, socket_id) in &expired {
            debug!(
                "shard {}: reservation {socket_id} expired",
                self.links.addr(shard)
            );
            self.reservations.release(shard, socket_id);
            self.link_send(
                shard,
                &FProxyMsg::CloseSocket {
                    socket_id,
                    reason: CLOSE_REASON_TIMEOUT,
                },
            );
        }
        expired.clear();
        self.scratch_expired = expired;
    }

    /// A shard connection ended (refused, timed out, lost or dropped): its
    /// players are disconnected cleanly, its reservations released, and the
    /// shard module schedules the next attempt. The shard is not told (it is
    /// gone).
    pub(super) fn shard_gone(
        &mut self,
        conn: ConnRef,
        reason: &DisconnectReason,
        link: ShardLink,
        now: Instant,
    ) {
        self.links.gone(conn, reason, now);
        let released = self.reservations.release_link(conn);
        let players = link.players.len();
        for (_, client) in link.players {
            self.clients
                .disconnect(client, DisconnectReason::Closed("its shard disconnected"));
        }
        // `ShardLinks::gone` has logged the loss itself.
        if link.state == LinkState::Ready {
            info!(
                "shard {:?}: {players} player(s) disconnected, {released} reservation(s) released",
                link.name
            );
        }
    }
}
