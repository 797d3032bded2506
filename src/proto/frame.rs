//! The cryptchan wire format every MUTA link uses (thesis §2.4.3, §3.8.1; the
//! byte layout is a port decision): a plaintext handshake, then encrypted
//! frames. [`Channel`] is one end of it, as a state machine over byte
//! buffers.
//!
//! Handshake (the side that opened the TCP connection is the *initiator*, the
//! `crypto_kx` client):
//!
//! ```text
//! initiator → acceptor   PUB_KEY        [type 1][32-byte public key]
//! acceptor → initiator   PUB_KEY        [type 1][32-byte public key]
//!                        STREAM_HEADER  [type 2][24-byte header of the acceptor's stream]
//! initiator → acceptor   STREAM_HEADER  [type 2][24-byte header of the initiator's stream]
//! ```
//!
//! On the proxy–shard link these are the thesis's `PROXY_MSG_PUB_KEY` and
//! `PROXY_MSG_STREAM_HEADER`. The initiator may expect a particular acceptor
//! key (the client is told the proxy's key by the login server; a proxy may
//! pin a shard's key) and refuses any other: `crypto_kx` alone does not
//! authenticate the peer.
//!
//! Then each direction is a secretstream, cut into frames:
//!
//! ```text
//! [u16 clen][clen bytes: secretstream ciphertext]      clen = 17 + plaintext length
//! plaintext = one or more messages, [u8 type][fields], back to back
//! ```
//!
//! A frame carries a batch: the sender opens a frame in its output buffer,
//! appends messages, and seals it (encrypts in place) once per flush, so the
//! cost of the cipher is paid per batch, not per message. Frames are at most
//! 65,535 ciphertext bytes; a receiver may set a lower limit
//! ([`Channel::set_frame_max`]). A frame that fails authentication, is too
//! short or too long ends the connection.

use std::fmt;
use std::sync::Arc;

use crate::cryptchan::{
    self, ABYTES, CryptError, HEADER_BYTES, KeyPair, PUBLIC_KEY_BYTES, PublicKey, PullStream,
    PushStream, STATE_BYTES, SessionKeys,
};
use crate::proto::ProtoError;

/// Handshake message: a public key (`PROXY_MSG_PUB_KEY` on the proxy–shard link).
pub const MSG_PUB_KEY: u8 = 1;
/// Handshake message: a stream header (`PROXY_MSG_STREAM_HEADER`).
pub const MSG_STREAM_HEADER: u8 = 2;
/// Bytes of a `PUB_KEY` message.
pub const PUB_KEY_MSG_BYTES: usize = 1 + PUBLIC_KEY_BYTES;
/// Bytes of a `STREAM_HEADER` message.
pub const STREAM_HEADER_MSG_BYTES: usize = 1 + HEADER_BYTES;
/// Bytes of a frame's length prefix.
pub const FRAME_LEN_BYTES: usize = 2;
/// Most ciphertext bytes in one frame.
pub const FRAME_CIPHERTEXT_MAX: usize = u16::MAX as usize;
/// Most plaintext bytes in one frame.
pub const FRAME_PLAINTEXT_MAX: usize = FRAME_CIPHERTEXT_MAX - ABYTES;
/// Bytes a frame adds around its plaintext: length, tag, MAC.
pub const FRAME_OVERHEAD: usize = FRAME_LEN_BYTES + ABYTES;

/// Which end of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Opened the TCP connection; the `crypto_kx` client.
    Initiator,
    /// Accepted it; the `crypto_kx` server.
    Acceptor,
}

/// Why a channel failed; the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// Bytes that are not the protocol.
    Proto(ProtoError),
    /// A key exchange or decryption failure (tampering, wrong key, ...).
    Crypt(CryptError),
    /// The acceptor presented a key other than the expected one.
    UnexpectedKey,
    /// Sending before the handshake finished, or after the push stream was
    /// handed over.
    NotOpen,
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Proto(e) => write!(f, "{e}"),
            ChannelError::Crypt(e) => write!(f, "{e}"),
            ChannelError::UnexpectedKey => {
                f.write_str("the peer presented an unexpected public key")
            }
            ChannelError::NotOpen => f.write_str("channel not open for sending"),
        }
    }
}

impl std::error::Error for ChannelError {}

/// Why a program drops a peer connection carried by a [`Channel`]: the
/// channel failed, a message broke the protocol, or the peer was refused
/// (the proxy's shard links, the shard's proxy and login links, the login
/// server's players). The reason is the log line's text.
#[derive(Debug)]
pub enum PeerError {
    /// The channel failed (framing, cryptography, handshake).
    Channel(ChannelError),
    /// A message decoded but broke the protocol.
    Proto(ProtoError),
    /// The peer was refused, and why.
    Refused(&'static str),
    /// A frame larger than the input buffer may hold.
    TooLarge,
}

impl From<ChannelError> for PeerError {
    fn from(e: ChannelError) -> PeerError {
        PeerError::Channel(e)
    }
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::Channel(e) => write!(f, "{e}"),
            PeerError::Proto(e) => write!(f, "protocol violation: {e}"),
            PeerError::Refused(why) => f.write_str(why),
            PeerError::TooLarge => f.write_str("frame larger than the input buffer"),
        }
    }
}

impl From<ProtoError> for ChannelError {
    fn from(e: ProtoError) -> ChannelError {
        ChannelError::Proto(e)
    }
}

impl From<CryptError> for ChannelError {
    fn from(e: CryptError) -> ChannelError {
        ChannelError::Crypt(e)
    }
}

/// What [`Channel::next`] found at the front of the input.
#[derive(Debug)]
pub enum Step<'a> {
    /// Not enough bytes for the next handshake message or frame.
    NeedMore,
    /// A handshake message was consumed (and any reply written).
    Handshake {
        /// Bytes consumed.
        consumed: usize,
    },
    /// The handshake finished with this message; frames may be sent now.
    Opened {
        /// Bytes consumed.
        consumed: usize,
    },
    /// A frame was decrypted in place; `plaintext` points into the input.
    Frame {
        /// Bytes consumed (length prefix and ciphertext).
        consumed: usize,
        /// The frame's messages.
        plaintext: &'a mut [u8],
    },
}

enum State {
    /// Initiator: sent its key, waits for the acceptor's key and header.
    /// Acceptor: waits for the initiator's key.
    AwaitKey,
    /// Acceptor: sent key and header, waits for the initiator's header.
    AwaitHeader { keys: SessionKeys, push: PushStream },
    /// Handshake done. `push` is `None` once handed over.
    Open {
        push: Option<PushStream>,
        pull: PullStream,
    },
}

/// One end of a MUTA link: handshake, then frames. Sans-IO: the caller moves
/// bytes between sockets and the buffers given to [`Channel::next`] and
/// [`Channel::room`] / [`Channel::seal`].
pub struct Channel {
    side: Side,
    keys: Arc<KeyPair>,
    expected_peer: Option<PublicKey>,
    peer: Option<PublicKey>,
    state: State,
    /// Offset in the output buffer of the frame being filled, if any.
    /// Invariant: between `room` and `seal`, only message bytes are appended
    /// to that buffer, and it is not otherwise changed.
    open_frame: Option<usize>,
    frame_max: usize,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::AwaitKey => "await-key",
            State::AwaitHeader { .. } => "await-header",
            State::Open { .. } => "open",
        };
        f.debug_struct("Channel")
            .field("side", &self.side)
            .field("state", &state)
            .field("peer", &self.peer)
            .finish()
    }
}

impl Channel {
    /// The initiator's end; writes its `PUB_KEY` to `out`. With `expected`,
    /// the acceptor must present exactly that key.
    pub fn initiator(
        keys: Arc<KeyPair>,
        expected: Option<PublicKey>,
        out: &mut Vec<u8>,
    ) -> Channel {
        out.push(MSG_PUB_KEY);
        out.extend_from_slice(&keys.public().0);
        Channel {
            side: Side::Initiator,
            keys,
            expected_peer: expected,
            peer: None,
            state: State::AwaitKey,
            open_frame: None,
            frame_max: FRAME_CIPHERTEXT_MAX,
        }
    }

    /// The acceptor's end; it speaks once the initiator's key arrives.
    pub fn acceptor(keys: Arc<KeyPair>) -> Channel {
        Channel {
            side: Side::Acceptor,
            keys,
            expected_peer: None,
            peer: None,
            state: State::AwaitKey,
            open_frame: None,
            frame_max: FRAME_CIPHERTEXT_MAX,
        }
    }

    /// Refuses incoming frames with more than `max` ciphertext bytes (for
    /// peers whose messages are small: clients). At least `ABYTES + 1`.
    pub fn set_frame_max(&mut self, max: usize) {
        self.frame_max = max.clamp(ABYTES + 1, FRAME_CIPHERTEXT_MAX);
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// True once frames may be exchanged.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// The peer's public key, once received.
    pub fn peer_key(&self) -> Option<PublicKey> {
        self.peer
    }

    /// Total length of the frame or handshake message at the front of
    /// `input`, if its length is known yet; used to refuse oversized frames
    /// before they are buffered.
    pub fn pending_len(&self, input: &[u8]) -> Option<usize> {
        match (&self.state, self.side) {
            (State::AwaitKey, Side::Acceptor) => Some(PUB_KEY_MSG_BYTES),
            (State::AwaitKey, Side::Initiator) => Some(PUB_KEY_MSG_BYTES + STREAM_HEADER_MSG_BYTES),
            (State::AwaitHeader { .. }, _) => Some(STREAM_HEADER_MSG_BYTES),
            (State::Open { .. }, _) => {
                let len = u16::from_le_bytes(input.get(..2)?.try_into().ok()?) as usize;
                Some(FRAME_LEN_BYTES + len)
            }
        }
    }

    /// Handles the handshake message or frame at the front of `input`,
    /// writing any handshake reply to `out`. Frames are decrypted in place.
    pub fn next<'a>(
        &mut self,
        input: &'a mut [u8],
        out: &mut Vec<u8>,
    ) -> Result<Step<'a>, ChannelError> {
        match self.state {
            State::AwaitKey => match self.side {
                Side::Acceptor => self.acceptor_key(input, out),
                Side::Initiator => self.initiator_key_and_header(input, out),
            },
            State::AwaitHeader { .. } => self.acceptor_header(input),
            State::Open { .. } => self.frame(input),
        }
    }

    fn read_key(input: &[u8]) -> Result<PublicKey, ChannelError> {
        if input[0] != MSG_PUB_KEY {
            return Err(ProtoError::UnknownType(input[0]).into());
        }
        Ok(PublicKey(
            input[1..PUB_KEY_MSG_BYTES]
                .try_into()
                .expect("length checked"),
        ))
    }

    fn read_header(input: &[u8]) -> Result<[u8; HEADER_BYTES], ChannelError> {
        if input[0] != MSG_STREAM_HEADER {
            return Err(ProtoError::UnknownType(input[0]).into());
        }
        Ok(input[1..STREAM_HEADER_MSG_BYTES]
            .try_into()
            .expect("length checked"))
    }

    /// Refuses a handshake message by its first byte, before the rest of it
    /// arrives: a peer that does not speak the protocol is closed at once,
    /// not held until the handshake deadline.
    fn check_type(input: &[u8], expected: u8) -> Result<(), ChannelError> {
        match input.first() {
            Some(&t) if t != expected => Err(ProtoError::UnknownType(t).into()),
            _ => Ok(()),
        }
    }

    fn acceptor_key<'a>(
        &mut self,
        input: &'a mut [u8],
        out: &mut Vec<u8>,
    ) -> Result<Step<'a>, ChannelError> {
        Self::check_type(input, MSG_PUB_KEY)?;
        if input.len() < PUB_KEY_MSG_BYTES {
            return Ok(Step::NeedMore);
        }
        let peer = Self::read_key(input)?;
        let keys = cryptchan::kx_server(&self.keys, &peer)?;
        let (push, header) = PushStream::new(&keys);
        out.push(MSG_PUB_KEY);
        out.extend_from_slice(&self.keys.public().0);
        out.push(MSG_STREAM_HEADER);
        out.extend_from_slice(&header);
        self.peer = Some(peer);
        self.state = State::AwaitHeader { keys, push };
        Ok(Step::Handshake {
            consumed: PUB_KEY_MSG_BYTES,
        })
    }

    fn acceptor_header<'a>(&mut self, input: &'a mut [u8]) -> Result<Step<'a>, ChannelError> {
        Self::check_type(input, MSG_STREAM_HEADER)?;
        if input.len() < STREAM_HEADER_MSG_BYTES {
            return Ok(Step::NeedMore);
        }
        let header = Self::read_header(input)?;
        let State::AwaitHeader { keys, push } = std::mem::replace(&mut self.state, State::AwaitKey)
        else {
            unreachable!("called in AwaitHeader");
        };
        let pull = PullStream::new(&keys, &header)?;
        self.state = State::Open {
            push: Some(push),
            pull,
        };
        Ok(Step::Opened {
            consumed: STREAM_HEADER_MSG_BYTES,
        })
    }

    fn initiator_key_and_header<'a>(
        &mut self,
        input: &'a mut [u8],
        out: &mut Vec<u8>,
    ) -> Result<Step<'a>, ChannelError> {
        let needed = PUB_KEY_MSG_BYTES + STREAM_HEADER_MSG_BYTES;
        Self::check_type(input, MSG_PUB_KEY)?;
        if input.len() < needed {
            return Ok(Step::NeedMore);
        }
        let peer = Self::read_key(input)?;
        if self.expected_peer.is_some_and(|expected| expected != peer) {
            return Err(ChannelError::UnexpectedKey);
        }
        let header = Self::read_header(&input[PUB_KEY_MSG_BYTES..])?;
        let keys = cryptchan::kx_client(&self.keys, &peer)?;
        let pull = PullStream::new(&keys, &header)?;
        let (push, my_header) = PushStream::new(&keys);
        out.push(MSG_STREAM_HEADER);
        out.extend_from_slice(&my_header);
        self.peer = Some(peer);
        self.state = State::Open {
            push: Some(push),
            pull,
        };
        Ok(Step::Opened { consumed: needed })
    }

    fn frame<'a>(&mut self, input: &'a mut [u8]) -> Result<Step<'a>, ChannelError> {
        let State::Open { pull, .. } = &mut self.state else {
            unreachable!("called in Open");
        };
        if input.len() < FRAME_LEN_BYTES {
            return Ok(Step::NeedMore);
        }
        let clen = u16::from_le_bytes([input[0], input[1]]) as usize;
        if clen <= ABYTES {
            return Err(ProtoError::BadLength("empty frame").into());
        }
        if clen > self.frame_max {
            return Err(ProtoError::BadLength("frame larger than allowed").into());
        }
        let consumed = FRAME_LEN_BYTES + clen;
        if input.len() < consumed {
            return Ok(Step::NeedMore);
        }
        let ciphertext = &mut input[FRAME_LEN_BYTES..consumed];
        let mlen = pull.pull_in_place(ciphertext)?;
        Ok(Step::Frame {
            consumed,
            plaintext: &mut ciphertext[1..1 + mlen],
        })
    }

    /// Makes room in `out` for a message of `len` bytes: opens a frame, or
    /// seals the open one and opens another when the message would not fit.
    /// The caller then appends exactly the message.
    pub fn room(&mut self, out: &mut Vec<u8>, len: usize) -> Result<(), ChannelError> {
        if len > FRAME_PLAINTEXT_MAX {
            return Err(ProtoError::BadLength("message larger than a frame").into());
        }
        if let Some(start) = self.open_frame {
            let plaintext = out.len() - start - FRAME_LEN_BYTES - 1;
            if plaintext + len <= FRAME_PLAINTEXT_MAX {
                return Ok(());
            }
            self.seal(out)?;
        }
        if !matches!(self.state, State::Open { push: Some(_), .. }) {
            return Err(ChannelError::NotOpen);
        }
        self.open_frame = Some(out.len());
        // Length prefix and tag slot, filled in by `seal`.
        out.extend_from_slice(&[0, 0, 0]);
        Ok(())
    }

    /// Appends one whole message (room + copy).
    pub fn send(&mut self, out: &mut Vec<u8>, msg: &[u8]) -> Result<(), ChannelError> {
        self.room(out, msg.len())?;
        out.extend_from_slice(msg);
        Ok(())
    }

    /// True while a frame is open in the output buffer.
    pub fn has_open_frame(&self) -> bool {
        self.open_frame.is_some()
    }

    /// Seals the open frame, if any: appends room for the MAC, writes the
    /// length and encrypts in place.
    pub fn seal(&mut self, out: &mut Vec<u8>) -> Result<(), ChannelError> {
        let Some(start) = self.open_frame.take() else {
            return Ok(());
        };
        let State::Open {
            push: Some(push), ..
        } = &mut self.state
        else {
            return Err(ChannelError::NotOpen);
        };
        debug_assert!(
            out.len() > start + 3,
            "an open frame holds at least one message"
        );
        out.extend_from_slice(&[0u8; ABYTES - 1]);
        let clen = out.len() - start - FRAME_LEN_BYTES;
        debug_assert!(clen <= FRAME_CIPHERTEXT_MAX);
        out[start..start + 2].copy_from_slice(&(clen as u16).to_le_bytes());
        push.push_in_place(&mut out[start + FRAME_LEN_BYTES..])?;
        Ok(())
    }

    /// Forgets an open frame whose bytes the caller has discarded (the output
    /// buffer was cleared).
    pub fn drop_open_frame(&mut self) {
        self.open_frame = None;
    }

    /// Hands the push stream over (`FPROXY_MSG_PLAYER_CRYPTCHAN`): returns its
    /// state and drops it, so this side can never push on it again.
    pub fn hand_over_push(&mut self) -> Result<[u8; STATE_BYTES], ChannelError> {
        if self.open_frame.is_some() {
            return Err(ChannelError::NotOpen);
        }
        match &mut self.state {
            State::Open { push, .. } => push
                .take()
                .map(|p| p.export_state())
                .ok_or(ChannelError::NotOpen),
            _ => Err(ChannelError::NotOpen),
        }
    }
}

/// Seals a frame from a push stream that lives outside a [`Channel`] (the
/// shard's per-client streams received in `FPROXY_MSG_PLAYER_CRYPTCHAN`):
/// `out[start..]` is `[3 reserved bytes][plaintext]`.
pub fn seal_with(
    push: &mut PushStream,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<(), ChannelError> {
    debug_assert!(out.len() > start + 3);
    out.extend_from_slice(&[0u8; ABYTES - 1]);
    let clen = out.len() - start - FRAME_LEN_BYTES;
    if clen > FRAME_CIPHERTEXT_MAX {
        return Err(ProtoError::BadLength("frame larger than allowed").into());
    }
    out[start..start + 2].copy_from_slice(&(clen as u16).to_le_bytes());
    push.push_in_place(&mut out[start + FRAME_LEN_BYTES..])?;
    Ok(())
}

/// Why [`Frames::next`] stopped: the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The next frame or handshake message is larger than the input buffer
    /// may hold.
    TooLarge,
    /// The channel refused the bytes (framing, cryptography, handshake).
    Channel(ChannelError),
}

impl From<ChannelError> for FrameError {
    fn from(e: ChannelError) -> FrameError {
        FrameError::Channel(e)
    }
}

impl From<ProtoError> for FrameError {
    fn from(e: ProtoError) -> FrameError {
        FrameError::Channel(e.into())
    }
}

impl From<ProtoError> for PeerError {
    fn from(e: ProtoError) -> PeerError {
        PeerError::Proto(e)
    }
}

impl From<FrameError> for PeerError {
    fn from(e: FrameError) -> PeerError {
        match e {
            FrameError::TooLarge => PeerError::TooLarge,
            FrameError::Channel(e) => PeerError::Channel(e),
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge => f.write_str("frame larger than the input buffer"),
            FrameError::Channel(e) => write!(f, "{e}"),
        }
    }
}

/// What [`Frames::next`] hands the protocol: the handshake's end, or a frame.
/// (Handshake messages before the last are answered inside the driver.)
#[derive(Debug, PartialEq, Eq)]
pub enum Unit<'a> {
    /// The handshake finished: messages may be sent now.
    Opened,
    /// A decrypted frame's plaintext: one or more messages.
    Frame(&'a [u8]),
}

/// Where a frame's plaintext starts: after its length and the
/// secretstream tag byte.
const PLAINTEXT_AT: usize = FRAME_LEN_BYTES + 1;

/// The frame driver: one read's bytes cut into handshake steps and frames,
/// for every link of every program (thesis §3.4.4 keeps "incomplete messages
/// waiting for more data" in `in_buf`).
///
/// ```text
/// let mut frames = Frames::new(&mut in_buf, data, in_buf_max);
/// while let Some(unit) = frames.next(&mut chan, &mut out)? { ... }
/// ```
///
/// Units that lie whole inside `data` are decrypted in place, where they
/// arrived (a secpool block): no copy. Only the bytes of a unit split across
/// reads are copied into `in_buf`, and only as many as complete it, so
/// `in_buf` never holds more than one unit; a unit whose announced length is
/// over `in_buf_max` is refused before it is buffered. The channel and the
/// output buffer are passed to each call rather than held, so that between
/// units the caller may use them (and everything else) freely. Run it until
/// `None`: that is when a trailing incomplete unit is kept in `in_buf`.
#[derive(Debug)]
pub struct Frames<'b> {
    in_buf: &'b mut Vec<u8>,
    data: &'b mut [u8],
    /// Bytes of `data` used so far.
    pos: usize,
    in_buf_max: usize,
    /// The unit in `in_buf` was handed out: clear it at the next call.
    in_buf_used: bool,
    /// Every byte of `data` is used or kept.
    done: bool,
}

impl<'b> Frames<'b> {
    /// The units of `data`, after what an earlier read left in `in_buf`.
    pub fn new(in_buf: &'b mut Vec<u8>, data: &'b mut [u8], in_buf_max: usize) -> Frames<'b> {
        Frames {
            in_buf,
            data,
            pos: 0,
            in_buf_max,
            in_buf_used: false,
            done: false,
        }
    }

    /// The next unit, or `None` once the bytes are used up (an incomplete
    /// unit at the end is kept in `in_buf` for the next read). Handshake
    /// replies are written to `out`.
    pub fn next(
        &mut self,
        chan: &mut Channel,
        out: &mut Vec<u8>,
    ) -> Result<Option<Unit<'_>>, FrameError> {
        loop {
            if self.in_buf_used {
                self.in_buf.clear();
                self.in_buf_used = false;
            }
            if !self.in_buf.is_empty() {
                if !self.fill_in_buf(chan)? {
                    self.done = true;
                    return Ok(None); // still incomplete: wait for the next read
                }
                let total = self.in_buf.len();
                let (consumed, unit) = match chan.next(self.in_buf, out)? {
                    Step::NeedMore => (0, None),
                    Step::Handshake { consumed } => (consumed, None),
                    Step::Opened { consumed } => (consumed, Some(None)),
                    Step::Frame {
                        consumed,
                        plaintext,
                    } => (consumed, Some(Some(plaintext.len()))),
                };
                if consumed != total {
                    // The unit did not end where its length said: cannot
                    // happen with a channel, refused rather than guessed at.
                    return Err(ProtoError::BadLength("a unit's length").into());
                }
                self.in_buf_used = true;
                match unit {
                    None => continue,
                    Some(None) => return Ok(Some(Unit::Opened)),
                    Some(Some(len)) => {
                        return Ok(Some(Unit::Frame(
                            &self.in_buf[PLAINTEXT_AT..PLAINTEXT_AT + len],
                        )));
                    }
                }
            }
            if self.done {
                return Ok(None);
            }
            let at = self.pos;
            match chan.next(&mut self.data[at..], out)? {
                Step::NeedMore => {
                    self.keep_rest(chan)?;
                    return Ok(None);
                }
                Step::Handshake { consumed } => self.pos += consumed,
                Step::Opened { consumed } => {
                    self.pos += consumed;
                    return Ok(Some(Unit::Opened));
                }
                Step::Frame {
                    consumed,
                    plaintext,
                } => {
                    let start = at + PLAINTEXT_AT;
                    let end = start + plaintext.len();
                    self.pos += consumed;
                    return Ok(Some(Unit::Frame(&self.data[start..end])));
                }
            }
        }
    }

    /// Completes the unit at the front of `in_buf` from `data`; false if
    /// `data` ran out first (all of it is then in `in_buf`).
    fn fill_in_buf(&mut self, chan: &Channel) -> Result<bool, FrameError> {
        loop {
            let left = self.data.len() - self.pos;
            match chan.pending_len(self.in_buf) {
                Some(total) if total > self.in_buf_max => return Err(FrameError::TooLarge),
                Some(total) => {
                    let take = total.saturating_sub(self.in_buf.len()).min(left);
                    self.in_buf
                        .extend_from_slice(&self.data[self.pos..self.pos + take]);
                    self.pos += take;
                    return Ok(self.in_buf.len() >= total);
                }
                // The length itself is still incomplete: take one more byte.
                None if left == 0 => return Ok(false),
                None if self.in_buf.len() >= self.in_buf_max => return Err(FrameError::TooLarge),
                None => {
                    self.in_buf.push(self.data[self.pos]);
                    self.pos += 1;
                }
            }
        }
    }

    /// Keeps the incomplete unit at the end of `data` in `in_buf`, refusing
    /// one that announces more than `in_buf_max`.
    fn keep_rest(&mut self, chan: &Channel) -> Result<(), FrameError> {
        self.done = true;
        let rest = &self.data[self.pos..];
        if chan
            .pending_len(rest)
            .is_some_and(|total| total > self.in_buf_max)
            || rest.len() > self.in_buf_max
        {
            return Err(FrameError::TooLarge);
        }
        self.in_buf.extend_from_slice(rest);
        self.pos = self.data.len();
        Ok(())
    }
}

impl Drop for Frames<'_> {
    /// A unit handed out is used, even if the caller stopped after it.
    fn drop(&mut self) {
        if self.in_buf_used {
            self.in_buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` to `chan` one call at a time, collecting frames.
    fn drive(
        chan: &mut Channel,
        bytes: &mut Vec<u8>,
        reply: &mut Vec<u8>,
    ) -> Result<Vec<Vec<u8>>, ChannelError> {
        let mut frames = Vec::new();
        let mut pos = 0;
        loop {
            match chan.next(&mut bytes[pos..], reply)? {
                Step::NeedMore => break,
                Step::Handshake { consumed } | Step::Opened { consumed } => pos += consumed,
                Step::Frame {
                    consumed,
                    plaintext,
                } => {
                    frames.push(plaintext.to_vec());
                    pos += consumed;
                }
            }
        }
        bytes.drain(..pos);
        Ok(frames)
    }

    fn open_pair(
        expected: Option<PublicKey>,
        acceptor_keys: Arc<KeyPair>,
    ) -> Result<(Channel, Channel), ChannelError> {
        let mut to_acc = Vec::new();
        let mut to_ini = Vec::new();
        let mut ini = Channel::initiator(Arc::new(KeyPair::generate()), expected, &mut to_acc);
        let mut acc = Channel::acceptor(acceptor_keys);
        drive(&mut acc, &mut to_acc, &mut to_ini)?;
        drive(&mut ini, &mut to_ini, &mut to_acc)?;
        drive(&mut acc, &mut to_acc, &mut to_ini)?;
        assert!(ini.is_open() && acc.is_open());
        Ok((ini, acc))
    }

    #[test]
    fn handshake_then_batched_frames_both_ways() {
        let (mut ini, mut acc) = open_pair(None, Arc::new(KeyPair::generate())).unwrap();
        let mut wire = Vec::new();
        ini.send(&mut wire, b"one").unwrap();
        ini.send(&mut wire, b"two").unwrap();
        ini.seal(&mut wire).unwrap();
        ini.send(&mut wire, b"three").unwrap();
        ini.seal(&mut wire).unwrap();
        let mut reply = Vec::new();
        // Byte by byte: partial frames wait for the rest.
        let mut frames = Vec::new();
        let mut buf = Vec::new();
        for b in wire {
            buf.push(b);
            frames.extend(drive(&mut acc, &mut buf, &mut reply).unwrap());
        }
        assert_eq!(frames, [b"onetwo".to_vec(), b"three".to_vec()]);
        assert!(reply.is_empty());
        let mut back = Vec::new();
        acc.send(&mut back, b"pong").unwrap();
        acc.seal(&mut back).unwrap();
        assert_eq!(
            drive(&mut ini, &mut back, &mut reply).unwrap(),
            [b"pong".to_vec()]
        );
    }

    #[test]
    fn an_unexpected_acceptor_key_is_refused() {
        let real = Arc::new(KeyPair::generate());
        let impostor = Arc::new(KeyPair::generate());
        assert!(open_pair(Some(real.public()), real.clone()).is_ok());
        assert_eq!(
            open_pair(Some(real.public()), impostor).err(),
            Some(ChannelError::UnexpectedKey)
        );
    }

    #[test]
    fn oversized_empty_and_tampered_frames_fail() {
        let (mut ini, mut acc) = open_pair(None, Arc::new(KeyPair::generate())).unwrap();
        acc.set_frame_max(100);
        let mut reply = Vec::new();
        let mut big = vec![200, 0];
        big.extend_from_slice(&[0; 10]);
        assert_eq!(
            drive(&mut acc, &mut big, &mut reply).err(),
            Some(ChannelError::Proto(ProtoError::BadLength(
                "frame larger than allowed"
            )))
        );
        let mut empty = vec![17, 0];
        empty.extend_from_slice(&[0; 17]);
        assert!(drive(&mut acc, &mut empty, &mut reply).is_err());
        let mut wire = Vec::new();
        ini.send(&mut wire, b"hello").unwrap();
        ini.seal(&mut wire).unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert_eq!(
            drive(&mut acc, &mut wire, &mut reply).err(),
            Some(ChannelError::Crypt(CryptError::Decrypt))
        );
    }

    #[test]
    fn a_frame_is_sealed_when_the_next_message_would_not_fit() {
        let (mut ini, mut acc) = open_pair(None, Arc::new(KeyPair::generate())).unwrap();
        let mut wire = Vec::new();
        let big = vec![9u8; FRAME_PLAINTEXT_MAX - 10];
        ini.send(&mut wire, &big).unwrap();
        ini.send(&mut wire, &[1u8; 20]).unwrap();
        ini.seal(&mut wire).unwrap();
        let frames = drive(&mut acc, &mut wire, &mut Vec::new()).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], big);
        assert!(
            ini.send(&mut wire, &vec![0u8; FRAME_PLAINTEXT_MAX + 1])
                .is_err()
        );
    }

    #[test]
    fn frames_copies_only_what_is_split_across_reads() {
        let frames_of = |i: u8| vec![i; 1 + i as usize * 37];
        // Cut the stream into reads of awkward sizes.
        for read_size in [1, 2, 3, 100, 1000, 7777] {
            let (mut ini, mut acc) = open_pair(None, Arc::new(KeyPair::generate())).unwrap();
            let mut wire = Vec::new();
            for i in 0..50u8 {
                ini.send(&mut wire, &frames_of(i)).unwrap();
                ini.seal(&mut wire).unwrap();
            }
            let mut in_buf = Vec::new();
            let mut got = Vec::new();
            let mut copied_max = 0;
            for chunk in wire.chunks(read_size) {
                let mut data = chunk.to_vec();
                let mut frames = Frames::new(&mut in_buf, &mut data, 4096);
                while let Some(unit) = frames.next(&mut acc, &mut Vec::new()).unwrap() {
                    match unit {
                        Unit::Frame(plaintext) => got.push(plaintext.to_vec()),
                        Unit::Opened => panic!("already open"),
                    }
                }
                drop(frames);
                copied_max = copied_max.max(in_buf.len());
                assert!(in_buf.len() <= 4096);
            }
            assert!(in_buf.is_empty());
            assert_eq!(got.len(), 50, "read size {read_size}");
            for (i, frame) in got.iter().enumerate() {
                assert_eq!(frame, &frames_of(i as u8));
            }
            if read_size == 7777 {
                // Frames whole inside a read were not copied: in_buf held at
                // most the split one.
                assert!(copied_max < 7777);
            }
        }
        // A frame announcing more than the buffer may hold is refused at once.
        let (_, mut acc) = open_pair(None, Arc::new(KeyPair::generate())).unwrap();
        let mut in_buf = Vec::new();
        let mut data = vec![0xFF, 0xFF, 1, 2, 3];
        let mut frames = Frames::new(&mut in_buf, &mut data, 4096);
        assert_eq!(
            frames.next(&mut acc, &mut Vec::new()),
            Err(FrameError::TooLarge)
        );
    }

    #[test]
    fn the_handshake_runs_through_frames_and_ends_in_opened() {
        let keys = Arc::new(KeyPair::generate());
        let mut to_acc = Vec::new();
        let mut ini = Channel::initiator(Arc::new(KeyPair::generate()), None, &mut to_acc);
        let mut acc = Channel::acceptor(keys);
        let (mut acc_in, mut ini_in) = (Vec::new(), Vec::new());
        let mut to_ini = Vec::new();
        // The acceptor gets the initiator's key one byte at a time.
        for b in to_acc.clone() {
            let mut data = vec![b];
            let mut frames = Frames::new(&mut acc_in, &mut data, 4096);
            assert_eq!(frames.next(&mut acc, &mut to_ini).unwrap(), None);
        }
        let mut data = std::mem::take(&mut to_ini);
        let mut frames = Frames::new(&mut ini_in, &mut data, 4096);
        assert_eq!(
            frames.next(&mut ini, &mut to_acc).unwrap(),
            Some(Unit::Opened)
        );
        assert_eq!(frames.next(&mut ini, &mut to_acc).unwrap(), None);
        drop(frames);
        ini.send(&mut to_acc, b"first").unwrap();
        ini.seal(&mut to_acc).unwrap();
        let mut data = to_acc.split_off(33);
        let mut frames = Frames::new(&mut acc_in, &mut data, 4096);
        assert_eq!(
            frames.next(&mut acc, &mut to_ini).unwrap(),
            Some(Unit::Opened)
        );
        assert_eq!(
            frames.next(&mut acc, &mut to_ini).unwrap(),
            Some(Unit::Frame(&b"first"[..]))
        );
        assert_eq!(frames.next(&mut acc, &mut to_ini).unwrap(), None);
    }

    #[test]
    fn the_push_stream_can_be_handed_over_once() {
        let (mut ini, mut acc) = open_pair(None, Arc::new(KeyPair::generate())).unwrap();
        let state = acc.hand_over_push().unwrap();
        assert_eq!(acc.hand_over_push(), Err(ChannelError::NotOpen));
        assert_eq!(acc.send(&mut Vec::new(), b"x"), Err(ChannelError::NotOpen));
        // Another party continues the stream; the initiator reads it.
        let mut elsewhere = PushStream::import_state(&state);
        let mut wire = vec![0, 0, 0];
        wire.extend_from_slice(b"from the shard");
        seal_with(&mut elsewhere, &mut wire, 0).unwrap();
        assert_eq!(
            drive(&mut ini, &mut wire, &mut Vec::new()).unwrap(),
            [b"from the shard".to_vec()]
        );
    }
}
