//! A blocking MUTA client (thesis §3.8.3 from the player's side): log in, get
//! a ticket, connect to the proxy, prove the token, exchange game messages.
//!
//! One thread per connection and plain blocking sockets: for tests and tools
//! that script one player at a time (a wrong token, a replayed token, a proxy
//! with the wrong key, a frame the filter must refuse). The load client in
//! [`super`] drives thousands of players with the same protocol code
//! ([`Channel`]), without blocking.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::cryptchan::{KeyPair, PublicKey, TOKEN_BYTES};
use crate::proto::client::AuthProof;
use crate::proto::frame::{Channel, ChannelError, FrameError, Frames, Unit};
use crate::proto::login::{FromLogin, RESULT_OK, ToLogin};
use crate::proto::{ProtoError, single_message};

/// Why a client step failed.
#[derive(Debug)]
pub enum ClientError {
    /// A socket error, or the peer closed the connection.
    Io(io::Error),
    /// A channel failure: bad bytes, failed MAC, unexpected key.
    Channel(ChannelError),
    /// A message that is not the protocol.
    Proto(ProtoError),
    /// The login server refused: the `RESULT_*` code.
    Refused(u8),
    /// Nothing arrived in time.
    Timeout,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Channel(e) => write!(f, "{e}"),
            ClientError::Proto(e) => write!(f, "{e}"),
            ClientError::Refused(code) => write!(f, "refused by the login server (result {code})"),
            ClientError::Timeout => f.write_str("timed out"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> ClientError {
        ClientError::Io(e)
    }
}

impl From<ChannelError> for ClientError {
    fn from(e: ChannelError) -> ClientError {
        ClientError::Channel(e)
    }
}

/// What the login server hands a player: where to go and what to prove.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The account.
    pub account_id: u64,
    /// The proxy's public `HOST:PORT`.
    pub proxy_address: String,
    /// The key the proxy must present.
    pub proxy_key: PublicKey,
    /// The 64-byte token.
    pub token: [u8; TOKEN_BYTES],
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("proxy_address", &self.proxy_address)
            .field("proxy_key", &self.proxy_key)
            .finish_non_exhaustive()
    }
}

/// The most bytes of one frame from a proxy or login server, with its length.
const IN_BUF_MAX: usize = 70 * 1024;

/// An encrypted connection, blocking: a socket and a [`Channel`] (initiator).
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    chan: Channel,
    in_buf: Vec<u8>,
    out: Vec<u8>,
    /// Frames read and not yet taken.
    frames: VecDeque<Vec<u8>>,
}

impl Conn {
    /// Connects and runs the handshake, refusing an acceptor whose key is not
    /// `expected` (when given).
    pub fn connect(
        addr: &str,
        expected: Option<PublicKey>,
        timeout: Duration,
    ) -> Result<Conn, ClientError> {
        Conn::connect_from(None, addr, expected, timeout)
    }

    /// As [`Conn::connect`], from the local address `from` when given (a
    /// player's own address: tests give each player one of 127.0.0.0/8).
    pub fn connect_from(
        from: Option<IpAddr>,
        addr: &str,
        expected: Option<PublicKey>,
        timeout: Duration,
    ) -> Result<Conn, ClientError> {
        Conn::connect_after(from, None, addr, &[], expected, timeout)
    }

    /// As [`Conn::connect_from`], writing `preamble` (a PROXY protocol header,
    /// as a forwarder would) before the handshake, with a kernel receive
    /// buffer of about `recv_buffer` bytes when given (see [`tcp_connect`]).
    pub fn connect_after(
        from: Option<IpAddr>,
        recv_buffer: Option<usize>,
        addr: &str,
        preamble: &[u8],
        expected: Option<PublicKey>,
        timeout: Duration,
    ) -> Result<Conn, ClientError> {
        let addr: SocketAddr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let stream = tcp_connect(from, recv_buffer, addr, timeout)?;
        stream.set_nodelay(true)?;
        let mut out = preamble.to_vec();
        let chan = Channel::initiator(Arc::new(KeyPair::generate()), expected, &mut out);
        let mut conn = Conn {
            stream,
            chan,
            in_buf: Vec::new(),
            out,
            frames: VecDeque::new(),
        };
        conn.flush()?;
        let deadline = Instant::now() + timeout;
        while !conn.chan.is_open() {
            conn.read_once(deadline)?;
        }
        conn.flush()?;
        Ok(conn)
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        self.chan.seal(&mut self.out)?;
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Reads once (waiting until `deadline`) and runs the bytes through the
    /// channel, the frame driver answering the handshake; frames are kept
    /// for [`Conn::recv_frame`].
    fn read_once(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout);
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut buf = [0u8; 16 * 1024];
        let n = match self.stream.read(&mut buf) {
            Ok(0) => {
                return Err(
                    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed").into(),
                );
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout);
            }
            Err(e) => return Err(e.into()),
        };
        let mut frames = Frames::new(&mut self.in_buf, &mut buf[..n], IN_BUF_MAX);
        while let Some(unit) = frames
            .next(&mut self.chan, &mut self.out)
            .map_err(|e| match e {
                FrameError::Channel(e) => ClientError::Channel(e),
                FrameError::TooLarge => ClientError::Proto(ProtoError::BadLength("frame")),
            })?
        {
            if let Unit::Frame(frame) = unit {
                self.frames.push_back(frame.to_vec());
            }
        }
        Ok(())
    }

    /// Sends one frame holding `plaintext` (one or more messages).
    pub fn send_frame(&mut self, plaintext: &[u8]) -> Result<(), ClientError> {
        self.chan.send(&mut self.out, plaintext)?;
        self.flush()
    }

    /// Writes raw bytes past the channel (to test what peers do with them).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Encrypts a frame holding `plaintext` and returns its bytes without
    /// sending them (to tamper with, reorder or replay).
    pub fn seal_frame(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut frame = Vec::new();
        self.chan.send(&mut frame, plaintext)?;
        self.chan.seal(&mut frame)?;
        Ok(frame)
    }

    /// The next frame's plaintext, waiting up to `timeout`.
    pub fn recv_frame(&mut self, timeout: Duration) -> Result<Vec<u8>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Ok(frame);
            }
            self.read_once(deadline)?;
        }
    }

    /// True if the peer closes the connection within `timeout` (whatever it
    /// sends first is discarded).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true, // reset
            }
        }
    }

    /// The acceptor's key, as presented in the handshake.
    pub fn peer_key(&self) -> Option<PublicKey> {
        self.chan.peer_key()
    }

    /// Bounds each write (a peer that stops reading makes a write fail
    /// with `TimedOut` instead of blocking for ever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) {
        let _ = self.stream.set_write_timeout(timeout);
    }

    /// True if the peer has closed the connection (or reset it); what it
    /// sent meanwhile is read and dropped. Does not wait.
    pub fn peer_closed(&mut self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let mut buf = [0u8; 16 * 1024];
        let closed = loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            }
        };
        closed || self.stream.set_nonblocking(false).is_err()
    }

    /// The connection's local address: where the peer sees it come from.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

/// A blocking TCP connection to `addr`, bound first to `from` (port chosen
/// by the kernel) when given, with a kernel receive buffer of about
/// `recv_buffer` bytes when given (a client that reads slowly, in tests and
/// `muta-attack`).
pub fn tcp_connect(
    from: Option<IpAddr>,
    recv_buffer: Option<usize>,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    if from.is_none() && recv_buffer.is_none() {
        return TcpStream::connect_timeout(&addr, timeout);
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(bytes) = recv_buffer {
        // Before the connect, so that the window offered to the peer is
        // never larger than the buffer. Shrunk after it, the window already
        // offered outlives the buffer, and `muta-attack`'s slow readers saw
        // their own sending stall (650 KB queued and unacknowledged while
        // the proxy had read all it was given): a client that stops
        // sending, not the slow reader it meant to be.
        socket.set_recv_buffer_size(bytes)?;
    }
    if let Some(from) = from {
        socket.bind(&SocketAddr::new(from, 0).into())?;
    }
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}

/// Logs in and asks for a shard (thesis §3.8.3): returns the ticket.
pub fn login(
    login_addr: &str,
    login_key: Option<PublicKey>,
    account_name: &str,
    password: &str,
    shard_name: &str,
    timeout: Duration,
) -> Result<Ticket, ClientError> {
    let account = Account {
        name: account_name,
        password,
        shard: shard_name,
    };
    login_from(None, login_addr, login_key, &account, timeout)
}

/// Who logs in, and to which shard.
#[derive(Clone, Copy, Debug)]
pub struct Account<'a> {
    /// The account's name.
    pub name: &'a str,
    /// Its password.
    pub password: &'a str,
    /// The shard it asks for.
    pub shard: &'a str,
}

/// As [`login`], from the local address `from` when given.
pub fn login_from(
    from: Option<IpAddr>,
    login_addr: &str,
    login_key: Option<PublicKey>,
    account: &Account<'_>,
    timeout: Duration,
) -> Result<Ticket, ClientError> {
    let Account {
        name: account_name,
        password,
        shard: shard_name,
    } = *account;
    let mut conn = Conn::connect_from(from, login_addr, login_key, timeout)?;
    let mut msg = Vec::new();
    ToLogin::Login {
        account_name,
        password: password.as_bytes(),
    }
    .encode(&mut msg);
    conn.send_frame(&msg)?;
    let frame = conn.recv_frame(timeout)?;
    let account_id = match single_message::<FromLogin<'_>>(&frame) {
        Ok(FromLogin::LoginResult {
            result: RESULT_OK,
            account_id,
        }) => account_id,
        Ok(FromLogin::LoginResult { result, .. }) => return Err(ClientError::Refused(result)),
        Ok(_) => {
            return Err(ClientError::Proto(ProtoError::BadValue(
                "expected FLOGIN_MSG_LOGIN_RESULT",
            )));
        }
        Err(e) => return Err(ClientError::Proto(e)),
    };
    msg.clear();
    ToLogin::SelectShard { shard_name }.encode(&mut msg);
    conn.send_frame(&msg)?;
    let frame = conn.recv_frame(timeout)?;
    match single_message::<FromLogin<'_>>(&frame) {
        Ok(FromLogin::ShardResult {
            ticket: Some((ticket, token)),
            ..
        }) => Ok(Ticket {
            account_id,
            proxy_address: ticket.address.to_string(),
            proxy_key: ticket.key,
            token: *token,
        }),
        Ok(FromLogin::ShardResult { result, .. }) => Err(ClientError::Refused(result)),
        Ok(_) => Err(ClientError::Proto(ProtoError::BadValue(
            "expected FLOGIN_MSG_SHARD_RESULT",
        ))),
        Err(e) => Err(ClientError::Proto(e)),
    }
}

/// Connects to the ticket's proxy, refusing any key but the ticket's, and
/// sends the auth proof. The shard's welcome is the first frame to read.
pub fn enter(
    ticket: &Ticket,
    account_name: &str,
    shard_name: &str,
    timeout: Duration,
) -> Result<Conn, ClientError> {
    enter_at(
        &ticket.proxy_address,
        ticket,
        account_name,
        shard_name,
        timeout,
    )
}

/// As [`enter`], at another address (to test a proxy other than the ticket's).
pub fn enter_at(
    addr: &str,
    ticket: &Ticket,
    account_name: &str,
    shard_name: &str,
    timeout: Duration,
) -> Result<Conn, ClientError> {
    enter_from(None, addr, ticket, account_name, shard_name, timeout)
}

/// As [`enter_at`], from the local address `from` when given (through a
/// forwarder, which then names that address in its PROXY protocol header).
pub fn enter_from(
    from: Option<IpAddr>,
    addr: &str,
    ticket: &Ticket,
    account_name: &str,
    shard_name: &str,
    timeout: Duration,
) -> Result<Conn, ClientError> {
    let mut conn = Conn::connect_from(from, addr, Some(ticket.proxy_key), timeout)?;
    send_proof(&mut conn, ticket, account_name, shard_name)?;
    Ok(conn)
}

/// The auth proof of `ticket`, as the connection's first frame (what
/// enters the game on a connection made with [`Conn::connect_after`]).
pub fn send_proof(
    conn: &mut Conn,
    ticket: &Ticket,
    account_name: &str,
    shard_name: &str,
) -> Result<(), ClientError> {
    let mut proof = Vec::new();
    AuthProof {
        account_name,
        shard_name,
        token: &ticket.token,
    }
    .encode(&mut proof);
    conn.send_frame(&proof)
}
