//! The login server's links to the shards' login listeners (port decision,
//! `docs/protocol.md` §5): the handshake (the login server is the
//! initiator), `TSHARD_MSG_LOGIN` with the shards' login password, then one
//! function per shard message: `FSHARD_MSG_LOGIN_RESULT`
//! ([`LoginServer::on_login_result`]) and `FSHARD_MSG_PLAYER_RESULT`
//! ([`LoginServer::on_player_result`]), the shard's answer for a waiting
//! player.

use std::time::Instant;

use log::{info, warn};

use crate::com::ConnRef;
use crate::conn::{DisconnectReason, Disconnected, Session};
use crate::proto::frame::{Channel, Frames, PeerError, Unit};
use crate::proto::login::{FromShard, ProxyTicket, RESULT_NO_SHARD, RESULT_OK, ToShard};
use crate::proto::messages;

use super::{LoginServer, SHARD_IN_BUF_SIZE};

/// Where a shard link is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShardLinkState {
    /// Key exchange not finished.
    #[default]
    Handshake,
    /// `TSHARD_MSG_LOGIN` sent.
    LoggingIn,
    /// Logged in.
    Ready,
}

/// A link to one shard.
#[derive(Debug, Default)]
pub struct ShardLink {
    pub(super) chan: Option<Channel>,
    pub(super) state: ShardLinkState,
    pub(super) name: String,
}

impl Session for ShardLink {
    fn before_flush(&mut self, out: &mut Vec<u8>) {
        if let Some(chan) = &mut self.chan {
            chan.seal(out).ok();
        }
    }
}

impl LoginServer {
    /// A link connected: the handshake starts (the login server speaks
    /// first).
    pub(super) fn shard_connected(&mut self, shard: ConnRef) {
        let Some(entry) = self.links.connected(shard) else {
            return;
        };
        let pinned = entry.key;
        let keys = self.keys.clone();
        self.shards.write(shard, |link, out| {
            link.chan = Some(Channel::initiator(keys, pinned, out));
        });
    }

    /// Appends a message to a shard link's open frame; false if the link is
    /// gone.
    pub(super) fn send_to_shard(&mut self, shard: ConnRef, msg: &ToShard<'_>) -> bool {
        let sent = self.shards.write(shard, |link, out| {
            let chan = link.chan.as_mut()?;
            chan.room(out, ToShard::MAX).ok()?;
            msg.encode(out);
            Some(())
        });
        matches!(sent, Some(Some(())))
    }

    /// A shard's bytes: handshake, login result, player results.
    pub(super) fn shard_read(&mut self, shard: ConnRef, data: &mut [u8], now: Instant) {
        let Some(mut in_buf) = self.shards.begin_read(shard, data.len(), now) else {
            return;
        };
        let mut frames = Frames::new(&mut in_buf, data, SHARD_IN_BUF_SIZE);
        let result = self.shard_units(shard, &mut frames);
        drop(frames);
        self.shards.end_read(shard, in_buf);
        if let Err(err) = result {
            let why = match err {
                PeerError::TooLarge => "frame too large".to_string(),
                e => e.to_string(),
            };
            warn!("{shard}: {why}");
            self.shards
                .disconnect(shard, DisconnectReason::Protocol(why));
        }
    }

    fn shard_units(&mut self, shard: ConnRef, frames: &mut Frames<'_>) -> Result<(), PeerError> {
        loop {
            let Some(slot) = self.shards.get_mut(shard) else {
                return Ok(());
            };
            let (link, out) = slot.session_and_out();
            let Some(chan) = link.chan.as_mut() else {
                return Ok(());
            };
            match frames.next(chan, out)? {
                None => return Ok(()),
                Some(Unit::Opened) => {
                    chan.room(out, ToShard::MAX)?;
                    ToShard::Login {
                        password: self.cfg.shard_password.expose().as_bytes(),
                    }
                    .encode(out);
                    link.state = ShardLinkState::LoggingIn;
                }
                Some(Unit::Frame(frame)) => {
                    for msg in messages::<FromShard<'_>>(frame) {
                        self.shard_msg(shard, msg?)?;
                    }
                }
            }
        }
    }

    /// One shard message, in the order the link allows.
    fn shard_msg(&mut self, shard: ConnRef, msg: FromShard<'_>) -> Result<(), PeerError> {
        let Some(state) = self.shards.get(shard).map(|s| s.session.state) else {
            return Ok(());
        };
        match (msg, state) {
            (FromShard::LoginResult { result, shard_name }, ShardLinkState::LoggingIn) => {
                self.on_login_result(shard, result, shard_name)
            }
            (
                FromShard::PlayerResult {
                    request_id,
                    result,
                    ticket,
                },
                ShardLinkState::Ready,
            ) => {
                self.on_player_result(request_id, result, ticket.as_ref());
                Ok(())
            }
            _ => Err(PeerError::Refused("message out of order")),
        }
    }

    /// `FSHARD_MSG_LOGIN_RESULT`: the shard took the password and told its
    /// name.
    fn on_login_result(
        &mut self,
        shard: ConnRef,
        result: u8,
        shard_name: &str,
    ) -> Result<(), PeerError> {
        if result != RESULT_OK {
            return Err(PeerError::Refused("the shard refused the login password"));
        }
        if let Some(s) = self.shards.get_mut(shard) {
            s.session.name = shard_name.to_string();
            s.session.state = ShardLinkState::Ready;
        }
        let addr = self.links.addr(shard);
        info!("shard {addr}: logged in as {shard_name:?}");
        Ok(())
    }

    /// `FSHARD_MSG_PLAYER_RESULT`: the answer for a waiting player (who may
    /// have left meanwhile).
    fn on_player_result(&mut self, request_id: u32, result: u8, ticket: Option<&ProxyTicket<'_>>) {
        if let Some(p) = self.pending.remove(&request_id) {
            self.answer_player(&p, result, ticket);
        }
    }

    /// A shard link ended: its waiting players hear that there is no shard,
    /// and the shard module schedules the next attempt.
    pub(super) fn shard_gone(&mut self, gone: Disconnected<ShardLink>, now: Instant) {
        self.links.gone(gone.conn, &gone.reason, now);
        let lost: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.shard == gone.conn)
            .map(|(&id, _)| id)
            .collect();
        for id in lost {
            if let Some(p) = self.pending.remove(&id) {
                self.answer_player(&p, RESULT_NO_SHARD, None);
            }
        }
    }
}
