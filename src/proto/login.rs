//! The login protocols (thesis §3.8.3). The thesis describes the flow but not
//! the bytes, so every layout here is a port decision (`docs/protocol.md`).
//!
//! Player and login server ([`ToLogin`], [`FromLogin`]); the player opens
//! the connection:
//!
//! ```text
//! player → login   TLOGIN_MSG_LOGIN          account name, password
//! login → player   FLOGIN_MSG_LOGIN_RESULT   result, account id
//! player → login   TLOGIN_MSG_SELECT_SHARD   shard name
//! login → player   FLOGIN_MSG_SHARD_RESULT   result; if ok: proxy address, proxy key, token
//! ```
//!
//! Login server and shard ([`ToShard`], [`FromShard`]); the login server
//! opens the connection and logs in with a password, as a proxy does:
//!
//! ```text
//! login → shard    TSHARD_MSG_LOGIN          password
//! shard → login    FSHARD_MSG_LOGIN_RESULT   result, shard name
//! login → shard    TSHARD_MSG_PLAYER         request id, account, session, IP, token
//! shard → login    FSHARD_MSG_PLAYER_RESULT  request id, result; if ok: proxy address, proxy key
//! login → shard    TSHARD_MSG_CANCEL         account id, session (the player gave up)
//! ```

use std::net::IpAddr;

use crate::cryptchan::{PUBLIC_KEY_BYTES, PublicKey, TOKEN_BYTES};
use crate::proto::{
    ACCOUNT_NAME_MAX, ADDRESS_MAX, Decoded, PASSWORD_MAX, ProtoError, ReadError, Reader,
    SHARD_NAME_MAX, decoded, put,
};

/// Player → login: log in.
pub const TLOGIN_MSG_LOGIN: u8 = 1;
/// Login → player: the login's result.
pub const FLOGIN_MSG_LOGIN_RESULT: u8 = 2;
/// Player → login: the shard the player wants.
pub const TLOGIN_MSG_SELECT_SHARD: u8 = 3;
/// Login → player: where to connect, or why not.
pub const FLOGIN_MSG_SHARD_RESULT: u8 = 4;

/// Login → shard: log in with the shard's login password.
pub const TSHARD_MSG_LOGIN: u8 = 1;
/// Shard → login: the login's result and the shard's name.
pub const FSHARD_MSG_LOGIN_RESULT: u8 = 2;
/// Login → shard: a player wants in (`proxy_new_socket`).
pub const TSHARD_MSG_PLAYER: u8 = 3;
/// Shard → login: the proxy the player should use, or why not.
pub const FSHARD_MSG_PLAYER_RESULT: u8 = 4;
/// Login → shard: forget a player who did not wait (`proxy_cancel_socket`).
pub const TSHARD_MSG_CANCEL: u8 = 5;

/// Result: success.
pub const RESULT_OK: u8 = 0;
/// Result: wrong account name or password.
pub const RESULT_BAD_CREDENTIALS: u8 = 1;
/// Result: no such shard, or it is down.
pub const RESULT_NO_SHARD: u8 = 2;
/// Result: the shard has no proxy that can take the player.
pub const RESULT_NO_PROXY: u8 = 3;
/// Result: refused. Sent only in place of a success that came without its
/// ticket, which the reference shard never answers; a request out of order
/// is not answered but closes the connection (`docs/protocol.md` §5.1).
pub const RESULT_REFUSED: u8 = 4;

/// Where a player should connect: the proxy's public address and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyTicket<'a> {
    /// `HOST:PORT`.
    pub address: &'a str,
    /// The key the proxy will present in its handshake.
    pub key: PublicKey,
}

fn read_ticket<'a>(r: &mut Reader<'a>) -> Result<ProxyTicket<'a>, ReadError> {
    Ok(ProxyTicket {
        address: r.str8(ADDRESS_MAX, "proxy address")?,
        key: PublicKey(*r.array::<PUBLIC_KEY_BYTES>()?),
    })
}

fn put_ticket(out: &mut Vec<u8>, ticket: &ProxyTicket<'_>) {
    put::bytes8(out, ticket.address.as_bytes(), ADDRESS_MAX);
    out.extend_from_slice(&ticket.key.0);
}

/// A message from a player to the login server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToLogin<'a> {
    /// `TLOGIN_MSG_LOGIN`
    Login {
        /// Account name.
        account_name: &'a str,
        /// Password (sent inside the encrypted channel).
        password: &'a [u8],
    },
    /// `TLOGIN_MSG_SELECT_SHARD`
    SelectShard {
        /// The shard's name.
        shard_name: &'a str,
    },
}

impl ToLogin<'_> {
    /// Decodes the message at the front of `buf`.
    pub fn decode(buf: &[u8]) -> Decoded<ToLogin<'_>> {
        decoded(Self::read(&mut Reader::new(buf)))
    }

    fn read<'a>(r: &mut Reader<'a>) -> Result<(ToLogin<'a>, usize), ReadError> {
        let msg = match r.u8()? {
            TLOGIN_MSG_LOGIN => ToLogin::Login {
                account_name: r.str8(ACCOUNT_NAME_MAX, "account name")?,
                password: r.bytes8(PASSWORD_MAX, "password")?,
            },
            TLOGIN_MSG_SELECT_SHARD => ToLogin::SelectShard {
                shard_name: r.str8(SHARD_NAME_MAX, "shard name")?,
            },
            other => return Err(ProtoError::UnknownType(other).into()),
        };
        Ok((msg, r.pos()))
    }

    /// Appends the encoded message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            ToLogin::Login {
                account_name,
                password,
            } => {
                put::u8(out, TLOGIN_MSG_LOGIN);
                put::bytes8(out, account_name.as_bytes(), ACCOUNT_NAME_MAX);
                put::bytes8(out, password, PASSWORD_MAX);
            }
            ToLogin::SelectShard { shard_name } => {
                put::u8(out, TLOGIN_MSG_SELECT_SHARD);
                put::bytes8(out, shard_name.as_bytes(), SHARD_NAME_MAX);
            }
        }
    }
}

/// A message from the login server to a player.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromLogin<'a> {
    /// `FLOGIN_MSG_LOGIN_RESULT`
    LoginResult {
        /// `RESULT_*`
        result: u8,
        /// The account's id (0 on failure).
        account_id: u64,
    },
    /// `FLOGIN_MSG_SHARD_RESULT`
    ShardResult {
        /// `RESULT_*`
        result: u8,
        /// On success: the proxy and the token to show it.
        ticket: Option<(ProxyTicket<'a>, &'a [u8; TOKEN_BYTES])>,
    },
}

impl FromLogin<'_> {
    /// Most bytes a message takes.
    pub const MAX: usize = 1 + 1 + 1 + ADDRESS_MAX + PUBLIC_KEY_BYTES + TOKEN_BYTES;

    /// Decodes the message at the front of `buf`.
    pub fn decode(buf: &[u8]) -> Decoded<FromLogin<'_>> {
        decoded(Self::read(&mut Reader::new(buf)))
    }

    fn read<'a>(r: &mut Reader<'a>) -> Result<(FromLogin<'a>, usize), ReadError> {
        let msg = match r.u8()? {
            FLOGIN_MSG_LOGIN_RESULT => FromLogin::LoginResult {
                result: r.u8()?,
                account_id: r.u64()?,
            },
            FLOGIN_MSG_SHARD_RESULT => {
                let result = r.u8()?;
                let ticket = if result == RESULT_OK {
                    Some((read_ticket(r)?, r.array()?))
                } else {
                    None
                };
                FromLogin::ShardResult { result, ticket }
            }
            other => return Err(ProtoError::UnknownType(other).into()),
        };
        Ok((msg, r.pos()))
    }

    /// Appends the encoded message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            FromLogin::LoginResult { result, account_id } => {
                put::u8(out, FLOGIN_MSG_LOGIN_RESULT);
                put::u8(out, *result);
                put::u64(out, *account_id);
            }
            FromLogin::ShardResult { result, ticket } => {
                put::u8(out, FLOGIN_MSG_SHARD_RESULT);
                match ticket {
                    Some((ticket, token)) => {
                        put::u8(out, RESULT_OK);
                        put_ticket(out, ticket);
                        out.extend_from_slice(*token);
                    }
                    None => put::u8(
                        out,
                        if *result == RESULT_OK {
                            RESULT_REFUSED
                        } else {
                            *result
                        },
                    ),
                }
            }
        }
    }
}

/// A message from the login server to a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToShard<'a> {
    /// `TSHARD_MSG_LOGIN`
    Login {
        /// The shard's login password.
        password: &'a [u8],
    },
    /// `TSHARD_MSG_PLAYER`
    Player {
        /// Matches the answer to the question.
        request_id: u32,
        /// The account.
        account_id: u64,
        /// The login session.
        login_session_id: u32,
        /// The player's address as the login server saw it.
        ip: IpAddr,
        /// The account's name.
        account_name: &'a str,
        /// The token the player will show the proxy.
        token: &'a [u8; TOKEN_BYTES],
    },
    /// `TSHARD_MSG_CANCEL`
    Cancel {
        /// The account.
        account_id: u64,
        /// The login session.
        login_session_id: u32,
    },
}

impl ToShard<'_> {
    /// Most bytes a message takes.
    pub const MAX: usize = 1 + 4 + 8 + 4 + 17 + 1 + ACCOUNT_NAME_MAX + TOKEN_BYTES;

    /// Decodes the message at the front of `buf`.
    pub fn decode(buf: &[u8]) -> Decoded<ToShard<'_>> {
        decoded(Self::read(&mut Reader::new(buf)))
    }

    fn read<'a>(r: &mut Reader<'a>) -> Result<(ToShard<'a>, usize), ReadError> {
        let msg = match r.u8()? {
            TSHARD_MSG_LOGIN => ToShard::Login {
                password: r.bytes8(PASSWORD_MAX, "password")?,
            },
            TSHARD_MSG_PLAYER => ToShard::Player {
                request_id: r.u32()?,
                account_id: r.u64()?,
                login_session_id: r.u32()?,
                ip: r.ip()?,
                account_name: r.str8(ACCOUNT_NAME_MAX, "account name")?,
                token: r.array()?,
            },
            TSHARD_MSG_CANCEL => ToShard::Cancel {
                account_id: r.u64()?,
                login_session_id: r.u32()?,
            },
            other => return Err(ProtoError::UnknownType(other).into()),
        };
        Ok((msg, r.pos()))
    }

    /// Appends the encoded message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            ToShard::Login { password } => {
                put::u8(out, TSHARD_MSG_LOGIN);
                put::bytes8(out, password, PASSWORD_MAX);
            }
            ToShard::Player {
                request_id,
                account_id,
                login_session_id,
                ip,
                account_name,
                token,
            } => {
                put::u8(out, TSHARD_MSG_PLAYER);
                put::u32(out, request_id);
                put::u64(out, account_id);
                put::u32(out, login_session_id);
                put::ip(out, ip);
                put::bytes8(out, account_name.as_bytes(), ACCOUNT_NAME_MAX);
                out.extend_from_slice(token);
            }
            ToShard::Cancel {
                account_id,
                login_session_id,
            } => {
                put::u8(out, TSHARD_MSG_CANCEL);
                put::u64(out, account_id);
                put::u32(out, login_session_id);
            }
        }
    }
}

/// A message from a shard to the login server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromShard<'a> {
    /// `FSHARD_MSG_LOGIN_RESULT`
    LoginResult {
        /// `RESULT_OK` or `RESULT_BAD_CREDENTIALS`.
        result: u8,
        /// The shard's name.
        shard_name: &'a str,
    },
    /// `FSHARD_MSG_PLAYER_RESULT`
    PlayerResult {
        /// The request answered.
        request_id: u32,
        /// `RESULT_*`
        result: u8,
        /// On success, the proxy chosen for the player.
        ticket: Option<ProxyTicket<'a>>,
    },
}

impl FromShard<'_> {
    /// Most bytes a message takes.
    pub const MAX: usize = 1 + 4 + 1 + 1 + ADDRESS_MAX + PUBLIC_KEY_BYTES;

    /// Decodes the message at the front of `buf`.
    pub fn decode(buf: &[u8]) -> Decoded<FromShard<'_>> {
        decoded(Self::read(&mut Reader::new(buf)))
    }

    fn read<'a>(r: &mut Reader<'a>) -> Result<(FromShard<'a>, usize), ReadError> {
        let msg = match r.u8()? {
            FSHARD_MSG_LOGIN_RESULT => FromShard::LoginResult {
                result: r.u8()?,
                shard_name: r.str8(SHARD_NAME_MAX, "shard name")?,
            },
            FSHARD_MSG_PLAYER_RESULT => {
                let request_id = r.u32()?;
                let result = r.u8()?;
                let ticket = if result == RESULT_OK {
                    Some(read_ticket(r)?)
                } else {
                    None
                };
                FromShard::PlayerResult {
                    request_id,
                    result,
                    ticket,
                }
            }
            other => return Err(ProtoError::UnknownType(other).into()),
        };
        Ok((msg, r.pos()))
    }

    /// Appends the encoded message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            FromShard::LoginResult { result, shard_name } => {
                put::u8(out, FSHARD_MSG_LOGIN_RESULT);
                put::u8(out, *result);
                put::bytes8(out, shard_name.as_bytes(), SHARD_NAME_MAX);
            }
            FromShard::PlayerResult {
                request_id,
                result,
                ticket,
            } => {
                put::u8(out, FSHARD_MSG_PLAYER_RESULT);
                put::u32(out, *request_id);
                match ticket {
                    Some(ticket) => {
                        put::u8(out, RESULT_OK);
                        put_ticket(out, ticket);
                    }
                    None => put::u8(
                        out,
                        if *result == RESULT_OK {
                            RESULT_REFUSED
                        } else {
                            *result
                        },
                    ),
                }
            }
        }
    }
}

impl<'a> crate::proto::Message<'a> for ToLogin<'a> {
    const WHAT: &'static str = "login message";
    fn decode(buf: &'a [u8]) -> crate::proto::Decoded<Self> {
        ToLogin::decode(buf)
    }
}

impl<'a> crate::proto::Message<'a> for FromLogin<'a> {
    const WHAT: &'static str = "login server message";
    fn decode(buf: &'a [u8]) -> crate::proto::Decoded<Self> {
        FromLogin::decode(buf)
    }
}

impl<'a> crate::proto::Message<'a> for ToShard<'a> {
    const WHAT: &'static str = "login message";
    fn decode(buf: &'a [u8]) -> crate::proto::Decoded<Self> {
        ToShard::decode(buf)
    }
}

impl<'a> crate::proto::Message<'a> for FromShard<'a> {
    const WHAT: &'static str = "shard message";
    fn decode(buf: &'a [u8]) -> crate::proto::Decoded<Self> {
        FromShard::decode(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes each message, decodes it back, and checks every prefix is
    /// "need more bytes".
    macro_rules! round_trip {
        ($ty:ident, [$($msg:expr),+ $(,)?]) => {
            for msg in [$($msg),+] {
                let mut buf = Vec::new();
                msg.encode(&mut buf);
                assert_eq!($ty::decode(&buf), Ok(Some((msg.clone(), buf.len()))), "{msg:?}");
                for cut in 0..buf.len() {
                    assert_eq!($ty::decode(&buf[..cut]), Ok(None), "{msg:?} cut at {cut}");
                }
            }
        };
    }

    fn ticket() -> ProxyTicket<'static> {
        ProxyTicket {
            address: "127.0.0.1:7702",
            key: PublicKey([5; 32]),
        }
    }

    #[test]
    fn every_player_login_message_round_trips() {
        let token = [9u8; TOKEN_BYTES];
        round_trip!(
            ToLogin,
            [
                ToLogin::Login {
                    account_name: "bot1",
                    password: b"pw",
                },
                ToLogin::SelectShard { shard_name: "s1" },
            ]
        );
        round_trip!(
            FromLogin,
            [
                FromLogin::LoginResult {
                    result: RESULT_OK,
                    account_id: 77,
                },
                FromLogin::ShardResult {
                    result: RESULT_OK,
                    ticket: Some((ticket(), &token)),
                },
                FromLogin::ShardResult {
                    result: RESULT_NO_PROXY,
                    ticket: None,
                },
            ]
        );
        assert_eq!(
            ToLogin::decode(&[FLOGIN_MSG_LOGIN_RESULT]),
            Err(ProtoError::UnknownType(2))
        );
    }

    #[test]
    fn every_login_shard_message_round_trips() {
        let token = [9u8; TOKEN_BYTES];
        round_trip!(
            ToShard,
            [
                ToShard::Login { password: b"x" },
                ToShard::Player {
                    request_id: 1,
                    account_id: 2,
                    login_session_id: 3,
                    ip: "127.0.0.1".parse().unwrap(),
                    account_name: "bot1",
                    token: &token,
                },
                ToShard::Cancel {
                    account_id: 2,
                    login_session_id: 3,
                },
            ]
        );
        round_trip!(
            FromShard,
            [
                FromShard::LoginResult {
                    result: RESULT_OK,
                    shard_name: "s1",
                },
                FromShard::PlayerResult {
                    request_id: 1,
                    result: RESULT_OK,
                    ticket: Some(ticket()),
                },
                FromShard::PlayerResult {
                    request_id: 1,
                    result: RESULT_NO_PROXY,
                    ticket: None,
                },
            ]
        );
    }
}
