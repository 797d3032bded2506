//! The OTClient multi-path proxy protocol (seed 002; OTCv8's and OTClient
//! Redemption's `src/framework/proxy/`, read for compatibility, MIT): what
//! the client speaks to the backend through its forwarders. Port decision:
//! the thesis has no such protocol; `docs/protocol.md` §9 has every byte.
//!
//! Free of I/O, as every decoder here. The client's framing, unchanged:
//!
//! ```text
//! [u16 len][u32 session][u32 packet_id][u32 ack_or_arg][rest]     little-endian, len = 12 + rest
//! ```
//!
//! | session | packet_id | rest | frame |
//! |---|---|---|---|
//! | 0 | 0 | 4 (client ping: uid at `ack_or_arg`, last ping) or none (pong) | [`OtcFrame::Ping`] |
//! | S | 0 | none; `ack_or_arg` the destination port | [`OtcFrame::Open`] |
//! | S | 0xFFFFFFFF | none; `ack_or_arg` 0 | [`OtcFrame::End`] (a client's detach, the backend's session end) |
//! | S | N ≥ 1 | `[u16 tlen][tlen bytes]`: one whole Tibia packet | [`OtcFrame::Data`] |
//!
//! Stricter than the client and the backend it replaces, and still what the
//! real client sends: a frame under 12 bytes, a session-0 frame of another
//! size or packet id, an open or end with bytes after the header, a port
//! over 65,535, a data frame whose inner length is 0 or does not fill the
//! frame exactly (the backend forwards it unchecked: an out-of-bounds read)
//! are all refused.

use super::{Decoded, ProtoError, put};

/// Bytes of the frame length.
pub const LEN_BYTES: usize = 2;
/// Bytes of the header every frame body starts with.
pub const HEADER_BYTES: usize = 12;
/// Most bytes of a frame body (its u16 length).
pub const BODY_MAX: usize = u16::MAX as usize;
/// Most bytes of one Tibia packet in a data frame, its own length included.
pub const PACKET_MAX: usize = BODY_MAX - HEADER_BYTES;
/// The session id of connection-level frames (pings).
pub const SESSION_CONTROL: u32 = 0;
/// The packet id of an open (attach).
pub const PACKET_ID_OPEN: u32 = 0;
/// The packet id of a detach, or of a session's end.
pub const PACKET_ID_END: u32 = u32::MAX;
/// Body bytes of the client's ping: the header, then its last ping.
pub const PING_BODY: usize = HEADER_BYTES + 4;

/// One frame of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtcFrame<'a> {
    /// Session 0: the client's ping (with its process's id and its last
    /// measured ping, both unused by a backend), or the backend's pong
    /// (zeros).
    Ping {
        /// The client process's id (`ack_or_arg`); 0 in a pong.
        uid: u32,
        /// The client's last ping, in ms; `None` in a pong.
        last_ping_ms: Option<u32>,
    },
    /// Open a session, or attach this connection to it, towards `port`.
    Open {
        /// The session.
        session: u32,
        /// The game server's port the client asks for.
        port: u16,
    },
    /// From the client: detach this connection from the session. From the
    /// backend: the session has ended.
    End {
        /// The session.
        session: u32,
    },
    /// One Tibia packet of a session.
    Data {
        /// The session.
        session: u32,
        /// Its number in its direction, from 1.
        packet_id: u32,
        /// The last packet id delivered in order from the other direction.
        ack: u32,
        /// The Tibia packet, its own u16 length included.
        packet: &'a [u8],
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl OtcFrame<'_> {
    /// Decodes the frame at the front of `buf`: `Ok(None)` while it is
    /// incomplete (a frame's length is read first, and refused at once if
    /// under the header).
    pub fn decode(buf: &[u8]) -> Decoded<OtcFrame<'_>> {
        if buf.len() < LEN_BYTES {
            return Ok(None);
        }
        let len = usize::from(u16::from_le_bytes([buf[0], buf[1]]));
        if len < HEADER_BYTES {
            return Err(ProtoError::BadLength("OTC frame under its 12-byte header"));
        }
        let total = LEN_BYTES + len;
        if buf.len() < total {
            return Ok(None);
        }
        let body = &buf[LEN_BYTES..total];
        Self::body(body).map(|frame| Some((frame, total)))
    }

    fn body(body: &[u8]) -> Result<OtcFrame<'_>, ProtoError> {
        let (session, packet_id, arg) = (u32_at(body, 0), u32_at(body, 4), u32_at(body, 8));
        let rest = &body[HEADER_BYTES..];
        match (session, packet_id) {
            (SESSION_CONTROL, PACKET_ID_OPEN) => match rest.len() {
                0 => Ok(OtcFrame::Ping {
                    uid: arg,
                    last_ping_ms: None,
                }),
                4 => Ok(OtcFrame::Ping {
                    uid: arg,
                    last_ping_ms: Some(u32_at(rest, 0)),
                }),
                _ => Err(ProtoError::BadLength("OTC ping")),
            },
            (SESSION_CONTROL, _) => Err(ProtoError::BadValue("OTC session 0 with a packet id")),
            (session, PACKET_ID_OPEN) => {
                if !rest.is_empty() {
                    return Err(ProtoError::BadLength("OTC open"));
                }
                let port = u16::try_from(arg).map_err(|_| ProtoError::BadValue("OTC port"))?;
                Ok(OtcFrame::Open { session, port })
            }
            (session, PACKET_ID_END) => {
                if !rest.is_empty() {
                    return Err(ProtoError::BadLength("OTC end"));
                }
                if arg != 0 {
                    return Err(ProtoError::BadValue("OTC end with an argument"));
                }
                Ok(OtcFrame::End { session })
            }
            (session, packet_id) => {
                if rest.len() < 2 {
                    return Err(ProtoError::Truncated("OTC data"));
                }
                let inner = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
                if inner == 0 || 2 + inner != rest.len() {
                    return Err(ProtoError::BadLength(
                        "OTC data: the packet's length does not fill the frame",
                    ));
                }
                Ok(OtcFrame::Data {
                    session,
                    packet_id,
                    ack: arg,
                    packet: rest,
                })
            }
        }
    }

    /// Appends the encoded frame to `out`. A data frame's packet must hold
    /// its own length and be at most [`PACKET_MAX`] bytes (the caller's
    /// invariant: it came from a decoder that checked it).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (session, packet_id, arg, rest): (u32, u32, u32, &[u8]) = match *self {
            OtcFrame::Ping { uid, last_ping_ms } => {
                let at = out.len();
                put_header(out, 0, SESSION_CONTROL, PACKET_ID_OPEN, uid);
                if let Some(ms) = last_ping_ms {
                    put::u32(out, ms);
                    set_len(out, at, PING_BODY);
                }
                return;
            }
            OtcFrame::Open { session, port } => (session, PACKET_ID_OPEN, u32::from(port), &[]),
            OtcFrame::End { session } => (session, PACKET_ID_END, 0, &[]),
            OtcFrame::Data {
                session,
                packet_id,
                ack,
                packet,
            } => (session, packet_id, ack, packet),
        };
        debug_assert!(rest.len() <= PACKET_MAX, "an OTC packet over its bound");
        put_header(out, rest.len(), session, packet_id, arg);
        out.extend_from_slice(rest);
    }
}

/// Moves bytes from the front of `data` into `in_buf`, which holds the start
/// of a unit split across reads, until it holds the whole unit (a frame, or
/// a Tibia packet: both are a little-endian u16 length and that many
/// bytes); true once it does. Never takes more than the unit: the rest of
/// `data` is the next units.
pub fn gather(in_buf: &mut Vec<u8>, data: &mut &[u8]) -> bool {
    loop {
        let need = if in_buf.len() < LEN_BYTES {
            LEN_BYTES
        } else {
            LEN_BYTES + usize::from(u16::from_le_bytes([in_buf[0], in_buf[1]]))
        };
        let take = need.saturating_sub(in_buf.len()).min(data.len());
        in_buf.extend_from_slice(&data[..take]);
        *data = &data[take..];
        if in_buf.len() < need {
            return false;
        }
        // With the length complete, the second turn knows the whole need.
        if in_buf.len() >= LEN_BYTES
            && need == LEN_BYTES + usize::from(u16::from_le_bytes([in_buf[0], in_buf[1]]))
        {
            return true;
        }
    }
}

/// Appends a frame's length and header for a body of 12 + `rest` bytes.
pub fn put_header(out: &mut Vec<u8>, rest: usize, session: u32, packet_id: u32, arg: u32) {
    put::u16(out, (HEADER_BYTES + rest) as u16);
    put::u32(out, session);
    put::u32(out, packet_id);
    put::u32(out, arg);
}

fn set_len(out: &mut [u8], at: usize, body: usize) {
    out[at..at + 2].copy_from_slice(&(body as u16).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_split_anywhere_is_gathered_whole_and_no_byte_more() {
        let stream = [3u8, 0, b'a', b'b', b'c', 1, 0, b'd'];
        for cut in 1..5 {
            let mut in_buf = stream[..cut].to_vec();
            let mut rest = &stream[cut..];
            assert!(gather(&mut in_buf, &mut rest), "cut at {cut}");
            assert_eq!(in_buf, &stream[..5]);
            assert_eq!(rest, &stream[5..]);
        }
        let mut in_buf = vec![3u8];
        let mut rest = &[0u8, b'a'][..];
        assert!(!gather(&mut in_buf, &mut rest));
        assert_eq!((in_buf.as_slice(), rest), (&[3u8, 0, b'a'][..], &[][..]));
        // A zero length is a whole (empty) unit; the decoder judges it.
        let mut in_buf = vec![0u8];
        let mut rest = &[0u8, 9][..];
        assert!(gather(&mut in_buf, &mut rest));
        assert_eq!((in_buf.len(), rest), (2, &[9u8][..]));
    }

    fn bytes(frame: OtcFrame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        frame.encode(&mut out);
        out
    }

    #[test]
    fn the_real_clients_frames_decode_byte_for_byte() {
        // Ping as `Proxy::ping` writes it: 18 bytes, size 16, uid, ping.
        let mut ping = vec![16, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        ping.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
        ping.extend_from_slice(&37u32.to_le_bytes());
        let expected = OtcFrame::Ping {
            uid: 0xA1B2_C3D4,
            last_ping_ms: Some(37),
        };
        assert_eq!(OtcFrame::decode(&ping), Ok(Some((expected, 18))));
        assert_eq!(bytes(expected), ping);
        // Open as `Proxy::addSession`: size 12, session, 0, port.
        let mut open = vec![12, 0];
        open.extend_from_slice(&77u32.to_le_bytes());
        open.extend_from_slice(&0u32.to_le_bytes());
        open.extend_from_slice(&7172u32.to_le_bytes());
        let expected = OtcFrame::Open {
            session: 77,
            port: 7172,
        };
        assert_eq!(OtcFrame::decode(&open), Ok(Some((expected, 14))));
        assert_eq!(bytes(expected), open);
        // Detach as `Proxy::removeSession`.
        let mut end = vec![12, 0];
        end.extend_from_slice(&77u32.to_le_bytes());
        end.extend_from_slice(&u32::MAX.to_le_bytes());
        end.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            OtcFrame::decode(&end),
            Ok(Some((OtcFrame::End { session: 77 }, 14)))
        );
        // A data frame: the Tibia packet with its own length.
        let packet = [3, 0, 0xAA, 0xBB, 0xCC];
        let data = bytes(OtcFrame::Data {
            session: 77,
            packet_id: 1,
            ack: 0,
            packet: &packet,
        });
        assert_eq!(data.len(), 2 + 12 + 5);
        assert_eq!(
            OtcFrame::decode(&data).unwrap().unwrap().0,
            OtcFrame::Data {
                session: 77,
                packet_id: 1,
                ack: 0,
                packet: &packet
            }
        );
        // The backend's pong: a bare zero header.
        let pong = bytes(OtcFrame::Ping {
            uid: 0,
            last_ping_ms: None,
        });
        assert_eq!(pong, [12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn every_prefix_waits_and_every_hardening_rule_refuses() {
        let frame = bytes(OtcFrame::Data {
            session: 5,
            packet_id: 9,
            ack: 3,
            packet: &[2, 0, 1, 2],
        });
        for cut in 0..frame.len() {
            assert_eq!(OtcFrame::decode(&frame[..cut]), Ok(None), "{cut}");
        }
        let header = |len: u16, session: u32, id: u32, arg: u32, rest: &[u8]| {
            let mut out = len.to_le_bytes().to_vec();
            for v in [session, id, arg] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(rest);
            out
        };
        let bad = [
            ("under the header", header(11, 0, 0, 0, &[])),
            ("session 0, packet id", header(12, 0, 5, 0, &[])),
            ("ping of 14 bytes", header(14, 0, 0, 0, &[1, 2])),
            ("open with a body", header(13, 7, 0, 7171, &[1])),
            ("port over 65,535", header(12, 7, 0, 70_000, &[])),
            ("end with a body", header(13, 7, u32::MAX, 0, &[1])),
            ("end with an argument", header(12, 7, u32::MAX, 5, &[])),
            ("data without a length", header(13, 7, 1, 0, &[1])),
            ("inner length 0", header(14, 7, 1, 0, &[0, 0])),
            ("inner length short", header(17, 7, 1, 0, &[2, 0, 1, 2, 3])),
            ("inner length long", header(16, 7, 1, 0, &[9, 0, 1, 2])),
        ];
        for (what, frame) in bad {
            assert!(OtcFrame::decode(&frame).is_err(), "{what}: {frame:?}");
        }
    }
}
