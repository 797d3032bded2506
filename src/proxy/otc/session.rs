//! One OTC session's sequencing in each direction, free of I/O (seed 002;
//! no thesis section: a port decision, `docs/otc.md`): what makes several
//! paths one ordered stream.
//!
//! - [`Inbound`], client to game server: the client sends every packet on
//!   each path it has attached, numbered from 1. The first copy of the next
//!   packet id is delivered; every later copy is a duplicate; a packet that
//!   arrives ahead of the next id (a path that attached late, with resends)
//!   is held until the gap closes. How far ahead and how many bytes may be
//!   held are bounded: past either the session ends.
//! - [`Unacked`], game server to client: each Tibia packet becomes a data
//!   frame with the next id, kept until the client acknowledges it (its data
//!   frames carry the last id it received in order), so a path that
//!   attaches gets every frame not yet acknowledged. Its bytes are bounded.

use std::collections::BTreeMap;

use crate::proto::otc::{HEADER_BYTES, LEN_BYTES, put_header};

/// What became of a client's data frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next in order: deliver it, then whatever [`Inbound::take_ready`]
    /// gives.
    Deliver,
    /// Already delivered or already held: dropped.
    Duplicate,
    /// Ahead of the next id: held.
    Held,
    /// Further ahead than the reorder window.
    TooFar,
    /// Holding it would pass the reorder bytes.
    TooManyBytes,
}

/// Client-to-game sequencing: the next id expected and the packets held out
/// of order.
#[derive(Debug)]
pub struct Inbound {
    next: u32,
    held: BTreeMap<u32, Vec<u8>>,
    held_bytes: usize,
}

impl Default for Inbound {
    fn default() -> Inbound {
        Inbound {
            next: 1,
            held: BTreeMap::new(),
            held_bytes: 0,
        }
    }
}

impl Inbound {
    /// A data frame `id` with `packet`: deliver it now, drop it, or hold it
    /// (copied: only packets out of order are).
    pub fn arrive(&mut self, id: u32, packet: &[u8], window: u32, bytes_max: usize) -> Arrival {
        if id < self.next {
            return Arrival::Duplicate;
        }
        if id == self.next {
            self.next += 1;
            return Arrival::Deliver;
        }
        if id - self.next > window {
            return Arrival::TooFar;
        }
        if self.held.contains_key(&id) {
            return Arrival::Duplicate;
        }
        if self.held_bytes + packet.len() > bytes_max {
            return Arrival::TooManyBytes;
        }
        self.held_bytes += packet.len();
        self.held.insert(id, packet.to_vec());
        Arrival::Held
    }

    /// The held packet that is now next in order, if any.
    pub fn take_ready(&mut self) -> Option<Vec<u8>> {
        let entry = self.held.first_entry()?;
        if *entry.key() != self.next {
            return None;
        }
        let packet = entry.remove();
        self.next += 1;
        self.held_bytes -= packet.len();
        Some(packet)
    }

    /// The last id delivered in order: what the backend acknowledges.
    pub fn last_in_order(&self) -> u32 {
        self.next - 1
    }

    /// Bytes held out of order.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }
}

/// The client did not receive what it acknowledged: an id never sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckTooHigh;

/// Game-to-client frames not yet acknowledged, encoded once, in order, in
/// one buffer: sending copies them to each path; resending on attach copies
/// the whole pending part.
#[derive(Debug)]
pub struct Unacked {
    buf: Vec<u8>,
    /// Where the first frame not acknowledged starts.
    start: usize,
    /// The id the next frame gets.
    next_id: u32,
}

impl Default for Unacked {
    fn default() -> Unacked {
        Unacked {
            buf: Vec::new(),
            start: 0,
            next_id: 1,
        }
    }
}

/// A frame's packet id, from its encoded bytes.
fn frame_id(frame: &[u8]) -> u32 {
    let at = LEN_BYTES + 4;
    u32::from_le_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
}

fn frame_len(frame: &[u8]) -> usize {
    LEN_BYTES + usize::from(u16::from_le_bytes([frame[0], frame[1]]))
}

impl Unacked {
    /// Encodes `packet` (a whole Tibia packet, its length included, at most
    /// `otc::PACKET_MAX` bytes) as the session's next data frame, carrying
    /// `ack`, and keeps it; returns the encoded frame.
    pub fn push(&mut self, session: u32, ack: u32, packet: &[u8]) -> &[u8] {
        let at = self.buf.len();
        put_header(&mut self.buf, packet.len(), session, self.next_id, ack);
        self.buf.extend_from_slice(packet);
        self.next_id += 1;
        &self.buf[at..]
    }

    /// The client received every frame up to `ack`: they are let go.
    pub fn ack(&mut self, ack: u32) -> Result<(), AckTooHigh> {
        if ack >= self.next_id {
            return Err(AckTooHigh);
        }
        while self.start < self.buf.len() && frame_id(&self.buf[self.start..]) <= ack {
            self.start += frame_len(&self.buf[self.start..]);
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }

    /// Every frame not acknowledged, in order: what a path that attaches is
    /// sent.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Bytes of frames not acknowledged.
    pub fn bytes(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Gives back what a burst made the buffer grow to, once it is empty.
    pub fn shrink_idle(&mut self, keep: usize) {
        if self.buf.is_empty() && self.buf.capacity() > keep {
            self.buf.shrink_to(keep);
        }
    }

    /// Bytes the buffer holds allocated.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Bytes of a data frame around its packet.
pub const DATA_FRAME_OVERHEAD: usize = LEN_BYTES + HEADER_BYTES;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::otc::OtcFrame;

    #[test]
    fn packets_are_delivered_once_in_order_whatever_order_they_come_in() {
        let mut inb = Inbound::default();
        let (w, max) = (8, 1000);
        assert_eq!(inb.arrive(2, b"bb", w, max), Arrival::Held);
        assert_eq!(inb.arrive(3, b"cc", w, max), Arrival::Held);
        assert_eq!(inb.arrive(3, b"cc", w, max), Arrival::Duplicate);
        assert_eq!(inb.take_ready(), None, "1 is missing");
        assert_eq!(inb.arrive(1, b"aa", w, max), Arrival::Deliver);
        assert_eq!(inb.take_ready().as_deref(), Some(&b"bb"[..]));
        assert_eq!(inb.take_ready().as_deref(), Some(&b"cc"[..]));
        assert_eq!(inb.take_ready(), None);
        assert_eq!(inb.arrive(2, b"bb", w, max), Arrival::Duplicate);
        assert_eq!(inb.last_in_order(), 3);
        assert_eq!(inb.held_bytes(), 0);
    }

    #[test]
    fn the_reorder_window_and_its_bytes_are_bounded() {
        let mut inb = Inbound::default();
        assert_eq!(inb.arrive(10, b"x", 8, 1000), Arrival::TooFar);
        assert_eq!(inb.arrive(9, b"x", 8, 1000), Arrival::Held);
        assert_eq!(inb.arrive(u32::MAX - 1, b"x", 8, 1000), Arrival::TooFar);
        assert_eq!(inb.arrive(5, &[0; 1000], 8, 1000), Arrival::TooManyBytes);
        assert_eq!(inb.arrive(6, &[0; 999], 8, 1000), Arrival::Held);
        assert_eq!(inb.held_bytes(), 1000);
    }

    #[test]
    fn frames_are_kept_until_acknowledged_and_an_ack_of_an_unsent_id_is_refused() {
        let mut un = Unacked::default();
        for (i, p) in [&b"\x01\x00a"[..], b"\x01\x00b", b"\x01\x00c"]
            .iter()
            .enumerate()
        {
            let frame = un.push(7, 0, p).to_vec();
            let (decoded, n) = OtcFrame::decode(&frame).unwrap().unwrap();
            assert_eq!(n, frame.len());
            assert_eq!(
                decoded,
                OtcFrame::Data {
                    session: 7,
                    packet_id: i as u32 + 1,
                    ack: 0,
                    packet: p
                }
            );
        }
        assert_eq!(un.bytes(), 3 * 17);
        un.ack(2).unwrap();
        assert_eq!(un.bytes(), 17);
        assert_eq!(frame_id(un.pending()), 3);
        assert_eq!(un.ack(4), Err(AckTooHigh));
        un.ack(1).unwrap(); // an old ack changes nothing
        assert_eq!(un.bytes(), 17);
        un.ack(3).unwrap();
        assert_eq!(un.pending(), b"");
    }
}
