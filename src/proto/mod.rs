//! The MUTA protocols, free of I/O (thesis §3.8): bytes in, messages out, and
//! the reverse. Nothing here touches a socket, a clock or a thread, so every
//! decoder can be driven by tests and fuzzers directly.
//!
//! - [`frame`]: the cryptchan handshake and the encrypted frames every link
//!   uses (the `Channel` state machine).
//! - [`proxy_shard`]: the proxy–shard protocol, the thesis's eleven messages
//!   (§3.8.2).
//! - [`client`]: the client–proxy auth proof, and the game messages with the
//!   table the proxy filters them by (§3.8.3, §3.8.4).
//! - [`login`]: client–login server and login server–shard messages (§3.8.3).
//!
//! Every decoder returns `Ok(None)` for "need more bytes" and
//! `Err(ProtoError)` for "malformed", and never panics, whatever the input
//! (checked by a seeded random-input test over every decoder, and by the
//! cargo-fuzz targets in `fuzz/`). `docs/protocol.md` gives every byte.
//!
//! Integers are little-endian. Strings are UTF-8 with a one-byte length; byte
//! strings have a one- or two-byte length; every length has a maximum.

pub mod client;
pub mod frame;
pub mod login;
pub mod otc;
pub mod proxy_protocol;
pub mod proxy_shard;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why bytes were rejected. Carries static text only: building it costs
/// nothing and an attacker cannot make it large.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoError {
    /// A message type this side does not accept.
    UnknownType(u8),
    /// A length field above its maximum, or a size that does not match.
    BadLength(&'static str),
    /// A field with an invalid value.
    BadValue(&'static str),
    /// A message cut short inside a complete frame.
    Truncated(&'static str),
    /// Bytes left over after the last message of a frame.
    TrailingBytes,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::UnknownType(t) => write!(f, "unknown message type {t}"),
            ProtoError::BadLength(what) => write!(f, "bad length: {what}"),
            ProtoError::BadValue(what) => write!(f, "bad value: {what}"),
            ProtoError::Truncated(what) => write!(f, "truncated: {what}"),
            ProtoError::TrailingBytes => f.write_str("trailing bytes after the last message"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// `Ok(Some((message, bytes consumed)))`, `Ok(None)` when more bytes are
/// needed, `Err` when the bytes can never become a valid message.
pub type Decoded<T> = Result<Option<(T, usize)>, ProtoError>;

/// A protocol's message type, decoded one after another from a frame (see
/// [`messages`]).
pub trait Message<'a>: Sized {
    /// What a message cut short is called in errors ("shard message", ...).
    const WHAT: &'static str;
    /// Decodes the message at the front of `buf`.
    fn decode(buf: &'a [u8]) -> Decoded<Self>;
}

/// The messages of one frame, in order (the second half of the frame driver,
/// after [`frame::Frames`]). A message cut short inside the frame is
/// [`ProtoError::Truncated`]; after an error the iterator ends.
#[derive(Debug)]
pub struct Messages<'a, M> {
    frame: &'a [u8],
    pos: usize,
    _msg: std::marker::PhantomData<M>,
}

/// The messages of `frame`, as `M`.
pub fn messages<'a, M: Message<'a>>(frame: &'a [u8]) -> Messages<'a, M> {
    Messages {
        frame,
        pos: 0,
        _msg: std::marker::PhantomData,
    }
}

impl<'a, M: Message<'a>> Iterator for Messages<'a, M> {
    type Item = Result<M, ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.frame.len() {
            return None;
        }
        let result = match M::decode(&self.frame[self.pos..]) {
            Ok(Some((msg, len))) => {
                self.pos += len;
                return Some(Ok(msg));
            }
            Ok(None) => Err(ProtoError::Truncated(M::WHAT)),
            Err(e) => Err(e),
        };
        self.pos = self.frame.len();
        Some(result)
    }
}

/// The one message a frame must hold (the login protocol's player side: one
/// request per frame): a message cut short, or bytes after it, are errors.
pub fn single_message<'a, M: Message<'a>>(frame: &'a [u8]) -> Result<M, ProtoError> {
    match M::decode(frame)? {
        Some((msg, len)) if len == frame.len() => Ok(msg),
        Some(_) => Err(ProtoError::TrailingBytes),
        None => Err(ProtoError::Truncated(M::WHAT)),
    }
}

/// Most bytes in an account name (port decision).
pub const ACCOUNT_NAME_MAX: usize = 32;
/// Most bytes in a shard name (port decision).
pub const SHARD_NAME_MAX: usize = 32;
/// Most bytes in a password (port decision).
pub const PASSWORD_MAX: usize = 64;
/// Most bytes in a `HOST:PORT` address (port decision).
pub const ADDRESS_MAX: usize = 64;

/// A cursor over a message. Reading past the end is "need more bytes"
/// ([`Short`]), which each decoder turns into `Ok(None)` or, inside a complete
/// frame, into [`ProtoError::Truncated`].
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The reader ran out of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Short;

/// A read failed: not enough bytes yet, or bytes that are wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// More bytes may complete the message.
    Short,
    /// The bytes are invalid.
    Bad(ProtoError),
}

impl From<ProtoError> for ReadError {
    fn from(e: ProtoError) -> ReadError {
        ReadError::Bad(e)
    }
}

impl From<Short> for ReadError {
    fn from(_: Short) -> ReadError {
        ReadError::Short
    }
}

/// Turns a reader result into a [`Decoded`]: `Short` becomes `Ok(None)`.
pub fn decoded<T>(result: Result<(T, usize), ReadError>) -> Decoded<T> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(ReadError::Short) => Ok(None),
        Err(ReadError::Bad(e)) => Err(e),
    }
}

/// As [`decoded`], for a message that must be complete (it sits inside a
/// decrypted frame): `Short` becomes [`ProtoError::Truncated`].
pub fn complete<T>(
    result: Result<(T, usize), ReadError>,
    what: &'static str,
) -> Result<(T, usize), ProtoError> {
    match result {
        Ok(v) => Ok(v),
        Err(ReadError::Short) => Err(ProtoError::Truncated(what)),
        Err(ReadError::Bad(e)) => Err(e),
    }
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Bytes read so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Short> {
        if self.remaining() < n {
            return Err(Short);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next `N` bytes as an array reference.
    pub fn array<const N: usize>(&mut self) -> Result<&'a [u8; N], Short> {
        Ok(self.bytes(N)?.try_into().expect("bytes(N) returns N bytes"))
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.bytes(1)?[0])
    }

    /// Little-endian u16.
    pub fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_le_bytes(*self.array()?))
    }

    /// Little-endian u32.
    pub fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(*self.array()?))
    }

    /// Little-endian u64.
    pub fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(*self.array()?))
    }

    /// Little-endian i32.
    pub fn i32(&mut self) -> Result<i32, Short> {
        Ok(i32::from_le_bytes(*self.array()?))
    }

    /// A byte string with a one-byte length of at most `max`.
    pub fn bytes8(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], ReadError> {
        let len = self.u8()? as usize;
        if len > max {
            return Err(ProtoError::BadLength(what).into());
        }
        Ok(self.bytes(len)?)
    }

    /// A byte string with a two-byte length of at most `max`.
    pub fn bytes16(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], ReadError> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(ProtoError::BadLength(what).into());
        }
        Ok(self.bytes(len)?)
    }

    /// A UTF-8 string with a one-byte length of at most `max`, not empty.
    pub fn str8(&mut self, max: usize, what: &'static str) -> Result<&'a str, ReadError> {
        let bytes = self.bytes8(max, what)?;
        if bytes.is_empty() {
            return Err(ProtoError::BadLength(what).into());
        }
        std::str::from_utf8(bytes).map_err(|_| ProtoError::BadValue(what).into())
    }

    /// An IP address: family byte 4 or 6, then 4 or 16 bytes.
    pub fn ip(&mut self) -> Result<IpAddr, ReadError> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(*self.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(*self.array::<16>()?))),
            _ => Err(ProtoError::BadValue("address family").into()),
        }
    }

    /// A socket address: an [`ip`](Reader::ip), then a `u16` port.
    pub fn sockaddr(&mut self) -> Result<SocketAddr, ReadError> {
        let ip = self.ip()?;
        Ok(SocketAddr::new(ip, self.u16()?))
    }
}

/// Appends to a message being built. Lengths are checked by the caller's
/// types and maxima; a string over its maximum is a bug in the caller, so
/// the writers truncate rather than emit a message the peer would reject.
pub mod put {
    use std::net::{IpAddr, SocketAddr};

    /// One byte.
    pub fn u8(out: &mut Vec<u8>, v: u8) {
        out.push(v);
    }
    /// Little-endian u16.
    pub fn u16(out: &mut Vec<u8>, v: u16) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    /// Little-endian u32.
    pub fn u32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    /// Little-endian u64.
    pub fn u64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    /// Little-endian i32.
    pub fn i32(out: &mut Vec<u8>, v: i32) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    /// Bytes with a one-byte length, at most `max`.
    pub fn bytes8(out: &mut Vec<u8>, v: &[u8], max: usize) {
        let v = &v[..v.len().min(max).min(255)];
        out.push(v.len() as u8);
        out.extend_from_slice(v);
    }
    /// Bytes with a two-byte length, at most `max`.
    pub fn bytes16(out: &mut Vec<u8>, v: &[u8], max: usize) {
        let v = &v[..v.len().min(max).min(65535)];
        u16(out, v.len() as u16);
        out.extend_from_slice(v);
    }
    /// An IP address: family byte, then 4 or 16 bytes.
    pub fn ip(out: &mut Vec<u8>, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                out.push(4);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.push(6);
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    /// A socket address: its IP, then its port.
    pub fn sockaddr(out: &mut Vec<u8>, addr: SocketAddr) {
        ip(out, addr.ip());
        u16(out, addr.port());
    }
}
