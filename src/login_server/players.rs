//! The login server's players (thesis §3.8.3, the player's first stop; the
//! protocol is a port decision, `docs/protocol.md` §5): the handshake, then
//! one request per frame, one function each: `TLOGIN_MSG_LOGIN`
//! ([`LoginServer::on_login`]), then `TLOGIN_MSG_SELECT_SHARD`
//! ([`LoginServer::on_select_shard`]), which waits for the shard's answer.

use std::net::SocketAddr;
use std::time::Instant;

use log::{debug, warn};

use crate::com::ConnRef;
use crate::conn::{DisconnectReason, Disconnected, Session};
use crate::cryptchan::{self, TOKEN_BYTES};
use crate::proto::frame::{Channel, Frames, PeerError, Unit};
use crate::proto::login::{
    FromLogin, ProxyTicket, RESULT_BAD_CREDENTIALS, RESULT_NO_SHARD, RESULT_OK, RESULT_REFUSED,
    ToLogin, ToShard,
};
use crate::proto::single_message;

use super::links::ShardLinkState;
use super::{Account, LoginServer, PLAYER_IN_BUF_SIZE, Pending};

/// Where a player connection is.
#[derive(Debug, Default)]
pub enum PlayerState {
    /// Key exchange not finished (or a fresh slot).
    #[default]
    Handshake,
    /// Waiting for `TLOGIN_MSG_LOGIN`.
    AwaitLogin,
    /// Logged in; waiting for `TLOGIN_MSG_SELECT_SHARD`.
    LoggedIn {
        /// The account.
        account_id: u64,
        /// Its name.
        account_name: String,
    },
    /// Waiting for the shard's answer to request `request_id`.
    AwaitShard {
        /// The request.
        request_id: u32,
    },
    /// Answered; the player disconnects.
    Done,
}

/// A player's connection.
#[derive(Debug, Default)]
pub struct PlayerConn {
    chan: Option<Channel>,
    state: PlayerState,
}

impl Session for PlayerConn {
    fn before_flush(&mut self, out: &mut Vec<u8>) {
        if let Some(chan) = &mut self.chan {
            chan.seal(out).ok();
        }
    }
}

impl LoginServer {
    /// A player connects: a slot and the acceptor's side of a channel.
    pub(super) fn player_accept(
        &mut self,
        listener: u32,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<ConnRef> {
        let client = self.clients.accept(listener, peer, now)?;
        let slot = self.clients.get_mut(client).expect("just accepted");
        slot.session.chan = Some(Channel::acceptor(self.keys.clone()));
        Some(client)
    }

    /// A player's bytes: handshake, then one request per frame.
    pub(super) fn player_read(&mut self, client: ConnRef, data: &mut [u8], now: Instant) {
        let Some(mut in_buf) = self.clients.begin_read(client, data.len(), now) else {
            return;
        };
        let mut frames = Frames::new(&mut in_buf, data, PLAYER_IN_BUF_SIZE);
        let result = self.player_units(client, &mut frames);
        drop(frames);
        self.clients.end_read(client, in_buf);
        if let Err(err) = result {
            let why = match err {
                PeerError::TooLarge => "frame too large".to_string(),
                e => e.to_string(),
            };
            self.clients
                .disconnect(client, DisconnectReason::Protocol(why));
        }
    }

    fn player_units(&mut self, client: ConnRef, frames: &mut Frames<'_>) -> Result<(), PeerError> {
        loop {
            let Some(slot) = self.clients.get_mut(client) else {
                return Ok(());
            };
            let (player, out) = slot.session_and_out();
            let Some(chan) = player.chan.as_mut() else {
                return Ok(());
            };
            match frames.next(chan, out)? {
                None => return Ok(()),
                Some(Unit::Opened) => player.state = PlayerState::AwaitLogin,
                Some(Unit::Frame(frame)) => {
                    let msg = single_message::<ToLogin<'_>>(frame)?;
                    self.player_msg(client, msg)?;
                }
            }
        }
    }

    /// One request, in the order the login allows.
    fn player_msg(&mut self, client: ConnRef, msg: ToLogin<'_>) -> Result<(), PeerError> {
        let Some(slot) = self.clients.get_mut(client) else {
            return Ok(());
        };
        match (msg, &slot.session.state) {
            (
                ToLogin::Login {
                    account_name,
                    password,
                },
                PlayerState::AwaitLogin,
            ) => self.on_login(client, account_name, password),
            (ToLogin::SelectShard { shard_name }, PlayerState::LoggedIn { .. }) => {
                self.on_select_shard(client, shard_name)
            }
            _ => Err(PeerError::Refused("message out of order")),
        }
    }

    /// `TLOGIN_MSG_LOGIN`: the account's hash checked (or, with
    /// `--create-accounts`, a new account made), answered with
    /// `FLOGIN_MSG_LOGIN_RESULT`.
    fn on_login(
        &mut self,
        client: ConnRef,
        account_name: &str,
        password: &[u8],
    ) -> Result<(), PeerError> {
        let password = std::str::from_utf8(password).unwrap_or("");
        let account_id = self.check_account(account_name, password)?;
        let result = match account_id {
            Some(account_id) => FromLogin::LoginResult {
                result: RESULT_OK,
                account_id,
            },
            None => FromLogin::LoginResult {
                result: RESULT_BAD_CREDENTIALS,
                account_id: 0,
            },
        };
        self.send_to_player(client, &result)?;
        let Some(account_id) = account_id else {
            return Err(PeerError::Refused("wrong account name or password"));
        };
        if let Some(slot) = self.clients.get_mut(client) {
            slot.session.state = PlayerState::LoggedIn {
                account_id,
                account_name: account_name.to_string(),
            };
        }
        Ok(())
    }

    /// The account's id if the password matches its hash; an unknown account
    /// is created with `--create-accounts`, up to `--max-accounts`.
    fn check_account(
        &mut self,
        account_name: &str,
        password: &str,
    ) -> Result<Option<u64>, PeerError> {
        if let Some(a) = self.accounts.get(account_name) {
            return Ok(cryptchan::pwhash_str_verify(&a.hash, password).then_some(a.id));
        }
        if !self.cfg.create_accounts || password.is_empty() {
            return Ok(None);
        }
        if self.accounts.len() >= self.cfg.max_accounts {
            warn!(
                "not creating account `{account_name}`: --max-accounts {} reached",
                self.cfg.max_accounts
            );
            return Ok(None);
        }
        let hash = cryptchan::pwhash_str(password, self.cfg.pwhash_cost)
            .map_err(|_| PeerError::Refused("cannot hash"))?;
        let id = self.next_account_id;
        self.next_account_id += 1;
        self.accounts
            .insert(account_name.to_string(), Account { id, hash });
        Ok(Some(id))
    }

    /// `TLOGIN_MSG_SELECT_SHARD`: a token for the player, sent to the shard
    /// in `TSHARD_MSG_PLAYER`; the player waits for the shard's answer (or
    /// hears at once that no such shard is connected).
    fn on_select_shard(&mut self, client: ConnRef, shard_name: &str) -> Result<(), PeerError> {
        let Some(shard) = self.ready_link_named(shard_name) else {
            let none = FromLogin::ShardResult {
                result: RESULT_NO_SHARD,
                ticket: None,
            };
            self.send_to_player(client, &none)?;
            self.set_state(client, PlayerState::Done);
            return Ok(());
        };
        let Some(slot) = self.clients.get(client) else {
            return Ok(());
        };
        let PlayerState::LoggedIn {
            account_id,
            account_name,
        } = &slot.session.state
        else {
            return Ok(());
        };
        // Copied: the message below is sent while the pool is written to.
        let (account_id, account_name) = (*account_id, account_name.clone());
        let ip = slot.addr().ip().to_canonical();
        let mut pending = Pending {
            client,
            shard,
            account_id,
            login_session_id: self.next_session_id,
            token: [0u8; TOKEN_BYTES],
        };
        cryptchan::random_bytes(&mut pending.token);
        let request_id = self.next_request_id;
        let msg = ToShard::Player {
            request_id,
            account_id,
            login_session_id: pending.login_session_id,
            ip,
            account_name: &account_name,
            token: &pending.token,
        };
        if !self.send_to_shard(shard, &msg) {
            return Err(PeerError::Refused("the shard link failed"));
        }
        self.next_request_id = request_id.wrapping_add(1);
        self.next_session_id = self.next_session_id.wrapping_add(1);
        self.pending.insert(request_id, pending);
        self.set_state(client, PlayerState::AwaitShard { request_id });
        Ok(())
    }

    fn set_state(&mut self, client: ConnRef, state: PlayerState) {
        if let Some(slot) = self.clients.get_mut(client) {
            slot.session.state = state;
        }
    }

    /// Appends a message to the player's open frame.
    fn send_to_player(&mut self, client: ConnRef, msg: &FromLogin<'_>) -> Result<(), PeerError> {
        let sent = self.clients.write(client, |player, out| {
            let chan = player.chan.as_mut()?;
            chan.room(out, FromLogin::MAX).ok()?;
            msg.encode(out);
            Some(())
        });
        // A player dropped meanwhile (its output full) has nothing more to hear.
        if matches!(sent, Some(None)) {
            return Err(PeerError::Refused("cannot write to the player"));
        }
        Ok(())
    }

    /// Sends a waiting player the shard's answer: where to connect, or why
    /// not. The player disconnects after it.
    pub(super) fn answer_player(
        &mut self,
        p: &Pending,
        result: u8,
        ticket: Option<&ProxyTicket<'_>>,
    ) {
        let msg = match ticket {
            Some(ticket) if result == RESULT_OK => FromLogin::ShardResult {
                result: RESULT_OK,
                ticket: Some((ticket.clone(), &p.token)),
            },
            _ => FromLogin::ShardResult {
                result: if result == RESULT_OK {
                    RESULT_REFUSED
                } else {
                    result
                },
                ticket: None,
            },
        };
        if self.send_to_player(p.client, &msg).is_ok() {
            self.set_state(p.client, PlayerState::Done);
        }
    }

    /// A player left: if it was waiting for a shard, the shard is told to
    /// forget it (`TSHARD_MSG_CANCEL`).
    pub(super) fn player_gone(&mut self, gone: Disconnected<PlayerConn>) {
        let PlayerState::AwaitShard { request_id } = gone.session.state else {
            return;
        };
        let Some(p) = self.pending.remove(&request_id) else {
            return;
        };
        debug!("player left before its shard answered; cancelling");
        self.send_to_shard(
            p.shard,
            &ToShard::Cancel {
                account_id: p.account_id,
                login_session_id: p.login_session_id,
            },
        );
    }

    /// The logged-in link to the shard named `name`.
    fn ready_link_named(&self, name: &str) -> Option<crate::com::ConnRef> {
        self.links.up().find(|&shard| {
            self.shards
                .get(shard)
                .is_some_and(|s| s.session.state == ShardLinkState::Ready && s.session.name == name)
        })
    }
}
