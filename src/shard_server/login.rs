//! The reference shard's login-server links (port decision: the thesis names
//! the login server, §2.3 and §3.6, but not its protocol with the shard;
//! `docs/protocol.md` gives every byte). The shard is the acceptor of the
//! cryptchan handshake; then, one function per message:
//!
//! - `TSHARD_MSG_LOGIN` (`on_login`): the login password, in constant time,
//!   answered with `FSHARD_MSG_LOGIN_RESULT` and the shard's name either way;
//!   a wrong one ends the link;
//! - `TSHARD_MSG_PLAYER` (`on_player`): a player chose this shard; the proxy
//!   module opens a socket for them (thesis `proxy_new_socket`), and the
//!   answer, `FSHARD_MSG_PLAYER_RESULT` with the proxy's address and key, goes
//!   back once the proxy has reserved the slot (`socket_opened`);
//! - `TSHARD_MSG_CANCEL` (`on_cancel`): the login server gave up on a player
//!   (thesis `proxy_cancel_socket`).
//!
//! Messages are handled in the order they arrived.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};

use crate::com::ConnRef;
use crate::conn::DisconnectReason;
use crate::cryptchan::{KeyPair, TOKEN_BYTES, memcmp_ct};
use crate::proto::frame::{Channel, Frames, PeerError, Unit};
use crate::proto::login::{
    FromShard, ProxyTicket, RESULT_BAD_CREDENTIALS, RESULT_NO_PROXY, RESULT_OK, ToShard,
};
use crate::proto::messages;

use super::proxy::SocketOpened;
use super::{LINK_IN_BUF_SIZE, ShardConn, ShardServer};

/// Where a login-server link is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoginLinkState {
    /// Key exchange not finished.
    #[default]
    Handshake,
    /// Waiting for `TSHARD_MSG_LOGIN`.
    AwaitLogin,
    /// Logged in.
    Ready,
}

/// A connected login server.
#[derive(Debug)]
pub struct LoginLink {
    pub(super) chan: Channel,
    state: LoginLinkState,
}

impl LoginLink {
    /// A link for a connection accepted on the login listener.
    pub fn new(keys: Arc<KeyPair>) -> LoginLink {
        LoginLink {
            chan: Channel::acceptor(keys),
            state: LoginLinkState::Handshake,
        }
    }
}

/// A player request from a login server: `TSHARD_MSG_PLAYER`'s fields.
struct PlayerRequest<'a> {
    request_id: u32,
    account_id: u64,
    login_session_id: u32,
    ip: IpAddr,
    account_name: &'a str,
    token: &'a [u8; TOKEN_BYTES],
}

/// The login link's session in `session`, if it is one.
fn login_link(session: &mut ShardConn) -> Option<&mut LoginLink> {
    match session {
        ShardConn::Login(link) => Some(link),
        _ => None,
    }
}

impl ShardServer {
    /// Handles `EVENT_READ_CLIENT` for a login-server link: the handshake,
    /// then each message of each frame to its handler. A link that breaks
    /// the protocol is disconnected.
    pub(super) fn login_read(&mut self, login: ConnRef, data: &mut [u8], now: Instant) {
        let Some(mut in_buf) = self.clients.begin_read(login, data.len(), now) else {
            return;
        };
        // Out of the slot while its frames are handled, so the handlers can
        // reach the proxy links (to open sockets) and the module.
        let mut frames = Frames::new(&mut in_buf, data, LINK_IN_BUF_SIZE);
        let result = self.login_units(login, &mut frames);
        drop(frames);
        self.clients.end_read(login, in_buf);
        if let Err(err) = result {
            let why = match err {
                PeerError::TooLarge => "frame too large".to_string(),
                e => e.to_string(),
            };
            warn!("login link {}: {why}", login.index);
            self.clients
                .disconnect(login, DisconnectReason::Protocol(why));
        }
    }

    /// The units of one read: the handshake's end, then frames.
    fn login_units(&mut self, login: ConnRef, frames: &mut Frames<'_>) -> Result<(), PeerError> {
        loop {
            let Some(slot) = self.clients.get_mut(login) else {
                return Ok(()); // dropped meanwhile
            };
            let (session, out) = slot.session_and_out();
            let Some(link) = login_link(session) else {
                return Ok(());
            };
            match frames.next(&mut link.chan, out)? {
                None => return Ok(()),
                Some(Unit::Opened) => link.state = LoginLinkState::AwaitLogin,
                Some(Unit::Frame(frame)) => {
                    for msg in messages::<ToShard<'_>>(frame) {
                        self.login_msg(login, msg?)?;
                    }
                }
            }
        }
    }

    /// One message of a login server, in the order the link allows:
    /// `TSHARD_MSG_LOGIN` first and once, then players and cancels.
    fn login_msg(&mut self, login: ConnRef, msg: ToShard<'_>) -> Result<(), PeerError> {
        let state = self
            .clients
            .get_mut(login)
            .and_then(|s| login_link(&mut s.session))
            .map(|link| link.state);
        match (msg, state) {
            (_, None) => Ok(()), // dropped meanwhile
            (ToShard::Login { password }, Some(LoginLinkState::AwaitLogin)) => {
                self.on_login(login, password)
            }
            (
                ToShard::Player {
                    request_id,
                    account_id,
                    login_session_id,
                    ip,
                    account_name,
                    token,
                },
                Some(LoginLinkState::Ready),
            ) => {
                let request = PlayerRequest {
                    request_id,
                    account_id,
                    login_session_id,
                    ip,
                    account_name,
                    token,
                };
                self.on_player(login, &request);
                Ok(())
            }
            (
                ToShard::Cancel {
                    account_id,
                    login_session_id,
                },
                Some(LoginLinkState::Ready),
            ) => {
                self.on_cancel(account_id, login_session_id);
                Ok(())
            }
            _ => Err(PeerError::Refused("message out of order")),
        }
    }

    /// `TSHARD_MSG_LOGIN`: the password (in constant time), answered with
    /// `FSHARD_MSG_LOGIN_RESULT` either way.
    fn on_login(&mut self, login: ConnRef, password: &[u8]) -> Result<(), PeerError> {
        let ok = memcmp_ct(password, self.cfg.login_password.expose().as_bytes());
        let Some(slot) = self.clients.get_mut(login) else {
            return Ok(());
        };
        let (session, out) = slot.session_and_out();
        let Some(link) = login_link(session) else {
            return Ok(());
        };
        link.chan.room(out, FromShard::MAX)?;
        FromShard::LoginResult {
            result: if ok {
                RESULT_OK
            } else {
                RESULT_BAD_CREDENTIALS
            },
            shard_name: &self.cfg.name,
        }
        .encode(out);
        if !ok {
            // The answer still goes out: the disconnect writes it last.
            return Err(PeerError::Refused("wrong login password"));
        }
        link.state = LoginLinkState::Ready;
        Ok(())
    }

    /// `TSHARD_MSG_PLAYER`: a socket for the player on the least-loaded proxy
    /// (thesis `proxy_new_socket`); the login server hears back when the
    /// proxy answers, or at once if no proxy can take the player.
    fn on_player(&mut self, login: ConnRef, r: &PlayerRequest<'_>) {
        let opened = self.module.proxy_new_socket(
            &mut self.clients,
            r.account_name,
            r.account_id,
            r.login_session_id,
            r.ip,
            r.token,
        );
        match opened {
            Ok(socket) => {
                let name = r.account_name.to_string();
                self.pending.insert(socket, (login, r.request_id, name));
            }
            Err(err) => {
                info!("player {} cannot join: {err}", r.account_name);
                let result = FromShard::PlayerResult {
                    request_id: r.request_id,
                    result: RESULT_NO_PROXY,
                    ticket: None,
                };
                self.send_to_login(login, &result);
            }
        }
    }

    /// `TSHARD_MSG_CANCEL`: the player will not come (thesis
    /// `proxy_cancel_socket`).
    fn on_cancel(&mut self, account_id: u64, login_session_id: u32) {
        self.module
            .proxy_cancel_socket(&mut self.clients, account_id, login_session_id);
    }

    /// The proxy module's answer to a `proxy_new_socket` of a login server:
    /// `FSHARD_MSG_PLAYER_RESULT`, with the ticket (the proxy's address and
    /// key) if the proxy reserved the slot. The player's name is kept until
    /// they connect.
    pub(super) fn socket_opened(&mut self, opened: SocketOpened) {
        let Some((login, request_id, name)) = self.pending.remove(&opened.socket) else {
            return;
        };
        let ticket = match (&opened.proxy_address, opened.proxy_key) {
            (Some(address), Some(key)) => {
                self.names.insert(opened.socket, name);
                Some(ProxyTicket { address, key })
            }
            _ => None,
        };
        let result = if ticket.is_some() {
            RESULT_OK
        } else {
            RESULT_NO_PROXY
        };
        let msg = FromShard::PlayerResult {
            request_id,
            result,
            ticket,
        };
        self.send_to_login(login, &msg);
    }

    /// Appends a message to a login link's open frame (nothing if the link
    /// is gone).
    fn send_to_login(&mut self, login: ConnRef, msg: &FromShard<'_>) {
        self.clients.write(login, |session, out| {
            if let Some(link) = login_link(session)
                && link.chan.room(out, FromShard::MAX).is_ok()
            {
                msg.encode(out);
            }
        });
    }
}
