//! The proxy–shard protocol (thesis §3.8.2): the thesis's eleven messages,
//! and a heartbeat of two (port decision: `FPROXY_MSG_PING`,
//! `TPROXY_MSG_PONG`, so a link that is open but dead is found, and its round
//! trip measured). `PROXY_MSG_*` are
//! sent by both sides (the handshake, [`crate::proto::frame`]), `TPROXY_MSG_*`
//! ("to proxy") by the shard, `FPROXY_MSG_*` ("from proxy") by the proxy. The
//! numbers are the thesis's list order (port decision); the fields are the
//! thesis's where it names them, port decisions otherwise (`docs/protocol.md`).
//!
//! After the handshake every message travels inside encrypted frames.
//! [`TProxyMsg::decode`] accepts only shard-to-proxy types and
//! [`FProxyMsg::decode`] only proxy-to-shard types, so each side refuses
//! messages it should never receive.
//!
//! The thesis spells the player-packet message `FRPROXY_MSG_PLAYER_PACKET`
//! once; we take it for a typo of `FPROXY_MSG_PLAYER_PACKET`.

use std::net::{IpAddr, SocketAddr};

use crate::cryptchan::{STATE_BYTES, TOKEN_BYTES};
use crate::proto::frame::FRAME_PLAINTEXT_MAX;
use crate::proto::{
    ACCOUNT_NAME_MAX, ADDRESS_MAX, Decoded, PASSWORD_MAX, ProtoError, ReadError, Reader,
    SHARD_NAME_MAX, decoded, put,
};

/// 1. A public key, at the start of the handshake (both ways).
pub const PROXY_MSG_PUB_KEY: u8 = crate::proto::frame::MSG_PUB_KEY;
/// 2. A stream header, during the handshake (both ways).
pub const PROXY_MSG_STREAM_HEADER: u8 = crate::proto::frame::MSG_STREAM_HEADER;
/// 3. Shard → proxy: the answer to `FPROXY_MSG_LOGIN`, with the shard's name.
pub const TPROXY_MSG_LOGIN_RESULT: u8 = 3;
/// 4. Shard → proxy: a player will connect; reserve a slot for them.
pub const TPROXY_MSG_OPENED_SOCKET: u8 = 4;
/// 5. Shard → proxy: disconnect this player.
pub const TPROXY_MSG_CLOSED_SOCKET: u8 = 5;
/// 6. Shard → proxy: bytes for a player (already encrypted for the player).
pub const TPROXY_MSG_PLAYER_PACKET: u8 = 6;
/// 7. Proxy → shard: log in with the shard's password.
pub const FPROXY_MSG_LOGIN: u8 = 7;
/// 8. Proxy → shard: whether a slot was reserved for `TPROXY_MSG_OPENED_SOCKET`.
pub const FPROXY_MSG_OPENED_SOCKET_RESULT: u8 = 8;
/// 9. Proxy → shard: the player authenticated; here is their stream's state.
pub const FPROXY_MSG_PLAYER_CRYPTCHAN: u8 = 9;
/// 10. Proxy → shard: checked messages from a player.
pub const FPROXY_MSG_PLAYER_PACKET: u8 = 10;
/// 11. Proxy → shard: close this player's socket (they left or broke a rule).
pub const FPROXY_MSG_CLOSE_SOCKET: u8 = 11;
/// 12. Proxy → shard: a heartbeat, answered by `TPROXY_MSG_PONG` (port decision).
pub const FPROXY_MSG_PING: u8 = 12;
/// 13. Shard → proxy: the answer to `FPROXY_MSG_PING` (port decision).
pub const TPROXY_MSG_PONG: u8 = 13;

/// `TPROXY_MSG_LOGIN_RESULT`: logged in.
pub const LOGIN_RESULT_OK: u8 = 0;
/// `TPROXY_MSG_LOGIN_RESULT`: wrong password; the shard closes the link.
pub const LOGIN_RESULT_BAD_PASSWORD: u8 = 1;

/// `FPROXY_MSG_OPENED_SOCKET_RESULT`: slot reserved.
pub const OPENED_SOCKET_OK: u8 = 0;
/// `FPROXY_MSG_OPENED_SOCKET_RESULT`: the proxy is full.
pub const OPENED_SOCKET_FULL: u8 = 1;
/// `FPROXY_MSG_OPENED_SOCKET_RESULT`: that socket id is already in use.
pub const OPENED_SOCKET_DUPLICATE: u8 = 2;

/// `FPROXY_MSG_CLOSE_SOCKET`: the player disconnected.
pub const CLOSE_REASON_LEFT: u8 = 0;
/// `FPROXY_MSG_CLOSE_SOCKET`: the player broke a protocol rule and was dropped.
pub const CLOSE_REASON_FILTERED: u8 = 1;
/// `FPROXY_MSG_CLOSE_SOCKET`: a timeout (reservation unclaimed, player idle).
pub const CLOSE_REASON_TIMEOUT: u8 = 2;
/// `FPROXY_MSG_CLOSE_SOCKET`: the proxy could not keep up with the player's
/// output, or is shutting down.
pub const CLOSE_REASON_PROXY: u8 = 3;
/// `FPROXY_MSG_CLOSE_SOCKET`: a newer reservation for the same account
/// replaced this one before the player connected.
pub const CLOSE_REASON_REPLACED: u8 = 4;
/// `FPROXY_MSG_CLOSE_SOCKET`: the player reached a limit of the proxy's (its
/// message or byte budget, or its shard link was backed up) and was dropped.
pub const CLOSE_REASON_LIMIT: u8 = 5;

/// Most data bytes in one player packet: what fits a frame.
pub const PLAYER_PACKET_DATA_MAX: usize = FRAME_PLAINTEXT_MAX - PLAYER_PACKET_HEADER_BYTES;
/// Bytes before a player packet's data: type, socket id, length.
pub const PLAYER_PACKET_HEADER_BYTES: usize = 1 + 4 + 2;

/// A message from the shard to the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TProxyMsg<'a> {
    /// `TPROXY_MSG_LOGIN_RESULT`
    LoginResult {
        /// `LOGIN_RESULT_*`
        result: u8,
        /// The shard's name, which players name in their auth proof.
        shard_name: &'a str,
    },
    /// `TPROXY_MSG_OPENED_SOCKET`
    OpenedSocket {
        /// The proxy socket's id, chosen by the shard.
        socket_id: u32,
        /// The account.
        account_id: u64,
        /// The login session.
        login_session_id: u32,
        /// Where the player will connect from.
        ip: IpAddr,
        /// The account's name.
        account_name: &'a str,
        /// The 64-byte token the player must prove.
        token: &'a [u8; TOKEN_BYTES],
    },
    /// `TPROXY_MSG_CLOSED_SOCKET`
    ClosedSocket {
        /// Which socket.
        socket_id: u32,
    },
    /// `TPROXY_MSG_PLAYER_PACKET`
    PlayerPacket {
        /// Which socket.
        socket_id: u32,
        /// Bytes to write to the player as they are.
        data: &'a [u8],
    },
    /// `TPROXY_MSG_PONG`
    Pong {
        /// The ping's number.
        seq: u32,
    },
}

/// A message from the proxy to the shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FProxyMsg<'a> {
    /// `FPROXY_MSG_LOGIN`
    Login {
        /// The shard's password.
        password: &'a [u8],
        /// The proxy's public `HOST:PORT` for players (port decision, thesis
        /// §3.8.5 "communicate more about their configurations").
        public_address: &'a str,
        /// How many players this proxy can take (port decision, same).
        capacity: u32,
    },
    /// `FPROXY_MSG_OPENED_SOCKET_RESULT`
    OpenedSocketResult {
        /// Which socket.
        socket_id: u32,
        /// `OPENED_SOCKET_*`
        result: u8,
    },
    /// `FPROXY_MSG_PLAYER_CRYPTCHAN`
    PlayerCryptchan {
        /// Which socket.
        socket_id: u32,
        /// The player's effective address: its TCP peer's, or the one a
        /// trusted forwarder's PROXY protocol header gave.
        addr: SocketAddr,
        /// The proxy-to-player push stream's state.
        state: &'a [u8; STATE_BYTES],
    },
    /// `FPROXY_MSG_PLAYER_PACKET`
    PlayerPacket {
        /// Which socket.
        socket_id: u32,
        /// One or more player messages that passed the filter.
        data: &'a [u8],
    },
    /// `FPROXY_MSG_CLOSE_SOCKET`
    CloseSocket {
        /// Which socket.
        socket_id: u32,
        /// `CLOSE_REASON_*`
        reason: u8,
    },
    /// `FPROXY_MSG_PING`
    Ping {
        /// A number the pong repeats.
        seq: u32,
    },
}

impl TProxyMsg<'_> {
    /// Most bytes any shard-to-proxy message other than a player packet takes.
    pub const CONTROL_MAX: usize = 1 + 4 + 8 + 4 + 17 + 1 + ACCOUNT_NAME_MAX + TOKEN_BYTES;

    /// The message's name as in the thesis.
    pub fn name(&self) -> &'static str {
        match self {
            TProxyMsg::LoginResult { .. } => "TPROXY_MSG_LOGIN_RESULT",
            TProxyMsg::OpenedSocket { .. } => "TPROXY_MSG_OPENED_SOCKET",
            TProxyMsg::ClosedSocket { .. } => "TPROXY_MSG_CLOSED_SOCKET",
            TProxyMsg::PlayerPacket { .. } => "TPROXY_MSG_PLAYER_PACKET",
            TProxyMsg::Pong { .. } => "TPROXY_MSG_PONG",
        }
    }

    /// Decodes the message at the front of `buf`.
    pub fn decode(buf: &[u8]) -> Decoded<TProxyMsg<'_>> {
        decoded(Self::read(&mut Reader::new(buf)))
    }

    fn read<'a>(r: &mut Reader<'a>) -> Result<(TProxyMsg<'a>, usize), ReadError> {
        let msg = match r.u8()? {
            TPROXY_MSG_LOGIN_RESULT => TProxyMsg::LoginResult {
                result: r.u8()?,
                shard_name: r.str8(SHARD_NAME_MAX, "shard name")?,
            },
            TPROXY_MSG_OPENED_SOCKET => TProxyMsg::OpenedSocket {
                socket_id: r.u32()?,
                account_id: r.u64()?,
                login_session_id: r.u32()?,
                ip: r.ip()?,
                account_name: r.str8(ACCOUNT_NAME_MAX, "account name")?,
                token: r.array()?,
            },
            TPROXY_MSG_CLOSED_SOCKET => TProxyMsg::ClosedSocket {
                socket_id: r.u32()?,
            },
            TPROXY_MSG_PLAYER_PACKET => TProxyMsg::PlayerPacket {
                socket_id: r.u32()?,
                data: r.bytes16(PLAYER_PACKET_DATA_MAX, "player packet")?,
            },
            TPROXY_MSG_PONG => TProxyMsg::Pong { seq: r.u32()? },
            other => return Err(ProtoError::UnknownType(other).into()),
        };
        Ok((msg, r.pos()))
    }

    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            TProxyMsg::LoginResult { result, shard_name } => {
                put::u8(out, TPROXY_MSG_LOGIN_RESULT);
                put::u8(out, result);
                put::bytes8(out, shard_name.as_bytes(), SHARD_NAME_MAX);
            }
            TProxyMsg::OpenedSocket {
                socket_id,
                account_id,
                login_session_id,
                ip,
                account_name,
                token,
            } => {
                put::u8(out, TPROXY_MSG_OPENED_SOCKET);
                put::u32(out, socket_id);
                put::u64(out, account_id);
                put::u32(out, login_session_id);
                put::ip(out, ip);
                put::bytes8(out, account_name.as_bytes(), ACCOUNT_NAME_MAX);
                out.extend_from_slice(token);
            }
            TProxyMsg::ClosedSocket { socket_id } => {
                put::u8(out, TPROXY_MSG_CLOSED_SOCKET);
                put::u32(out, socket_id);
            }
            TProxyMsg::PlayerPacket { socket_id, data } => {
                put_player_packet_header(out, TPROXY_MSG_PLAYER_PACKET, socket_id, data.len());
                out.extend_from_slice(data);
            }
            TProxyMsg::Pong { seq } => {
                put::u8(out, TPROXY_MSG_PONG);
                put::u32(out, seq);
            }
        }
    }
}

impl FProxyMsg<'_> {
    /// Most bytes any proxy-to-shard message other than a player packet takes.
    pub const CONTROL_MAX: usize = 1 + 1 + PASSWORD_MAX + 1 + ADDRESS_MAX + 4;

    /// The message's name as in the thesis.
    pub fn name(&self) -> &'static str {
        match self {
            FProxyMsg::Login { .. } => "FPROXY_MSG_LOGIN",
            FProxyMsg::OpenedSocketResult { .. } => "FPROXY_MSG_OPENED_SOCKET_RESULT",
            FProxyMsg::PlayerCryptchan { .. } => "FPROXY_MSG_PLAYER_CRYPTCHAN",
            FProxyMsg::PlayerPacket { .. } => "FPROXY_MSG_PLAYER_PACKET",
            FProxyMsg::CloseSocket { .. } => "FPROXY_MSG_CLOSE_SOCKET",
            FProxyMsg::Ping { .. } => "FPROXY_MSG_PING",
        }
    }

    /// Decodes the message at the front of `buf`.
    pub fn decode(buf: &[u8]) -> Decoded<FProxyMsg<'_>> {
        decoded(Self::read(&mut Reader::new(buf)))
    }

    fn read<'a>(r: &mut Reader<'a>) -> Result<(FProxyMsg<'a>, usize), ReadError> {
        let msg = match r.u8()? {
            FPROXY_MSG_LOGIN => FProxyMsg::Login {
                password: r.bytes8(PASSWORD_MAX, "password")?,
                public_address: r.str8(ADDRESS_MAX, "public address")?,
                capacity: r.u32()?,
            },
            FPROXY_MSG_OPENED_SOCKET_RESULT => FProxyMsg::OpenedSocketResult {
                socket_id: r.u32()?,
                result: r.u8()?,
            },
            FPROXY_MSG_PLAYER_CRYPTCHAN => FProxyMsg::PlayerCryptchan {
                socket_id: r.u32()?,
                addr: r.sockaddr()?,
                state: r.array()?,
            },
            FPROXY_MSG_PLAYER_PACKET => FProxyMsg::PlayerPacket {
                socket_id: r.u32()?,
                data: r.bytes16(PLAYER_PACKET_DATA_MAX, "player packet")?,
            },
            FPROXY_MSG_CLOSE_SOCKET => FProxyMsg::CloseSocket {
                socket_id: r.u32()?,
                reason: r.u8()?,
            },
            FPROXY_MSG_PING => FProxyMsg::Ping { seq: r.u32()? },
            other => return Err(ProtoError::UnknownType(other).into()),
        };
        Ok((msg, r.pos()))
    }

    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            FProxyMsg::Login {
                password,
                public_address,
                capacity,
            } => {
                put::u8(out, FPROXY_MSG_LOGIN);
                put::bytes8(out, password, PASSWORD_MAX);
                put::bytes8(out, public_address.as_bytes(), ADDRESS_MAX);
                put::u32(out, capacity);
            }
            FProxyMsg::OpenedSocketResult { socket_id, result } => {
                put::u8(out, FPROXY_MSG_OPENED_SOCKET_RESULT);
                put::u32(out, socket_id);
                put::u8(out, result);
            }
            FProxyMsg::PlayerCryptchan {
                socket_id,
                addr,
                state,
            } => {
                put::u8(out, FPROXY_MSG_PLAYER_CRYPTCHAN);
                put::u32(out, socket_id);
                put::sockaddr(out, addr);
                out.extend_from_slice(state);
            }
            FProxyMsg::PlayerPacket { socket_id, data } => {
                put_player_packet_header(out, FPROXY_MSG_PLAYER_PACKET, socket_id, data.len());
                out.extend_from_slice(data);
            }
            FProxyMsg::CloseSocket { socket_id, reason } => {
                put::u8(out, FPROXY_MSG_CLOSE_SOCKET);
                put::u32(out, socket_id);
                put::u8(out, reason);
            }
            FProxyMsg::Ping { seq } => {
                put::u8(out, FPROXY_MSG_PING);
                put::u32(out, seq);
            }
        }
    }
}

/// Writes the 7-byte header of a player packet (either direction) whose
/// `len` data bytes the caller appends next, without building the message
/// elsewhere first (the forwarding path).
pub fn put_player_packet_header(out: &mut Vec<u8>, ty: u8, socket_id: u32, len: usize) {
    debug_assert!(len <= PLAYER_PACKET_DATA_MAX);
    put::u8(out, ty);
    put::u32(out, socket_id);
    put::u16(out, len as u16);
}

impl<'a> crate::proto::Message<'a> for TProxyMsg<'a> {
    const WHAT: &'static str = "shard message";
    fn decode(buf: &'a [u8]) -> crate::proto::Decoded<Self> {
        TProxyMsg::decode(buf)
    }
}

impl<'a> crate::proto::Message<'a> for FProxyMsg<'a> {
    const WHAT: &'static str = "proxy message";
    fn decode(buf: &'a [u8]) -> crate::proto::Decoded<Self> {
        FProxyMsg::decode(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_message_round_trips_and_is_refused_by_a_shard() {
        let token = [0xAB; TOKEN_BYTES];
        let to_proxy = [
            TProxyMsg::LoginResult {
                result: LOGIN_RESULT_OK,
                shard_name: "shard-1",
            },
            TProxyMsg::OpenedSocket {
                socket_id: 7,
                account_id: u64::MAX,
                login_session_id: 9,
                ip: "2001:db8::1".parse().unwrap(),
                account_name: "alice",
                token: &token,
            },
            TProxyMsg::ClosedSocket { socket_id: 3 },
            TProxyMsg::PlayerPacket {
                socket_id: 1,
                data: b"encrypted for the player",
            },
        ];
        for msg in &to_proxy {
            let mut buf = Vec::new();
            msg.encode(&mut buf);
            assert!(
                buf.len() <= TProxyMsg::CONTROL_MAX
                    || matches!(msg, TProxyMsg::PlayerPacket { .. })
            );
            assert_eq!(TProxyMsg::decode(&buf), Ok(Some((msg.clone(), buf.len()))));
            for cut in 0..buf.len() {
                assert_eq!(
                    TProxyMsg::decode(&buf[..cut]),
                    Ok(None),
                    "{} cut at {cut}",
                    msg.name()
                );
            }
            assert!(
                FProxyMsg::decode(&buf).is_err(),
                "a proxy-bound {} is refused by a shard",
                msg.name()
            );
        }
    }

    #[test]
    fn every_proxy_message_round_trips_and_is_refused_by_a_proxy() {
        let state = [0xCD; STATE_BYTES];
        let from_proxy = [
            FProxyMsg::Login {
                password: b"secret",
                public_address: "203.0.113.5:7702",
                capacity: 1024,
            },
            FProxyMsg::OpenedSocketResult {
                socket_id: 7,
                result: OPENED_SOCKET_FULL,
            },
            FProxyMsg::PlayerCryptchan {
                socket_id: 7,
                addr: "[2001:db8::7]:40000".parse().unwrap(),
                state: &state,
            },
            FProxyMsg::PlayerPacket {
                socket_id: 7,
                data: &[10, 1, 2, 3, 4, 5, 6, 7, 8],
            },
            FProxyMsg::CloseSocket {
                socket_id: 7,
                reason: CLOSE_REASON_FILTERED,
            },
        ];
        for msg in &from_proxy {
            let mut buf = Vec::new();
            msg.encode(&mut buf);
            assert!(
                buf.len() <= FProxyMsg::CONTROL_MAX
                    || matches!(msg, FProxyMsg::PlayerPacket { .. })
            );
            assert_eq!(FProxyMsg::decode(&buf), Ok(Some((msg.clone(), buf.len()))));
            for cut in 0..buf.len() {
                assert_eq!(
                    FProxyMsg::decode(&buf[..cut]),
                    Ok(None),
                    "{} cut at {cut}",
                    msg.name()
                );
            }
            assert!(
                TProxyMsg::decode(&buf).is_err(),
                "a shard-bound {} is refused by a proxy",
                msg.name()
            );
        }
    }

    #[test]
    fn bad_fields_are_malformed_not_short() {
        // An account name longer than allowed.
        let mut buf = vec![TPROXY_MSG_OPENED_SOCKET];
        buf.extend_from_slice(&[0; 16]);
        buf.extend_from_slice(&[4, 127, 0, 0, 1]);
        buf.push(200);
        assert_eq!(
            TProxyMsg::decode(&buf),
            Err(ProtoError::BadLength("account name"))
        );
        // An address family that does not exist.
        let mut buf = vec![TPROXY_MSG_OPENED_SOCKET];
        buf.extend_from_slice(&[0; 16]);
        buf.push(5);
        assert_eq!(
            TProxyMsg::decode(&buf),
            Err(ProtoError::BadValue("address family"))
        );
        // A shard name that is not UTF-8.
        assert_eq!(
            TProxyMsg::decode(&[TPROXY_MSG_LOGIN_RESULT, 0, 1, 0xFF]),
            Err(ProtoError::BadValue("shard name"))
        );
        assert_eq!(TProxyMsg::decode(&[0]), Err(ProtoError::UnknownType(0)));
        assert_eq!(
            TProxyMsg::decode(&[PROXY_MSG_PUB_KEY]),
            Err(ProtoError::UnknownType(1))
        );
    }
}
