//! The client–proxy protocol and the game messages (thesis §3.8.3, §3.8.4).
//!
//! After the cryptchan handshake ([`crate::proto::frame`]), a player's first
//! frame holds exactly one [`AuthProof`]: account name, shard name and the
//! 64-byte token from the login server (thesis §3.8.3). Every later frame
//! holds game messages for the shard.
//!
//! The proxy does not read game messages, but filters them (thesis §3.8.4):
//! [`CLIENT_MSGS`] describes every client-to-shard type as a list of fields,
//! fixed-size or length-prefixed with a maximum, and [`filter_client_frame`]
//! walks a decrypted frame with it. An unknown type, a length field above its
//! maximum or a message cut short rejects the frame, and the proxy
//! disconnects that player. The shard runs the same function on what the
//! proxy forwards ("the shard performs the exact same size checks as the
//! proxy just in case").
//!
//! The game itself is a port decision: MUTA's client protocol is not public,
//! so the reference game (`muta-shard`) has echo (for latency), chat
//! (broadcast to every player, the fan-out that makes an MMO's server-to-client
//! traffic much larger than its client-to-server traffic), movement, emotes
//! and ping. Server-to-client messages ([`ServerMsg`]) are encrypted by the
//! shard with the stream state it received in `FPROXY_MSG_PLAYER_CRYPTCHAN`;
//! the proxy passes them through unread.

use std::net::SocketAddr;

use crate::cryptchan::TOKEN_BYTES;
use crate::proto::{
    ACCOUNT_NAME_MAX, Decoded, ProtoError, ReadError, Reader, SHARD_NAME_MAX, complete, decoded,
    put,
};

/// Client → proxy, first frame only: the auth proof.
pub const CLMSG_AUTH_PROOF: u8 = 1;
/// Client → shard: keep-alive with the client's clock.
pub const CLMSG_PING: u8 = 10;
/// Client → shard: sent back to the sender as `SVMSG_ECHO` (latency probe).
pub const CLMSG_ECHO: u8 = 11;
/// Client → shard: a chat line, broadcast to every player.
pub const CLMSG_CHAT: u8 = 12;
/// Client → shard: move to a tile (MUTA is click-to-move on a 3D tile grid).
pub const CLMSG_MOVE: u8 = 13;
/// Client → shard: an emote aimed at a target; two length fields.
pub const CLMSG_EMOTE: u8 = 14;

/// Shard → client: you are in; your player id and name.
pub const SVMSG_WELCOME: u8 = 1;
/// Shard → client: answer to `CLMSG_PING`.
pub const SVMSG_PONG: u8 = 10;
/// Shard → client: a `CLMSG_ECHO` sent back.
pub const SVMSG_ECHO: u8 = 11;
/// Shard → client: someone's chat line.
pub const SVMSG_CHAT: u8 = 12;
/// Shard → client: someone moved.
pub const SVMSG_MOVED: u8 = 13;
/// Shard → client: someone emoted.
pub const SVMSG_EMOTE: u8 = 14;

/// Most bytes of echo data.
pub const ECHO_DATA_MAX: usize = 1024;
/// Most bytes in a chat line.
pub const CHAT_TEXT_MAX: usize = 200;
/// Most bytes in an emote's target.
pub const EMOTE_TARGET_MAX: usize = 32;
/// Most bytes in an emote's text.
pub const EMOTE_TEXT_MAX: usize = 256;

/// One field of a client message, as the filter sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// Exactly this many bytes.
    Fixed(usize),
    /// A one-byte length, then at most `max` bytes.
    Len8 {
        /// Largest allowed length.
        max: usize,
    },
    /// A two-byte length, then at most `max` bytes.
    Len16 {
        /// Largest allowed length.
        max: usize,
    },
}

/// How one client-to-shard message type is laid out after its type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgSpec {
    /// The type byte.
    pub ty: u8,
    /// The name, for logs.
    pub name: &'static str,
    /// The fields, in order.
    pub fields: &'static [Field],
}

impl MsgSpec {
    /// True if every field is fixed-size.
    pub fn is_fixed(&self) -> bool {
        self.fields.iter().all(|f| matches!(f, Field::Fixed(_)))
    }

    /// The largest a message of this type can be, type byte included.
    pub fn max_len(&self) -> usize {
        1 + self
            .fields
            .iter()
            .map(|f| match *f {
                Field::Fixed(n) => n,
                Field::Len8 { max } => 1 + max,
                Field::Len16 { max } => 2 + max,
            })
            .sum::<usize>()
    }
}

/// Every client-to-shard message type: the table the proxy and the shard
/// filter by (thesis §3.8.4).
pub const CLIENT_MSGS: &[MsgSpec] = &[
    MsgSpec {
        ty: CLMSG_PING,
        name: "CLMSG_PING",
        fields: &[Field::Fixed(8)],
    },
    MsgSpec {
        ty: CLMSG_ECHO,
        name: "CLMSG_ECHO",
        fields: &[Field::Fixed(12), Field::Len16 { max: ECHO_DATA_MAX }],
    },
    MsgSpec {
        ty: CLMSG_CHAT,
        name: "CLMSG_CHAT",
        fields: &[Field::Len8 { max: CHAT_TEXT_MAX }],
    },
    MsgSpec {
        ty: CLMSG_MOVE,
        name: "CLMSG_MOVE",
        fields: &[Field::Fixed(9)],
    },
    MsgSpec {
        ty: CLMSG_EMOTE,
        name: "CLMSG_EMOTE",
        fields: &[
            Field::Len8 {
                max: EMOTE_TARGET_MAX,
            },
            Field::Len16 {
                max: EMOTE_TEXT_MAX,
            },
        ],
    },
];

/// `CLIENT_MSGS` indexed by type byte (`NO_SPEC` where there is none), so the
/// filter finds a type's layout in one load.
static SPEC_INDEX: [u8; 256] = {
    let mut index = [NO_SPEC; 256];
    let mut i = 0;
    while i < CLIENT_MSGS.len() {
        index[CLIENT_MSGS[i].ty as usize] = i as u8;
        i += 1;
    }
    index
};
const NO_SPEC: u8 = u8::MAX;

/// The layout of a client-to-shard type, if it is one.
pub fn client_msg_spec(ty: u8) -> Option<&'static MsgSpec> {
    match SPEC_INDEX[ty as usize] {
        NO_SPEC => None,
        i => Some(&CLIENT_MSGS[i as usize]),
    }
}

/// Checks the client message at the front of `buf` against the table and
/// returns its layout and length.
pub fn check_client_msg(buf: &[u8]) -> Decoded<&'static MsgSpec> {
    decoded(check_msg(&mut Reader::new(buf)))
}

fn check_msg(r: &mut Reader<'_>) -> Result<(&'static MsgSpec, usize), ReadError> {
    let ty = r.u8()?;
    let spec = client_msg_spec(ty).ok_or(ProtoError::UnknownType(ty))?;
    for field in spec.fields {
        match *field {
            Field::Fixed(n) => {
                r.bytes(n)?;
            }
            Field::Len8 { max } => {
                r.bytes8(max, spec.name)?;
            }
            Field::Len16 { max } => {
                r.bytes16(max, spec.name)?;
            }
        }
    }
    Ok((spec, r.pos()))
}

/// Walks a decrypted frame of client messages (thesis §3.8.4 packet
/// filtering). Returns how many messages it holds, or why it must be refused.
/// An empty frame is refused too.
pub fn filter_client_frame(plaintext: &[u8]) -> Result<usize, ProtoError> {
    if plaintext.is_empty() {
        return Err(ProtoError::BadLength("empty frame"));
    }
    let mut pos = 0;
    let mut count = 0;
    while pos < plaintext.len() {
        let (_, len) = complete(
            check_msg(&mut Reader::new(&plaintext[pos..])),
            "client message",
        )?;
        pos += len;
        count += 1;
    }
    Ok(count)
}

/// The proof a player sends first (thesis §3.8.3, `shard_check_client_auth_proof`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthProof<'a> {
    /// The account.
    pub account_name: &'a str,
    /// The shard the player chose.
    pub shard_name: &'a str,
    /// The token from the login server.
    pub token: &'a [u8; TOKEN_BYTES],
}

impl AuthProof<'_> {
    /// Decodes a frame that must hold exactly one auth proof.
    pub fn decode_frame(plaintext: &[u8]) -> Result<AuthProof<'_>, ProtoError> {
        let (proof, len) = complete(Self::read(&mut Reader::new(plaintext)), "auth proof")?;
        if len != plaintext.len() {
            return Err(ProtoError::TrailingBytes);
        }
        Ok(proof)
    }

    fn read<'a>(r: &mut Reader<'a>) -> Result<(AuthProof<'a>, usize), ReadError> {
        let ty = r.u8()?;
        if ty != CLMSG_AUTH_PROOF {
            return Err(ProtoError::UnknownType(ty).into());
        }
        let proof = AuthProof {
            account_name: r.str8(ACCOUNT_NAME_MAX, "account name")?,
            shard_name: r.str8(SHARD_NAME_MAX, "shard name")?,
            token: r.array()?,
        };
        Ok((proof, r.pos()))
    }

    /// Appends the encoded message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put::u8(out, CLMSG_AUTH_PROOF);
        put::bytes8(out, self.account_name.as_bytes(), ACCOUNT_NAME_MAX);
        put::bytes8(out, self.shard_name.as_bytes(), SHARD_NAME_MAX);
        out.extend_from_slice(self.token);
    }
}

/// A client-to-shard game message, decoded (for the shard's game logic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    /// `CLMSG_PING`
    Ping {
        /// The client's clock.
        time: u64,
    },
    /// `CLMSG_ECHO`
    Echo {
        /// Sequence number.
        seq: u32,
        /// The client's clock at sending, in microseconds.
        time_us: u64,
        /// Padding, to size the message.
        data: &'a [u8],
    },
    /// `CLMSG_CHAT`
    Chat {
        /// The line (bytes; the shard does not interpret them).
        text: &'a [u8],
    },
    /// `CLMSG_MOVE`
    Move {
        /// Tile x.
        x: i32,
        /// Tile y.
        y: i32,
        /// Tile z.
        z: u8,
    },
    /// `CLMSG_EMOTE`
    Emote {
        /// Who it is aimed at.
        target: &'a [u8],
        /// What it says.
        text: &'a [u8],
    },
}

impl ClientMsg<'_> {
    /// Decodes the client message at the front of `buf`.
    pub fn decode(buf: &[u8]) -> Decoded<ClientMsg<'_>> {
        decoded(Self::read(&mut Reader::new(buf)))
    }

    fn read<'a>(r: &mut Reader<'a>) -> Result<(ClientMsg<'a>, usize), ReadError> {
        {
            let msg = match r.u8()? {
                CLMSG_PING => ClientMsg::Ping { time: r.u64()? },
                CLMSG_ECHO => ClientMsg::Echo {
                    seq: r.u32()?,
                    time_us: r.u64()?,
                    data: r.bytes16(ECHO_DATA_MAX, "CLMSG_ECHO")?,
                },
                CLMSG_CHAT => ClientMsg::Chat {
                    text: r.bytes8(CHAT_TEXT_MAX, "CLMSG_CHAT")?,
                },
                CLMSG_MOVE => ClientMsg::Move {
                    x: r.i32()?,
                    y: r.i32()?,
                    z: r.u8()?,
                },
                CLMSG_EMOTE => ClientMsg::Emote {
                    target: r.bytes8(EMOTE_TARGET_MAX, "CLMSG_EMOTE")?,
                    text: r.bytes16(EMOTE_TEXT_MAX, "CLMSG_EMOTE")?,
                },
                other => return Err(ProtoError::UnknownType(other).into()),
            };
            Ok((msg, r.pos()))
        }
    }

    /// Appends the encoded message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            ClientMsg::Ping { time } => {
                put::u8(out, CLMSG_PING);
                put::u64(out, time);
            }
            ClientMsg::Echo { seq, time_us, data } => {
                put::u8(out, CLMSG_ECHO);
                put::u32(out, seq);
                put::u64(out, time_us);
                put::bytes16(out, data, ECHO_DATA_MAX);
            }
            ClientMsg::Chat { text } => {
                put::u8(out, CLMSG_CHAT);
                put::bytes8(out, text, CHAT_TEXT_MAX);
            }
            ClientMsg::Move { x, y, z } => {
                put::u8(out, CLMSG_MOVE);
                put::i32(out, x);
                put::i32(out, y);
                put::u8(out, z);
            }
            ClientMsg::Emote { target, text } => {
                put::u8(out, CLMSG_EMOTE);
                put::bytes8(out, target, EMOTE_TARGET_MAX);
                put::bytes16(out, text, EMOTE_TEXT_MAX);
            }
        }
    }
}

/// A shard-to-client game message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMsg<'a> {
    /// `SVMSG_WELCOME`
    Welcome {
        /// The player's id in the world.
        player_id: u32,
        /// The account name.
        name: &'a str,
        /// The address the shard sees the player connect from (the proxy
        /// passes on the effective address; a direct player's is its TCP
        /// peer's): lets a player, and the tests, check what the shard saw.
        addr: SocketAddr,
    },
    /// `SVMSG_PONG`
    Pong {
        /// The client's clock from the ping.
        time: u64,
    },
    /// `SVMSG_ECHO`
    Echo {
        /// Sequence number from the client.
        seq: u32,
        /// The client's clock from the echo.
        time_us: u64,
        /// The client's padding.
        data: &'a [u8],
    },
    /// `SVMSG_CHAT`
    Chat {
        /// Who said it.
        from: u32,
        /// The line.
        text: &'a [u8],
    },
    /// `SVMSG_MOVED`
    Moved {
        /// Who moved.
        player_id: u32,
        /// Tile x.
        x: i32,
        /// Tile y.
        y: i32,
        /// Tile z.
        z: u8,
    },
    /// `SVMSG_EMOTE`
    Emote {
        /// Who emoted.
        from: u32,
        /// Aimed at.
        target: &'a [u8],
        /// What it says.
        text: &'a [u8],
    },
}

impl ServerMsg<'_> {
    /// Most bytes one server message takes.
    pub const MAX: usize = 1 + 4 + 8 + 2 + ECHO_DATA_MAX;

    /// Decodes the server message at the front of `buf`.
    pub fn decode(buf: &[u8]) -> Decoded<ServerMsg<'_>> {
        decoded(Self::read(&mut Reader::new(buf)))
    }

    fn read<'a>(r: &mut Reader<'a>) -> Result<(ServerMsg<'a>, usize), ReadError> {
        {
            let msg = match r.u8()? {
                SVMSG_WELCOME => ServerMsg::Welcome {
                    player_id: r.u32()?,
                    name: r.str8(ACCOUNT_NAME_MAX, "SVMSG_WELCOME")?,
                    addr: r.sockaddr()?,
                },
                SVMSG_PONG => ServerMsg::Pong { time: r.u64()? },
                SVMSG_ECHO => ServerMsg::Echo {
                    seq: r.u32()?,
                    time_us: r.u64()?,
                    data: r.bytes16(ECHO_DATA_MAX, "SVMSG_ECHO")?,
                },
                SVMSG_CHAT => ServerMsg::Chat {
                    from: r.u32()?,
                    text: r.bytes8(CHAT_TEXT_MAX, "SVMSG_CHAT")?,
                },
                SVMSG_MOVED => ServerMsg::Moved {
                    player_id: r.u32()?,
                    x: r.i32()?,
                    y: r.i32()?,
                    z: r.u8()?,
                },
                SVMSG_EMOTE => ServerMsg::Emote {
                    from: r.u32()?,
                    target: r.bytes8(EMOTE_TARGET_MAX, "SVMSG_EMOTE")?,
                    text: r.bytes16(EMOTE_TEXT_MAX, "SVMSG_EMOTE")?,
                },
                other => return Err(ProtoError::UnknownType(other).into()),
            };
            Ok((msg, r.pos()))
        }
    }

    /// Appends the encoded message.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            ServerMsg::Welcome {
                player_id,
                name,
                addr,
            } => {
                put::u8(out, SVMSG_WELCOME);
                put::u32(out, player_id);
                put::bytes8(out, name.as_bytes(), ACCOUNT_NAME_MAX);
                put::sockaddr(out, addr);
            }
            ServerMsg::Pong { time } => {
                put::u8(out, SVMSG_PONG);
                put::u64(out, time);
            }
            ServerMsg::Echo { seq, time_us, data } => {
                put::u8(out, SVMSG_ECHO);
                put::u32(out, seq);
                put::u64(out, time_us);
                put::bytes16(out, data, ECHO_DATA_MAX);
            }
            ServerMsg::Chat { from, text } => {
                put::u8(out, SVMSG_CHAT);
                put::u32(out, from);
                put::bytes8(out, text, CHAT_TEXT_MAX);
            }
            ServerMsg::Moved { player_id, x, y, z } => {
                put::u8(out, SVMSG_MOVED);
                put::u32(out, player_id);
                put::i32(out, x);
                put::i32(out, y);
                put::u8(out, z);
            }
            ServerMsg::Emote { from, target, text } => {
                put::u8(out, SVMSG_EMOTE);
                put::u32(out, from);
                put::bytes8(out, target, EMOTE_TARGET_MAX);
                put::bytes16(out, text, EMOTE_TEXT_MAX);
            }
        }
    }
}

impl<'a> crate::proto::Message<'a> for ClientMsg<'a> {
    const WHAT: &'static str = "client message";
    fn decode(buf: &'a [u8]) -> crate::proto::Decoded<Self> {
        ClientMsg::decode(buf)
    }
}

impl<'a> crate::proto::Message<'a> for ServerMsg<'a> {
    const WHAT: &'static str = "server message";
    fn decode(buf: &'a [u8]) -> crate::proto::Decoded<Self> {
        ServerMsg::decode(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<ClientMsg<'static>> {
        vec![
            ClientMsg::Ping { time: 42 },
            ClientMsg::Echo {
                seq: 1,
                time_us: 2,
                data: &[7; 100],
            },
            ClientMsg::Chat {
                text: b"hello world",
            },
            ClientMsg::Move { x: -5, y: 9, z: 1 },
            ClientMsg::Emote {
                target: b"bob",
                text: b"waves",
            },
        ]
    }

    #[test]
    fn the_table_and_the_typed_decoder_agree() {
        assert_eq!(
            CLIENT_MSGS.len(),
            samples().len(),
            "every table entry has a sample"
        );
        for msg in samples() {
            let mut buf = Vec::new();
            msg.encode(&mut buf);
            let (spec, len) = check_client_msg(&buf).unwrap().unwrap();
            assert_eq!(len, buf.len(), "{}", spec.name);
            assert!(len <= spec.max_len());
            assert_eq!(ClientMsg::decode(&buf), Ok(Some((msg.clone(), buf.len()))));
            for cut in 0..buf.len() {
                assert_eq!(check_client_msg(&buf[..cut]), Ok(None));
                assert_eq!(ClientMsg::decode(&buf[..cut]), Ok(None));
            }
        }
        assert!(client_msg_spec(CLMSG_PING).unwrap().is_fixed());
        assert!(!client_msg_spec(CLMSG_EMOTE).unwrap().is_fixed());
    }

    #[test]
    fn the_filter_refuses_each_kind_of_bad_frame() {
        let mut frame = Vec::new();
        for msg in samples() {
            msg.encode(&mut frame);
        }
        assert_eq!(filter_client_frame(&frame), Ok(5));
        // Unknown type (the auth proof is not a game message).
        assert_eq!(
            filter_client_frame(&[CLMSG_AUTH_PROOF]),
            Err(ProtoError::UnknownType(1))
        );
        assert_eq!(filter_client_frame(&[99]), Err(ProtoError::UnknownType(99)));
        // Wrong size: a fixed message cut short, or with a byte too many.
        assert_eq!(
            filter_client_frame(&[CLMSG_PING, 1, 2, 3]),
            Err(ProtoError::Truncated("client message"))
        );
        assert_eq!(
            filter_client_frame(&[CLMSG_PING, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtoError::UnknownType(0))
        );
        // A length field over its maximum.
        let mut chat = vec![CLMSG_CHAT, 201];
        chat.extend_from_slice(&[b'a'; 201]);
        assert_eq!(
            filter_client_frame(&chat),
            Err(ProtoError::BadLength("CLMSG_CHAT"))
        );
        // The second length field of an emote.
        let mut emote = vec![CLMSG_EMOTE, 1, b'x'];
        emote.extend_from_slice(&300u16.to_le_bytes());
        assert_eq!(
            filter_client_frame(&emote),
            Err(ProtoError::BadLength("CLMSG_EMOTE"))
        );
        // A length field longer than what follows.
        assert_eq!(
            filter_client_frame(&[CLMSG_CHAT, 10, b'a']),
            Err(ProtoError::Truncated("client message"))
        );
        assert_eq!(
            filter_client_frame(&[]),
            Err(ProtoError::BadLength("empty frame"))
        );
    }

    #[test]
    fn auth_proof_is_alone_in_its_frame() {
        let token = [3u8; TOKEN_BYTES];
        let proof = AuthProof {
            account_name: "alice",
            shard_name: "shard-1",
            token: &token,
        };
        let mut buf = Vec::new();
        proof.encode(&mut buf);
        assert_eq!(AuthProof::decode_frame(&buf), Ok(proof));
        let mut longer = buf.clone();
        longer.push(CLMSG_PING);
        assert_eq!(
            AuthProof::decode_frame(&longer),
            Err(ProtoError::TrailingBytes)
        );
        assert_eq!(
            AuthProof::decode_frame(&buf[..buf.len() - 1]),
            Err(ProtoError::Truncated("auth proof"))
        );
        assert_eq!(
            AuthProof::decode_frame(&[CLMSG_ECHO]),
            Err(ProtoError::UnknownType(CLMSG_ECHO))
        );
        assert_eq!(
            AuthProof::decode_frame(&[]),
            Err(ProtoError::Truncated("auth proof"))
        );
    }

    #[test]
    fn server_messages_round_trip() {
        let msgs = [
            ServerMsg::Welcome {
                player_id: 5,
                name: "alice",
                addr: "192.0.2.5:40000".parse().unwrap(),
            },
            ServerMsg::Pong { time: 9 },
            ServerMsg::Echo {
                seq: 3,
                time_us: 4,
                data: &[1; ECHO_DATA_MAX],
            },
            ServerMsg::Chat {
                from: 2,
                text: b"hi",
            },
            ServerMsg::Moved {
                player_id: 1,
                x: 2,
                y: 3,
                z: 4,
            },
            ServerMsg::Emote {
                from: 1,
                target: b"x",
                text: b"y",
            },
        ];
        for msg in msgs {
            let mut buf = Vec::new();
            msg.encode(&mut buf);
            assert!(buf.len() <= ServerMsg::MAX);
            assert_eq!(ServerMsg::decode(&buf), Ok(Some((msg.clone(), buf.len()))));
            for cut in 0..buf.len() {
                assert_eq!(ServerMsg::decode(&buf[..cut]), Ok(None));
            }
        }
    }
}
