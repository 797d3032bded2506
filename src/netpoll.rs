//! The netpoll API (thesis §3.3.1): a thin wrapper over mio (epoll on Linux)
//! with the thesis's shape — init, add, del, wait with a timeout in
//! milliseconds (-1 = forever), event flags, and a 64-bit data word per
//! registration that comes back with every event — plus a waker so another
//! thread can interrupt a wait.
//!
//! # How mio's readiness maps to the thesis's flags
//!
//! | netpoll | mio | epoll |
//! |---|---|---|
//! | `NETPOLL_READ` (add) | `Interest::READABLE` | `EPOLLIN \| EPOLLRDHUP` |
//! | `NETPOLL_WRITE` (add) | `Interest::WRITABLE` | `EPOLLOUT` |
//! | `NETPOLL_ET` (add) | always on | `EPOLLET` |
//! | `NETPOLL_READ` (event) | `is_readable()` | `EPOLLIN`, `EPOLLPRI` |
//! | `NETPOLL_WRITE` (event) | `is_writable()` | `EPOLLOUT` |
//! | `NETPOLL_ERR` (event) | `is_error()` | `EPOLLERR` |
//! | `NETPOLL_HUP` (event) | `is_read_closed() \|\| is_write_closed()` | `EPOLLHUP`, `EPOLLRDHUP` |
//!
//! mio registers every source edge-triggered and offers no level-triggered
//! mode, so netpoll is edge-triggered only: [`Netpoll::add`] refuses a
//! registration without `NETPOLL_ET`, to make every caller state that it
//! drains the socket until `WouldBlock` (a readiness edge that is not drained
//! never comes again). `NETPOLL_ERR` and `NETPOLL_HUP` are always reported, as
//! with epoll; passing them to `add` changes nothing.
//!
//! Differences from the thesis, all port decisions:
//! - `wait` fills a caller-owned `Vec` up to the `max_events` given at init
//!   (mio's event array is sized once); the thesis passes `max_events` per call.
//! - [`Netpoll::modify`] (`EPOLL_CTL_MOD`) exists, for the one-shot write
//!   interest the I/O threads arm when the main thread could not write
//!   everything.
//! - a waker replaces the thesis's Windows-only dummy TCP socket: data word
//!   [`NETPOLL_DATA_WAKER`], an eventfd underneath.
//! - an interrupted wait (`EINTR`) returns no events instead of an error.
//!
//! A `Netpoll` is used by one thread (the thesis: "the blocking wait-call
//! cannot be called from multiple threads on the same polling context");
//! [`NetpollWaker`] is the only part other threads touch.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::com::NETPOLL_DATA_RESERVED_MIN;

/// Readable (event), or watch for readability (add).
pub const NETPOLL_READ: u32 = 1 << 0;
/// Writable (event), or watch for writability (add).
pub const NETPOLL_WRITE: u32 = 1 << 1;
/// Edge-triggered; mandatory on `add`, see the module docs.
pub const NETPOLL_ET: u32 = 1 << 2;
/// An error is pending on the socket (event only).
pub const NETPOLL_ERR: u32 = 1 << 3;
/// The peer hung up one or both directions (event only).
pub const NETPOLL_HUP: u32 = 1 << 4;

/// The data word of the waker's events.
pub const NETPOLL_DATA_WAKER: u64 = u64::MAX - 1;

const _: () = assert!(NETPOLL_DATA_WAKER >= NETPOLL_DATA_RESERVED_MIN);

/// One event (thesis `netpoll_event_t`): which flags fired, and the data word
/// the socket was registered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetpollEvent {
    /// `NETPOLL_*` flags.
    pub events: u32,
    /// The registration's data word.
    pub data: u64,
}

/// A polling context (thesis `netpoll_t`).
pub struct Netpoll {
    poll: Poll,
    mio_events: Events,
    max_events: usize,
    waker: Arc<Waker>,
}

impl std::fmt::Debug for Netpoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netpoll")
            .field("max_events", &self.max_events)
            .finish()
    }
}

/// Wakes a thread blocked in [`Netpoll::wait`]; it sees an event with data
/// [`NETPOLL_DATA_WAKER`]. Cheap to clone, safe to use from any thread.
#[derive(Clone, Debug)]
pub struct NetpollWaker(Arc<Waker>);

impl NetpollWaker {
    /// Wakes the netpoll's thread. Never blocks (one `write` to an eventfd).
    pub fn wake(&self) {
        if let Err(err) = self.0.wake() {
            // An eventfd write fails only if the counter would overflow, i.e.
            // the thread already has an unread wake-up pending.
            log::debug!("netpoll: wake failed (a wake-up is already pending): {err}");
        }
    }
}

fn interest_of(flags: u32) -> io::Result<Interest> {
    if flags & NETPOLL_ET == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "netpoll: mio is edge-triggered only; register with NETPOLL_ET and drain until WouldBlock",
        ));
    }
    match (flags & NETPOLL_READ != 0, flags & NETPOLL_WRITE != 0) {
        (true, true) => Ok(Interest::READABLE | Interest::WRITABLE),
        (true, false) => Ok(Interest::READABLE),
        (false, true) => Ok(Interest::WRITABLE),
        (false, false) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "netpoll: register for NETPOLL_READ, NETPOLL_WRITE or both",
        )),
    }
}

fn token_of(data: u64) -> Token {
    // Lossless: the crate only builds for 64-bit targets (see lib.rs).
    Token(data as usize)
}

fn timeout_of(timeout_ms: i32) -> Option<Duration> {
    if timeout_ms < 0 {
        None
    } else {
        Some(Duration::from_millis(timeout_ms as u64))
    }
}

impl Netpoll {
    /// Creates a polling context that returns up to `max_events` events per
    /// wait (thesis `netpoll_init`), with its waker registered.
    pub fn init(max_events: usize) -> io::Result<Netpoll> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), token_of(NETPOLL_DATA_WAKER))?);
        let max_events = max_events.max(1);
        Ok(Netpoll {
            poll,
            mio_events: Events::with_capacity(max_events),
            max_events,
            waker,
        })
    }

    /// A handle that wakes this context's [`Netpoll::wait`].
    pub fn waker(&self) -> NetpollWaker {
        NetpollWaker(self.waker.clone())
    }

    /// Most events one wait returns.
    pub fn max_events(&self) -> usize {
        self.max_events
    }

    /// Starts watching socket `s` (thesis `netpoll_add`). `flags` must include
    /// [`NETPOLL_ET`] and at least one of [`NETPOLL_READ`], [`NETPOLL_WRITE`];
    /// `data` comes back with every event; connections use words below
    /// [`NETPOLL_DATA_RESERVED_MIN`], the reserved range above it names the
    /// listener, the waker and the signal pipes.
    ///
    /// If the socket is already ready, the first wait reports it.
    pub fn add(&self, s: &impl AsRawFd, flags: u32, data: u64) -> io::Result<()> {
        debug_assert_ne!(
            data, NETPOLL_DATA_WAKER,
            "netpoll: the waker's data word is taken"
        );
        let fd: RawFd = s.as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), token_of(data), interest_of(flags)?)
    }

    /// Changes what socket `s` is watched for (`EPOLL_CTL_MOD`). If the socket
    /// is ready for the new interest, the next wait reports it.
    pub fn modify(&self, s: &impl AsRawFd, flags: u32, data: u64) -> io::Result<()> {
        let fd: RawFd = s.as_raw_fd();
        self.poll
            .registry()
            .reregister(&mut SourceFd(&fd), token_of(data), interest_of(flags)?)
    }

    /// Stops watching socket `s` (thesis `netpoll_del`).
    pub fn del(&self, s: &impl AsRawFd) -> io::Result<()> {
        let fd: RawFd = s.as_raw_fd();
        self.poll.registry().deregister(&mut SourceFd(&fd))
    }

    /// Sleeps until a watched socket has an event, the waker is woken, or
    /// `timeout_ms` elapses (-1 = forever, 0 = just look), then replaces the
    /// contents of `ret_events` with up to `max_events` events (thesis
    /// `netpoll_wait`). Returns their number; 0 after a timeout or `EINTR`.
    pub fn wait(
        &mut self,
        ret_events: &mut Vec<NetpollEvent>,
        timeout_ms: i32,
    ) -> io::Result<usize> {
        ret_events.clear();
        match self.poll.poll(&mut self.mio_events, timeout_of(timeout_ms)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(err) => return Err(err),
        }
        for ev in self.mio_events.iter() {
            let mut events = 0;
            if ev.is_readable() {
                events |= NETPOLL_READ;
            }
            if ev.is_writable() {
                events |= NETPOLL_WRITE;
            }
            if ev.is_error() {
                events |= NETPOLL_ERR;
            }
            if ev.is_read_closed() || ev.is_write_closed() {
                events |= NETPOLL_HUP;
            }
            ret_events.push(NetpollEvent {
                events,
                data: ev.token().0 as u64,
            });
        }
        Ok(ret_events.len())
    }
}

/// `EINPROGRESS` on Linux, the platform the daemon targets: a non-blocking
/// `connect` that has started (mio's own check uses `libc`'s constant).
const EINPROGRESS: i32 = 115;

/// A non-blocking connect to `addr` from the local address `from` (port
/// chosen by the kernel), ready for [`Netpoll::add`]: the first writable event
/// says it finished. The load client's and the attack tool's, to give each
/// player an address of its own in 127.0.0.0/8.
pub fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> io::Result<mio::net::TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(EINPROGRESS) => {}
        Err(err) => return Err(err),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

/// Binds a non-blocking listening socket with `SO_REUSEADDR` and the given
/// backlog (the socket2 recipe), ready for [`Netpoll::add`].
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<mio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}
