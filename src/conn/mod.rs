//! The connection layer (thesis §3.5.2 `client_t` and its pool, §3.5.3 the
//! shard connections): one pool type for the connections a program accepts
//! and the ones it opens, and (in [`thread`]) one I/O thread that reads both.
//!
//! A [`Pool`] is the main thread's half: a fixed table of slots, each with a
//! 32-bit id renewed on reuse, the connection's output buffer, its
//! incomplete-message buffer and the protocol's session `S`. It does no
//! I/O: it decides, records what is to be done in [`PoolCmd`]s (open a
//! connection, wait for writability, close), and hands its output to a
//! writer at [`Pool::flush`]. The runtime's [`wire::PoolIo`] executes that
//! against real sockets and the I/O thread; a test harness can execute it
//! against memory, which is how the proxy's rules are tested without sockets.
//!
//! A slot's life:
//!
//! ```text
//!  free ──accept──────────▶ open ──disconnect──▶ closing ──closed──▶ free
//!  free ──connect──▶ connecting ──connected──▶ open
//!                        └──────disconnect (refused, timed out)──▶ closing
//! ```
//!
//! Every event names a connection by pool, slot and id ([`ConnRef`]); one that
//! does not match a live slot is stale and dropped. A slot returns to the free
//! list only when its I/O thread confirms it has let go of the socket
//! ([`Pool::closed`]), so no slot ever has two owners.
//!
//! Output follows the thesis: bytes are appended to a slot's `out_buf` and the
//! slot goes on the flush list once (thesis `CL_FLAG_WILL_FLUSH`); the flush
//! at the end of the main loop iteration writes each listed connection with
//! one `write` (thesis `cl_flush`, `shard_flush`). What the socket does not
//! take waits for one writable event (port decision). A connection whose
//! queued output passes its limit is a slow reader and is disconnected; the
//! main thread never waits for it.
//!
//! The pool knows no protocol. The session `S` is reset when the slot is
//! taken and handed back when the connection is disconnected
//! ([`Pool::take_disconnected`]), so the protocol layer learns of every
//! disconnect, including the ones the pool decides (slow reader, write
//! error, idle timeout, refused connect) and can tell the other side.

pub mod thread;
pub mod wire;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::com::{ConnRef, HupReason, PoolId, interrupted, would_block};

/// The address of a free slot, and of an outbound one before it connects.
const NO_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Disconnects logged at `info` per second at most; more are counted and
/// summed up in one line.
pub const DISCONNECT_LOG_LINES_PER_TICK: u32 = 20;
/// How long past its connect timeout a connection may stay connecting before
/// the pool gives it up itself: the I/O thread keeps the deadline, this only
/// backs it up (a lost command must not hold a slot forever).
pub const CONNECT_BACKSTOP: Duration = Duration::from_secs(2);

/// Bytes of capacity an empty buffer of an open slot keeps at the tick;
/// beyond, it is given back ([`Pool::tick`]).
pub const BUF_KEEP: usize = 64 * 1024;
/// The same for a free slot.
pub const FREE_BUF_KEEP: usize = 4 * 1024;

/// The protocol state a slot carries. `Default` is the state of a fresh
/// connection; it is dropped (and its keys wiped) when the connection goes.
pub trait Session: Default {
    /// Called just before the connection's output is written, once per
    /// flush: the place to seal an open encrypted frame.
    fn before_flush(&mut self, _out: &mut Vec<u8>) {}
}

impl Session for () {}

/// Why the main thread disconnects a connection; shown in its log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The I/O thread stopped reading (peer closed, socket error), or could
    /// not open the connection.
    Hup(HupReason),
    /// Queued output passed the connection's limit.
    SlowReader,
    /// Nothing received for the pool's idle timeout.
    IdleTimeout,
    /// A write to the socket failed.
    WriteError(io::ErrorKind),
    /// The peer broke a protocol rule (the text says which).
    Protocol(String),
    /// The peer reached one of the proxy's limits (the text says which: a
    /// rate, a budget, a backed-up link).
    Limit(&'static str),
    /// The protocol layer ended the connection for a reason that is not the
    /// peer's fault (its shard went away, it logged out, ...).
    Closed(&'static str),
    /// The program is shutting down.
    Shutdown,
}

impl DisconnectReason {
    /// The kinds of reason, as the metrics name them (`reason` label).
    pub const KINDS: [&'static str; 9] = [
        "hangup",
        "slow_reader",
        "idle_timeout",
        "write_error",
        "protocol",
        "limit",
        "closed",
        "shutdown",
        "stalled",
    ];

    /// The kernel gave up on the peer (see [`crate::com::STALL_TEXT`]),
    /// whether the read or the write saw it first.
    pub fn is_stall(&self) -> bool {
        match self {
            DisconnectReason::Hup(hup) => hup.is_stall(),
            DisconnectReason::WriteError(kind) => *kind == io::ErrorKind::TimedOut,
            _ => false,
        }
    }

    /// This reason's index in [`DisconnectReason::KINDS`].
    pub fn kind(&self) -> usize {
        match self {
            _ if self.is_stall() => 8,
            DisconnectReason::Hup(_) => 0,
            DisconnectReason::SlowReader => 1,
            DisconnectReason::IdleTimeout => 2,
            DisconnectReason::WriteError(_) => 3,
            DisconnectReason::Protocol(_) => 4,
            DisconnectReason::Limit(_) => 5,
            DisconnectReason::Closed(_) => 6,
            DisconnectReason::Shutdown => 7,
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Hup(reason) => write!(f, "{reason}"),
            _ if self.is_stall() => f.write_str(crate::com::STALL_TEXT),
            DisconnectReason::SlowReader => f.write_str("output buffer full (slow reader)"),
            DisconnectReason::IdleTimeout => f.write_str("idle timeout"),
            DisconnectReason::WriteError(kind) => write!(f, "write failed: {kind}"),
            DisconnectReason::Protocol(what) => write!(f, "protocol violation: {what}"),
            DisconnectReason::Limit(what) => write!(f, "limit reached: {what}"),
            DisconnectReason::Closed(why) => f.write_str(why),
            DisconnectReason::Shutdown => f.write_str("shutting down"),
        }
    }
}

/// Where an outbound connection goes: an address, or a name the I/O thread
/// resolves (on a short-lived thread: resolving blocks) at every attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An address; nothing to resolve.
    Addr(SocketAddr),
    /// A DNS name and a port.
    Name {
        /// The name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl Target {
    /// `Addr` if `host` is an IP address, `Name` otherwise.
    pub fn new(host: &str, port: u16) -> Target {
        match host.parse::<IpAddr>() {
            Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
            Err(_) => Target::Name {
                host: host.to_string(),
                port,
            },
        }
    }
}

/// What the pool asks of the outside world, executed at the end of the
/// iteration (by [`wire::PoolIo`] at run time).
#[derive(Debug, PartialEq, Eq)]
pub enum PoolCmd {
    /// Open an outbound connection for this slot, giving up at `deadline`;
    /// the answer is [`Pool::connected`] or [`Pool::hup`].
    Connect {
        /// The slot.
        conn: ConnRef,
        /// Where to.
        target: Target,
        /// When to give up.
        deadline: Instant,
    },
    /// Report once when the socket can take more output ([`Pool::writable`]).
    WantWrite {
        /// The connection.
        conn: ConnRef,
    },
    /// Shut the socket down and let go of it; the I/O thread confirms with
    /// [`Pool::closed`].
    Close {
        /// The connection.
        conn: ConnRef,
    },
}

/// What a pool needs to know, from `proxy.cfg` or a reference program's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolCfg {
    /// Slots in the pool.
    pub max_conns: u32,
    /// Most bytes queued per connection (a listener may set its own).
    pub out_buf_size: usize,
    /// A connection that sends nothing this long is disconnected; `None`
    /// turns it off.
    pub idle_timeout: Option<Duration>,
    /// How long an outbound connection may take to open.
    pub connect_timeout: Duration,
}

/// Where a slot is in its life (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Connecting,
    Open,
    /// Disconnected; the I/O thread has not yet let go of the socket. Until the
    /// flush, `write_last` says whether its queued output may still go out;
    /// with `linger_until` (a lingering close) the socket is kept until all
    /// of it is written or that time comes.
    Closing {
        write_last: bool,
        linger_until: Option<Instant>,
    },
}

/// How a connection came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Accepted by listener `n` of the pool's I/O thread.
    Listener(u32),
    /// Opened by the program ([`Pool::connect`]).
    Outbound,
}

/// One slot (thesis `client_t`): the main thread's half of a connection. The
/// read side lives on the I/O thread.
#[derive(Debug)]
pub struct Slot<S> {
    id: u32,
    state: SlotState,
    origin: Origin,
    /// The TCP peer (an outbound connection's, once connected).
    peer: SocketAddr,
    /// The effective address: the peer's, unless a stage learned the real
    /// client's from a forwarder (see [`Pool::set_addr`]).
    addr: SocketAddr,
    /// Incomplete messages, for the protocol layer (thesis `in_buf`); it keeps
    /// it within its own limit.
    pub in_buf: Vec<u8>,
    /// The protocol layer's state for this connection (thesis: `cryptchan`,
    /// `shard`, `client_info`).
    pub session: S,
    /// Queued output (thesis `out_buf`); the bytes before `out_pos` are
    /// already written.
    out_buf: Vec<u8>,
    out_pos: usize,
    /// Most bytes queued (the listener's limit, or the pool's).
    out_max: usize,
    /// On the flush list (thesis `CL_FLAG_WILL_FLUSH`).
    will_flush: bool,
    /// Output waits for a writable event (port decision).
    want_write: bool,
    last_read_at: Instant,
    /// How long the unit of output at the front of some bytes is, for a
    /// protocol whose output may take a unit ahead of what is queued
    /// ([`Pool::set_units`]); `None`: output is a plain byte stream.
    unit_len: Option<UnitLen>,
    /// With `unit_len`: where in `out_buf` the first unit not yet begun to
    /// be written starts (at or after `out_pos`).
    out_boundary: usize,
    /// An outbound connection's deadline to connect, from its start.
    connect_timeout: Duration,
}

/// The length of the unit of output at the front of `bytes` (an OTC frame),
/// `None` if they do not hold a whole one.
pub type UnitLen = fn(&[u8]) -> Option<usize>;

impl<S> Slot<S> {
    fn is_live(&self, id: u32) -> bool {
        self.id == id && matches!(self.state, SlotState::Open | SlotState::Connecting)
    }

    /// Bytes queued and not yet written.
    pub fn out_len(&self) -> usize {
        self.out_buf.len() - self.out_pos
    }

    /// Gives back what a burst made the buffers grow to, once they are
    /// empty (a slot keeps its capacity between reads and flushes, so
    /// without this a flood's high-water mark would stay for good).
    fn shrink_idle_buffers(&mut self) {
        // An open slot keeps up to 64 KiB, as its traffic may need it again
        // at once. A free slot keeps a buffer only if an ordinary connection
        // left it (at most 4 KiB, what the next occupant will need too); one
        // that a burst grew, and every buffer of a free outbound slot (an
        // OTC session's game connection: it lives as long as its session,
        // so reuse saves little), is given back whole: a flood that passes
        // through many slots leaves none of them holding memory.
        let keep = match (self.state, self.origin) {
            (SlotState::Free, Origin::Outbound) => 0,
            (SlotState::Free, Origin::Listener(_)) => FREE_BUF_KEEP,
            _ => BUF_KEEP,
        };
        let free = self.state == SlotState::Free;
        for buf in [&mut self.out_buf, &mut self.in_buf] {
            if buf.is_empty() && buf.capacity() > keep {
                if free {
                    *buf = Vec::new();
                } else {
                    buf.shrink_to(keep);
                }
            }
        }
    }

    /// After a partial write: moves the unit boundary past every unit whose
    /// writing has begun. Without units the boundary stays at `out_pos`.
    fn pass_written_units(&mut self) {
        let Some(unit_len) = self.unit_len else {
            self.out_boundary = self.out_pos;
            return;
        };
        while self.out_boundary < self.out_pos {
            match unit_len(&self.out_buf[self.out_boundary..]) {
                Some(n) if n > 0 => self.out_boundary += n,
                // Not units after all (a bug of the protocol layer): nothing
                // may go ahead of the rest.
                _ => self.out_boundary = self.out_buf.len(),
            }
        }
    }

    /// The connection's effective address (see [`Pool::set_addr`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TCP peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// How the connection came to be.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// True once an outbound connection is established (always, for an
    /// accepted one).
    pub fn is_open(&self) -> bool {
        self.state == SlotState::Open
    }

    /// The session and the output buffer at once, for a protocol step that
    /// reads one and appends to the other. Only append to the buffer (its
    /// front may hold bytes already written); then call [`Pool::wrote`].
    pub fn session_and_out(&mut self) -> (&mut S, &mut Vec<u8>) {
        (&mut self.session, &mut self.out_buf)
    }
}

/// A connection the pool disconnected, with the session it had.
#[derive(Debug)]
pub struct Disconnected<S> {
    /// Which connection.
    pub conn: ConnRef,
    /// Its effective address.
    pub addr: SocketAddr,
    /// How it came to be.
    pub origin: Origin,
    /// Its protocol state at the time.
    pub session: S,
    /// Why.
    pub reason: DisconnectReason,
}

/// Counters for logs and, later, metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections accepted into a slot.
    pub accepted: u64,
    /// Outbound connections established.
    pub connected: u64,
    /// Connections refused because the pool (or their listener) was full.
    pub refused_full: u64,
    /// Disconnects, all reasons.
    pub disconnected: u64,
    /// Disconnects of slow readers.
    pub slow_readers: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Disconnects by kind of reason, indexed as [`DisconnectReason::KINDS`].
    pub by_reason: [u64; DisconnectReason::KINDS.len()],
}

/// One listener's own limits (see [`Pool::set_listener_limits`]).
#[derive(Clone, Copy, Debug, Default)]
struct ListenerLimits {
    /// Most bytes queued per connection; the pool's if `None`.
    out_max: Option<usize>,
    /// Most slots its connections hold at once; no limit but the pool's if
    /// `None`.
    max_conns: Option<u32>,
    /// Slots its connections hold now (from accept until the slot is free).
    open: u32,
}

/// The main thread's connection pool (thesis: the client pool with its free
/// list and flush list; here also the shard connections).
#[derive(Debug)]
pub struct Pool<S: Session> {
    id: PoolId,
    slots: Vec<Slot<S>>,
    /// Free slot indices; a stack, so recently used slots are reused first.
    free: Vec<u32>,
    /// Slots disconnected whose close the I/O thread has not confirmed.
    n_closing: usize,
    /// Of those, the lingering closes still writing.
    n_lingering: usize,
    next_id: u32,
    /// Connections with output to write this iteration (thesis flush list).
    flush_list: Vec<u32>,
    flush_spare: Vec<u32>,
    /// Connections disconnected since the last flush, whose sockets are to be
    /// closed.
    closing: Vec<ConnRef>,
    /// Disconnects not yet taken by the protocol layer; at most one per slot.
    disconnected: Vec<Disconnected<S>>,
    /// Work for the outside world, taken at the flush.
    commands: Vec<PoolCmd>,
    listeners: Vec<ListenerLimits>,
    cfg: PoolCfg,
    refused_since_tick: u64,
    refused_by_listener_since_tick: u64,
    /// Disconnect lines still allowed this tick, and those held back.
    log_budget: u32,
    log_suppressed: u64,
    stats: PoolStats,
}

impl<S: Session> Pool<S> {
    /// A pool of `cfg.max_conns` free slots. A slot's buffers grow as its
    /// occupants need and keep their capacity for the next ones.
    pub fn new(id: PoolId, cfg: &PoolCfg, now: Instant) -> Pool<S> {
        let n = cfg.max_conns;
        Pool {
            id,
            slots: (0..n)
                .map(|_| Slot {
                    id: 0,
                    state: SlotState::Free,
                    origin: Origin::Outbound,
                    peer: NO_ADDR,
                    addr: NO_ADDR,
                    in_buf: Vec::new(),
                    session: S::default(),
                    out_buf: Vec::new(),
                    out_pos: 0,
                    out_max: cfg.out_buf_size,
                    will_flush: false,
                    want_write: false,
                    last_read_at: now,
                    unit_len: None,
                    out_boundary: 0,
                    connect_timeout: cfg.connect_timeout,
                })
                .collect(),
            free: (0..n).rev().collect(),
            n_closing: 0,
            n_lingering: 0,
            next_id: 1,
            flush_list: Vec::with_capacity(n as usize),
            flush_spare: Vec::with_capacity(n as usize),
            closing: Vec::new(),
            disconnected: Vec::new(),
            commands: Vec::new(),
            listeners: Vec::new(),
            cfg: *cfg,
            refused_since_tick: 0,
            refused_by_listener_since_tick: 0,
            log_budget: DISCONNECT_LOG_LINES_PER_TICK,
            log_suppressed: 0,
            stats: PoolStats::default(),
        }
    }

    /// New idle and connect timeouts (a reload): the idle one from the next
    /// tick, the connect one from the next connect.
    pub fn set_timeouts(&mut self, idle: Option<Duration>, connect: Duration) {
        self.cfg.idle_timeout = idle;
        self.cfg.connect_timeout = connect;
    }

    /// Which pool this is.
    pub fn id(&self) -> PoolId {
        self.id
    }

    /// Gives the connections of one listener their own limits, for a program
    /// serving two kinds of peers from one pool (the shard: its proxy links
    /// may queue megabytes, its direct players less; and players, on a public
    /// listener, must not be able to take the slots its links need).
    pub fn set_listener_limits(&mut self, listener: u32, out_buf_size: usize, max_conns: u32) {
        let limits = self.listener_mut(listener);
        limits.out_max = Some(out_buf_size);
        limits.max_conns = Some(max_conns);
    }

    fn listener_mut(&mut self, listener: u32) -> &mut ListenerLimits {
        let i = listener as usize;
        if self.listeners.len() <= i {
            self.listeners.resize(i + 1, ListenerLimits::default());
        }
        &mut self.listeners[i]
    }

    /// Counters so far.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Slots taken (connecting, open or closing).
    pub fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Slots held by live connections: in use, less those closing.
    pub fn n_live(&self) -> usize {
        self.in_use() - self.n_closing
    }

    /// Slots free for new connections.
    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    /// Takes a free slot with a new id, or `None` if the pool is full.
    fn take_slot(&mut self, origin: Origin, peer: SocketAddr, now: Instant) -> Option<ConnRef> {
        let index = self.free.pop()?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let out_max = match origin {
            Origin::Listener(l) => self.listener_mut(l).out_max,
            Origin::Outbound => None,
        }
        .unwrap_or(self.cfg.out_buf_size);
        let slot = &mut self.slots[index as usize];
        debug_assert_eq!(slot.state, SlotState::Free);
        debug_assert!(slot.out_buf.is_empty() && slot.in_buf.is_empty());
        // Buffers are not sized up front: a slot's buffers grow to what its
        // occupants needed (its high-water mark, within the limits) and keep
        // that capacity, so a connection costs the memory it uses and steady
        // traffic allocates nothing.
        slot.id = id;
        slot.origin = origin;
        slot.peer = peer;
        slot.addr = peer;
        slot.out_max = out_max;
        slot.last_read_at = now;
        slot.unit_len = None;
        slot.out_boundary = 0;
        slot.session = S::default();
        Some(ConnRef {
            pool: self.id,
            index,
            id,
        })
    }

    /// Handles `EVENT_ACCEPT_CLIENT` (thesis `cl_accept`): gives the connection
    /// a slot and a new id, or refuses it (the caller drops the socket) when
    /// the pool or its listener is full. The caller may refuse it first
    /// (thesis: "if the IP address is not in a list of allowed IP addresses").
    pub fn accept(&mut self, listener: u32, peer: SocketAddr, now: Instant) -> Option<ConnRef> {
        let limits = *self.listener_mut(listener);
        if limits.max_conns.is_some_and(|max| limits.open >= max) {
            self.refused_by_listener_since_tick += 1;
            self.stats.refused_full += 1;
            return None;
        }
        let Some(conn) = self.take_slot(Origin::Listener(listener), peer, now) else {
            // Logged once per tick, not per connection: a flood must not also
            // flood the log.
            self.refused_since_tick += 1;
            self.stats.refused_full += 1;
            return None;
        };
        self.listener_mut(listener).open += 1;
        self.slots[conn.index as usize].state = SlotState::Open;
        self.stats.accepted += 1;
        debug!("{conn}: accepted {peer} (id {})", conn.id);
        Some(conn)
    }

    /// Opens an outbound connection to `target` in a new slot; `None` if the
    /// pool is full. The I/O thread connects without blocking and answers
    /// with [`Pool::connected`], or with [`Pool::hup`] when every address
    /// refused or the connect timeout passed. Output queued meanwhile is
    /// written once it is connected.
    pub fn connect(&mut self, target: Target, now: Instant) -> Option<ConnRef> {
        self.connect_within(target, self.cfg.connect_timeout, now)
    }

    /// [`Pool::connect`] with a deadline of its own (a game server's, not
    /// the pool's shard links').
    pub fn connect_within(
        &mut self,
        target: Target,
        timeout: Duration,
        now: Instant,
    ) -> Option<ConnRef> {
        // Until it connects, a connection is known by its target's address
        // (a name's is learned then).
        let peer = match &target {
            Target::Addr(addr) => *addr,
            Target::Name { .. } => NO_ADDR,
        };
        let conn = self.take_slot(Origin::Outbound, peer, now)?;
        let slot = &mut self.slots[conn.index as usize];
        slot.state = SlotState::Connecting;
        slot.connect_timeout = timeout;
        self.commands.push(PoolCmd::Connect {
            conn,
            target,
            deadline: now + timeout,
        });
        Some(conn)
    }

    /// Handles `EVENT_CONNECT_*`: the outbound connection is open. False if
    /// it was given up meanwhile (the caller drops the socket).
    pub fn connected(&mut self, conn: ConnRef, peer: SocketAddr, now: Instant) -> bool {
        let Some(slot) = self.slots.get_mut(conn.index as usize) else {
            return false;
        };
        if slot.id != conn.id || slot.state != SlotState::Connecting {
            return false;
        }
        slot.state = SlotState::Open;
        slot.peer = peer;
        slot.addr = peer;
        slot.last_read_at = now;
        self.stats.connected += 1;
        self.schedule_flush(conn.index);
        true
    }

    /// The live (connecting or open) connection `conn` names, if the
    /// reference is not stale.
    pub fn get(&self, conn: ConnRef) -> Option<&Slot<S>> {
        self.slots
            .get(conn.index as usize)
            .filter(|slot| slot.is_live(conn.id))
    }

    /// As [`Pool::get`], mutable.
    pub fn get_mut(&mut self, conn: ConnRef) -> Option<&mut Slot<S>> {
        self.slots
            .get_mut(conn.index as usize)
            .filter(|slot| slot.is_live(conn.id))
    }

    /// Every live connection, with its reference.
    pub fn iter_live(&self) -> impl Iterator<Item = (ConnRef, &Slot<S>)> {
        let pool = self.id;
        self.slots
            .iter()
            .enumerate()
            .filter_map(move |(index, slot)| {
                slot.is_live(slot.id).then_some((
                    ConnRef {
                        pool,
                        index: index as u32,
                        id: slot.id,
                    },
                    slot,
                ))
            })
    }

    /// Sets the connection's effective address: the one its admission
    /// checks, limits and logs use, when an early stage learned the real
    /// client's address (a forwarder's PROXY protocol header).
    pub fn set_addr(&mut self, conn: ConnRef, addr: SocketAddr) {
        if let Some(slot) = self.get_mut(conn) {
            slot.addr = addr;
        }
    }

    /// Handles `EVENT_READ_*` (thesis `cl_read`, `shard_read`): checks that the
    /// event is not stale and notes the activity. Returns the connection's
    /// slot for the protocol layer, or `None` for a stale event (the caller
    /// drops the data).
    pub fn read(&mut self, conn: ConnRef, num_bytes: usize, now: Instant) -> Option<&mut Slot<S>> {
        let slot = self.slots.get_mut(conn.index as usize)?;
        if slot.id != conn.id || slot.state != SlotState::Open {
            return None;
        }
        slot.last_read_at = now;
        self.stats.bytes_in += num_bytes as u64;
        Some(slot)
    }

    /// [`Pool::read`] for the frame driver: notes the activity and lends out
    /// the connection's incomplete-message buffer, so that the protocol layer
    /// can reach every table (this pool included) while it handles the
    /// units. Give it back with [`Pool::end_read`], whatever happened
    /// meanwhile.
    pub fn begin_read(&mut self, conn: ConnRef, num_bytes: usize, now: Instant) -> Option<Vec<u8>> {
        self.read(conn, num_bytes, now)
            .map(|slot| std::mem::take(&mut slot.in_buf))
    }

    /// Takes back the buffer [`Pool::begin_read`] lent: kept for the next
    /// read if the connection is still live, or emptied for the slot's next
    /// occupant, so that a slot keeps its capacity either way; then
    /// schedules the flush of what the handlers queued.
    pub fn end_read(&mut self, conn: ConnRef, mut in_buf: Vec<u8>) {
        let Some(slot) = self.slots.get_mut(conn.index as usize) else {
            return;
        };
        // A slot is freed only by an event, never during a read.
        debug_assert_eq!(slot.id, conn.id, "the slot changed hands during a read");
        if !slot.is_live(conn.id) {
            in_buf.clear();
        }
        slot.in_buf = in_buf;
        self.wrote(conn);
    }

    /// After the protocol layer appended to a connection's output (through
    /// [`Slot::session_and_out`]): schedules the flush, and disconnects a
    /// slow reader whose queue passed its limit. Returns false if the
    /// connection is not live or was just dropped.
    pub fn wrote(&mut self, conn: ConnRef) -> bool {
        let Some(slot) = self.get_mut(conn) else {
            return false;
        };
        if slot.out_len() > slot.out_max {
            self.stats.slow_readers += 1;
            self.disconnect(conn, DisconnectReason::SlowReader);
            return false;
        }
        self.schedule_flush(conn.index);
        true
    }

    /// Lets `f` write to a live connection's output with its session at hand,
    /// then does what [`Pool::wrote`] does. `None` if the connection is not
    /// live or was dropped as a slow reader.
    pub fn write<R>(
        &mut self,
        conn: ConnRef,
        f: impl FnOnce(&mut S, &mut Vec<u8>) -> R,
    ) -> Option<R> {
        let slot = self.get_mut(conn)?;
        let result = f(&mut slot.session, &mut slot.out_buf);
        self.wrote(conn).then_some(result)
    }

    /// Bytes a live connection's output may still take before it passes its
    /// limit (`None` if it is not live).
    pub fn out_room(&self, conn: ConnRef) -> Option<usize> {
        self.get(conn)
            .map(|slot| slot.out_max.saturating_sub(slot.out_len()))
    }

    /// Queues `bytes` for the connection (thesis `cl_forward_shard_packet`).
    /// Returns false if it is not live, or would pass its limit and was
    /// disconnected as a slow reader.
    pub fn send(&mut self, conn: ConnRef, bytes: &[u8]) -> bool {
        let Some(slot) = self.get_mut(conn) else {
            return false;
        };
        if slot.out_len() + bytes.len() > slot.out_max {
            self.stats.slow_readers += 1;
            self.disconnect(conn, DisconnectReason::SlowReader);
            return false;
        }
        slot.out_buf.extend_from_slice(bytes);
        self.schedule_flush(conn.index);
        true
    }

    /// Says that the connection's output is a sequence of units `unit_len`
    /// can measure, so [`Pool::send_ahead`] can put one in front of the
    /// queue without splitting another.
    pub fn set_units(&mut self, conn: ConnRef, unit_len: UnitLen) {
        if let Some(slot) = self.get_mut(conn) {
            slot.unit_len = Some(unit_len);
        }
    }

    /// Gives a connection its own limit of queued output (an outbound one:
    /// the listeners' limits are for accepted ones).
    pub fn set_out_max(&mut self, conn: ConnRef, out_max: usize) {
        if let Some(slot) = self.get_mut(conn) {
            slot.out_max = out_max;
        }
    }

    /// Queues one unit ahead of every unit not yet begun to be written (a
    /// pong ahead of queued data, so a backed-up path still answers pings
    /// in time), or at the end if the connection has no units. Returns false
    /// as [`Pool::send`] does.
    pub fn send_ahead(&mut self, conn: ConnRef, unit: &[u8]) -> bool {
        let Some(slot) = self.get_mut(conn) else {
            return false;
        };
        if slot.unit_len.is_none() || slot.out_len() == 0 {
            return self.send(conn, unit);
        }
        if slot.out_len() + unit.len() > slot.out_max {
            self.stats.slow_readers += 1;
            self.disconnect(conn, DisconnectReason::SlowReader);
            return false;
        }
        let at = slot.out_boundary.max(slot.out_pos);
        slot.out_buf.splice(at..at, unit.iter().copied());
        self.schedule_flush(conn.index);
        true
    }

    /// Puts an open connection with output on the flush list, once.
    fn schedule_flush(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if slot.state == SlotState::Open
            && !slot.will_flush
            && !slot.want_write
            && slot.out_len() > 0
        {
            slot.will_flush = true;
            self.flush_list.push(index);
        }
    }

    /// Handles `EVENT_WRITABLE_*`: the connection can take more output.
    pub fn writable(&mut self, conn: ConnRef) {
        if self.is_lingering(conn) && self.slots[conn.index as usize].want_write {
            // A lingering close: its next write is at the next flush.
            self.slots[conn.index as usize].want_write = false;
            self.closing.push(conn);
            return;
        }
        let Some(slot) = self.get_mut(conn) else {
            return;
        };
        if slot.want_write {
            slot.want_write = false;
            self.schedule_flush(conn.index);
        }
    }

    /// Handles `EVENT_HUP_*`: the I/O thread stopped reading, or could not
    /// open the connection.
    pub fn hup(&mut self, conn: ConnRef, reason: HupReason) {
        // A lingering close whose peer went away: nothing more can be
        // written, so it closes now rather than at its deadline (no
        // writable event would come for it).
        if self.is_lingering(conn) {
            // (On the close list already, or put there now: see end_linger.)
            self.end_linger(conn.index as usize);
            return;
        }
        self.disconnect(conn, DisconnectReason::Hup(reason));
    }

    /// Disconnects a connection (thesis `cl_disconnect`): its session goes to
    /// [`Pool::take_disconnected`] at once; at the flush, what output can go
    /// without waiting is written, the socket shut down so the peer sees it,
    /// and the I/O thread asked to let go. The slot is freed on its
    /// confirmation. Returns false if the connection was not live.
    pub fn disconnect(&mut self, conn: ConnRef, reason: DisconnectReason) -> bool {
        let Some(slot) = self
            .slots
            .get_mut(conn.index as usize)
            .filter(|slot| slot.is_live(conn.id))
        else {
            return false;
        };
        let addr = slot.addr;
        match &reason {
            // Ordinary ends: one line per connection only when debugging.
            DisconnectReason::Hup(_) | DisconnectReason::Shutdown | DisconnectReason::Closed(_)
                if !reason.is_stall() =>
            {
                debug!("{conn} ({addr}): disconnected: {reason}");
            }
            // A rule broken or a limit hit: a clear line, but at most
            // `DISCONNECT_LOG_LINES_PER_TICK` a second; the rest are counted
            // and summed up by `tick`.
            _ if self.log_budget > 0 => {
                self.log_budget -= 1;
                info!("{conn} ({addr}): disconnected: {reason}");
            }
            _ => self.log_suppressed += 1,
        }
        // A last message (an error, a goodbye) goes out at the flush if the
        // socket takes it then; nothing waits for it. Not to a peer that is
        // gone, nor to one that never connected.
        let write_last =
            slot.state == SlotState::Open && !matches!(reason, DisconnectReason::Hup(_));
        slot.session.before_flush(&mut slot.out_buf);
        slot.state = SlotState::Closing {
            write_last,
            linger_until: None,
        };
        self.n_closing += 1;
        slot.want_write = false;
        slot.in_buf.clear();
        let session = std::mem::take(&mut slot.session);
        self.stats.disconnected += 1;
        self.stats.by_reason[reason.kind()] += 1;
        self.closing.push(conn);
        self.disconnected.push(Disconnected {
            conn,
            addr,
            origin: slot.origin,
            session,
            reason,
        });
        true
    }

    /// The connections disconnected since the last call, with their sessions,
    /// so the protocol layer can react (tell the other side). Call after
    /// dispatching events, until empty.
    pub fn take_disconnected(&mut self) -> std::vec::Drain<'_, Disconnected<S>> {
        self.disconnected.drain(..)
    }

    /// True if disconnects wait for [`Pool::take_disconnected`].
    pub fn has_disconnected(&self) -> bool {
        !self.disconnected.is_empty()
    }

    /// Handles `EVENT_CLOSED_*`: the I/O thread let go of the socket, so the
    /// slot is free again.
    pub fn closed(&mut self, conn: ConnRef) {
        let Some(slot) = self.slots.get_mut(conn.index as usize) else {
            return;
        };
        if slot.id != conn.id || !matches!(slot.state, SlotState::Closing { .. }) {
            warn!("{conn}: unexpected close confirmation for id {}", conn.id);
            return;
        }
        debug_assert!(self.n_closing > 0, "a close confirmed with none pending");
        self.n_closing = self.n_closing.saturating_sub(1);
        slot.state = SlotState::Free;
        slot.peer = NO_ADDR;
        slot.addr = NO_ADDR;
        slot.in_buf.clear();
        slot.out_buf.clear();
        slot.out_pos = 0;
        slot.out_boundary = 0;
        slot.will_flush = false;
        // A buffer that once grew past its limit (one write may overshoot it
        // before the check) is not kept that large for the next occupant.
        if slot.out_buf.capacity() > slot.out_max {
            slot.out_buf.shrink_to(slot.out_max);
        }
        if let Origin::Listener(listener) = slot.origin {
            let limits = self.listener_mut(listener);
            debug_assert!(limits.open > 0, "a listener's count would go below 0");
            limits.open = limits.open.saturating_sub(1);
        }
        self.free.push(conn.index);
    }

    /// Once per main-loop tick: idle timeouts, connects past their deadline
    /// that the I/O thread has not given up (a backstop), and one log line
    /// for connections refused since the last tick.
    pub fn tick(&mut self, now: Instant) {
        let pool = self.id.name();
        if self.refused_since_tick > 0 {
            warn!(
                "refused {} connections: all {} {pool} slots in use",
                self.refused_since_tick,
                self.slots.len()
            );
            self.refused_since_tick = 0;
        }
        if self.refused_by_listener_since_tick > 0 {
            warn!(
                "refused {} connections: their listener's own limit is reached",
                self.refused_by_listener_since_tick
            );
            self.refused_by_listener_since_tick = 0;
        }
        if self.log_suppressed > 0 {
            info!(
                "{} more {pool} disconnects not logged (over {DISCONNECT_LOG_LINES_PER_TICK} a second)",
                self.log_suppressed
            );
            self.log_suppressed = 0;
        }
        self.log_budget = DISCONNECT_LOG_LINES_PER_TICK;
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            slot.shrink_idle_buffers();
            let slot = &self.slots[index];
            // `last_read_at` is the time of the accept or the connect, then of
            // the last read.
            let quiet = now.duration_since(slot.last_read_at);
            let reason = match slot.state {
                SlotState::Open if self.cfg.idle_timeout.is_some_and(|t| quiet > t) => {
                    DisconnectReason::IdleTimeout
                }
                SlotState::Connecting if quiet > slot.connect_timeout + CONNECT_BACKSTOP => {
                    DisconnectReason::Hup(HupReason::ConnectTimeout)
                }
                SlotState::Closing {
                    write_last: true,
                    linger_until: Some(until),
                } if now >= until => {
                    self.end_linger(index);
                    continue;
                }
                _ => continue,
            };
            let conn = ConnRef {
                pool: self.id,
                index: index as u32,
                id: slot.id,
            };
            self.disconnect(conn, reason);
        }
    }

    /// Disconnects a connection as [`Pool::disconnect`] does (the protocol
    /// layer hears of it at once), but keeps the socket until its queued
    /// output is written or `until` comes: a lingering close, for the
    /// drain and for the players of a shard removed by a reload. What the
    /// peer sends meanwhile is ignored.
    pub fn disconnect_lingering(
        &mut self,
        conn: ConnRef,
        reason: DisconnectReason,
        until: Instant,
    ) -> bool {
        if !self.disconnect(conn, reason) {
            return false;
        }
        let slot = &mut self.slots[conn.index as usize];
        if let SlotState::Closing {
            write_last: true,
            linger_until,
        } = &mut slot.state
        {
            *linger_until = Some(until);
            self.n_lingering += 1;
        }
        true
    }

    /// A lingering close whose time is up: closed at the next flush, output
    /// or not.
    fn end_linger(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let conn = ConnRef {
            pool: self.id,
            index: index as u32,
            id: slot.id,
        };
        slot.state = SlotState::Closing {
            write_last: false,
            linger_until: None,
        };
        self.n_lingering -= 1;
        // Waiting for a writable event (which a peer that never reads never
        // sends): onto the close list; otherwise it is on it already.
        if slot.want_write {
            slot.want_write = false;
            self.closing.push(conn);
        }
    }

    /// True if `conn` is a lingering close still writing.
    fn is_lingering(&self, conn: ConnRef) -> bool {
        self.slots.get(conn.index as usize).is_some_and(|slot| {
            slot.id == conn.id
                && matches!(
                    slot.state,
                    SlotState::Closing {
                        linger_until: Some(_),
                        ..
                    }
                )
        })
    }

    /// Lingering closes still writing (see [`Pool::disconnect_lingering`]).
    pub fn n_lingering(&self) -> usize {
        self.n_lingering
    }

    /// Bytes queued on live connections, not yet written.
    pub fn out_queued(&self) -> usize {
        self.iter_live().map(|(_, slot)| slot.out_len()).sum()
    }

    /// Disconnects every live connection.
    pub fn disconnect_all(&mut self, reason: DisconnectReason) {
        let live: Vec<ConnRef> = self.iter_live().map(|(conn, _)| conn).collect();
        for conn in live {
            self.disconnect(conn, reason.clone());
        }
    }

    /// Writes the output of every connection on the flush list with one call
    /// of `write` each (thesis `cl_flush`, `shard_flush`), the session
    /// sealing its open frame first ([`Session::before_flush`]); then gives
    /// each connection disconnected since the last flush its last write and
    /// asks for its socket to be closed. `write` is the socket's `write`: it
    /// returns how many bytes it took, or an error (`WouldBlock`: none).
    pub fn flush(&mut self, mut write: impl FnMut(ConnRef, &[u8]) -> io::Result<usize>) {
        let mut list =
            std::mem::replace(&mut self.flush_list, std::mem::take(&mut self.flush_spare));
        for &index in &list {
            self.flush_one(index, &mut write);
        }
        list.clear();
        self.flush_spare = list;
        // After the flush list: a write error there adds to `closing`.
        for conn in std::mem::take(&mut self.closing) {
            let slot = &mut self.slots[conn.index as usize];
            if slot.id != conn.id {
                continue;
            }
            if let SlotState::Closing {
                write_last: true,
                linger_until,
            } = slot.state
            {
                let mut failed = false;
                if slot.out_len() > 0 {
                    match write(conn, &slot.out_buf[slot.out_pos..]) {
                        Ok(n) => {
                            self.stats.bytes_out += n as u64;
                            slot.out_pos += n;
                        }
                        Err(err) => failed = !would_block(&err) && !interrupted(&err),
                    }
                }
                if linger_until.is_some() && slot.out_len() > 0 && !failed {
                    // Lingering: wait for the socket to take more.
                    slot.want_write = true;
                    self.commands.push(PoolCmd::WantWrite { conn });
                    continue;
                }
                if linger_until.is_some() {
                    self.n_lingering -= 1;
                }
                slot.state = SlotState::Closing {
                    write_last: false,
                    linger_until: None,
                };
            }
            self.commands.push(PoolCmd::Close { conn });
        }
    }

    fn flush_one(
        &mut self,
        index: u32,
        write: &mut impl FnMut(ConnRef, &[u8]) -> io::Result<usize>,
    ) {
        let slot = &mut self.slots[index as usize];
        slot.will_flush = false;
        if slot.state != SlotState::Open {
            return;
        }
        let conn = ConnRef {
            pool: self.id,
            index,
            id: slot.id,
        };
        slot.session.before_flush(&mut slot.out_buf);
        if slot.out_len() == 0 {
            return;
        }
        let written = loop {
            match write(conn, &slot.out_buf[slot.out_pos..]) {
                Err(err) if interrupted(&err) => continue,
                result => break result,
            }
        };
        match written {
            Ok(n) => {
                self.stats.bytes_out += n as u64;
                if n == slot.out_len() {
                    slot.out_buf.clear();
                    slot.out_pos = 0;
                    slot.out_boundary = 0;
                    return;
                }
                slot.out_pos += n;
                slot.pass_written_units();
                let before = slot.out_pos;
                compact(&mut slot.out_buf, &mut slot.out_pos);
                slot.out_boundary -= before - slot.out_pos;
            }
            Err(err) if would_block(&err) => {}
            Err(err) => {
                self.disconnect(conn, DisconnectReason::WriteError(err.kind()));
                return;
            }
        }
        // The socket is full: wait for one writable event.
        slot.want_write = true;
        self.commands.push(PoolCmd::WantWrite { conn });
    }

    /// The work recorded for the outside world since the last call, in order.
    pub fn take_commands(&mut self) -> std::vec::Drain<'_, PoolCmd> {
        self.commands.drain(..)
    }
}

/// A pool as the runtime sees it, whatever its sessions: the transport
/// events it handles itself and the flush (so one main loop serves every
/// program's pools; see `runtime`).
pub trait AnyPool {
    /// See [`Pool::connected`].
    fn connected(&mut self, conn: ConnRef, peer: SocketAddr, now: Instant) -> bool;
    /// See [`Pool::writable`].
    fn writable(&mut self, conn: ConnRef);
    /// See [`Pool::hup`].
    fn hup(&mut self, conn: ConnRef, reason: HupReason);
    /// See [`Pool::closed`].
    fn closed(&mut self, conn: ConnRef);
    /// See [`Pool::tick`].
    fn tick(&mut self, now: Instant);
    /// See [`Pool::has_disconnected`].
    fn has_disconnected(&self) -> bool;
    /// See [`Pool::disconnect_all`].
    fn disconnect_all(&mut self, reason: DisconnectReason);
    /// [`Pool::flush`] through a writer behind a reference.
    fn flush_to(&mut self, write: &mut dyn FnMut(ConnRef, &[u8]) -> io::Result<usize>);
    /// See [`Pool::take_commands`].
    fn take_commands(&mut self) -> std::vec::Drain<'_, PoolCmd>;
}

impl<S: Session> AnyPool for Pool<S> {
    fn connected(&mut self, conn: ConnRef, peer: SocketAddr, now: Instant) -> bool {
        Pool::connected(self, conn, peer, now)
    }
    fn writable(&mut self, conn: ConnRef) {
        Pool::writable(self, conn)
    }
    fn hup(&mut self, conn: ConnRef, reason: HupReason) {
        Pool::hup(self, conn, reason)
    }
    fn closed(&mut self, conn: ConnRef) {
        Pool::closed(self, conn)
    }
    fn tick(&mut self, now: Instant) {
        Pool::tick(self, now)
    }
    fn has_disconnected(&self) -> bool {
        Pool::has_disconnected(self)
    }
    fn disconnect_all(&mut self, reason: DisconnectReason) {
        Pool::disconnect_all(self, reason)
    }
    fn flush_to(&mut self, write: &mut dyn FnMut(ConnRef, &[u8]) -> io::Result<usize>) {
        Pool::flush(self, write)
    }
    fn take_commands(&mut self) -> std::vec::Drain<'_, PoolCmd> {
        Pool::take_commands(self)
    }
}

/// After a partial write: once at least half the buffer is written bytes,
/// moves the rest to the front. Each byte is moved at most about once, instead
/// of on every partial write; only called after the session has sealed its
/// frames, so no open frame's offset is invalidated.
fn compact(buf: &mut Vec<u8>, pos: &mut usize) {
    if *pos > 0 && *pos >= buf.len() / 2 {
        buf.drain(..*pos);
        *pos = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_conns: u32) -> Pool<()> {
        Pool::new(
            PoolId::Client,
            &PoolCfg {
                max_conns,
                out_buf_size: 100,
                idle_timeout: Some(Duration::from_secs(1)),
                connect_timeout: Duration::from_secs(2),
            },
            Instant::now(),
        )
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    /// A lingering close: kept while its output does not fit the socket,
    /// closed once it is written, when the peer goes away, or at its
    /// deadline, whichever comes first.
    #[test]
    fn a_lingering_close_ends_when_written_when_the_peer_goes_or_at_its_deadline() {
        let now = Instant::now();
        let until = now + Duration::from_secs(10);
        let full = |_: ConnRef, _: &[u8]| Err(io::ErrorKind::WouldBlock.into());
        let closes = |p: &mut Pool<()>| {
            p.take_commands()
                .filter(|c| matches!(c, PoolCmd::Close { .. }))
                .count()
        };
        // Written at last: closed.
        let mut p = pool(3);
        let a = p.accept(0, peer(), now).unwrap();
        assert!(p.send(a, b"goodbye"));
        assert!(p.disconnect_lingering(a, DisconnectReason::Shutdown, until));
        assert_eq!(
            p.take_disconnected().count(),
            1,
            "the protocol hears at once"
        );
        p.flush(full);
        assert_eq!(
            (p.n_lingering(), closes(&mut p)),
            (1, 0),
            "kept: the socket is full"
        );
        p.writable(a);
        let mut written = Vec::new();
        p.flush(|_, bytes| {
            written.extend_from_slice(bytes);
            Ok(bytes.len())
        });
        assert_eq!(written, b"goodbye");
        assert_eq!((p.n_lingering(), closes(&mut p)), (0, 1));
        // The peer goes away meanwhile: closed at the next flush.
        let b = p.accept(0, peer(), now).unwrap();
        assert!(p.send(b, b"x"));
        p.disconnect_lingering(b, DisconnectReason::Shutdown, until);
        p.flush(full);
        p.hup(b, HupReason::Eof);
        p.flush(full);
        assert_eq!((p.n_lingering(), closes(&mut p)), (0, 1));
        // A peer that never reads: closed at the deadline.
        let c = p.accept(0, peer(), now).unwrap();
        assert!(p.send(c, b"y"));
        p.disconnect_lingering(c, DisconnectReason::Shutdown, until);
        p.flush(full);
        p.tick(until - Duration::from_millis(1));
        p.flush(full);
        assert_eq!((p.n_lingering(), closes(&mut p)), (1, 0), "not yet");
        p.tick(until);
        p.flush(full);
        assert_eq!((p.n_lingering(), closes(&mut p)), (0, 1));
    }

    #[test]
    fn a_slot_is_free_again_only_after_the_close_is_confirmed() {
        let mut p = pool(1);
        let now = Instant::now();
        let a = p.accept(0, peer(), now).unwrap();
        assert!(p.accept(0, peer(), now).is_none(), "one slot only");
        assert!(p.disconnect(a, DisconnectReason::Closed("test")));
        assert!(!p.disconnect(a, DisconnectReason::Closed("twice")));
        p.flush(|_, _| unreachable!("nothing to write"));
        assert_eq!(
            p.take_commands().collect::<Vec<_>>(),
            [PoolCmd::Close { conn: a }]
        );
        assert!(p.accept(0, peer(), now).is_none(), "still closing");
        p.closed(a);
        let b = p.accept(0, peer(), now).unwrap();
        assert_eq!((b.index, b.id), (a.index, a.id + 1), "reused with a new id");
        assert!(!p.send(a, b"stale"), "the old reference is dead");
        assert!(p.send(b, b"new"));
    }

    #[test]
    fn output_is_written_once_per_flush_and_waits_for_writability() {
        let mut p = pool(1);
        let a = p.accept(0, peer(), Instant::now()).unwrap();
        assert!(p.send(a, b"hello "));
        assert!(p.send(a, b"world"));
        let mut writes = Vec::new();
        p.flush(|_, bytes| {
            writes.push(bytes.to_vec());
            Ok(3)
        });
        assert_eq!(writes, [b"hello world".to_vec()], "one write for both");
        assert_eq!(
            p.take_commands().collect::<Vec<_>>(),
            [PoolCmd::WantWrite { conn: a }]
        );
        assert!(p.send(a, b"!"));
        p.flush(|_, _| panic!("waiting for writability"));
        p.writable(a);
        p.flush(|_, bytes| {
            assert_eq!(bytes, b"lo world!");
            Ok(bytes.len())
        });
        assert_eq!(p.get(a).unwrap().out_len(), 0);
    }

    /// Units of a one-byte length and that many bytes, as a test protocol.
    fn unit_len(bytes: &[u8]) -> Option<usize> {
        let n = 1 + usize::from(*bytes.first()?);
        (bytes.len() >= n).then_some(n)
    }

    #[test]
    fn a_unit_sent_ahead_goes_before_every_unit_not_yet_begun_and_splits_none() {
        let mut p = pool(1);
        let a = p.accept(0, peer(), Instant::now()).unwrap();
        p.set_units(a, unit_len);
        assert!(p.send(a, &[3, b'a', b'b', b'c', 2, b'd', b'e']));
        // Two bytes of the first unit go out; the socket is then full.
        p.flush(|_, _| Ok(2));
        assert!(p.send(a, &[1, b'f']));
        assert!(p.send_ahead(a, &[1, b'P']));
        p.writable(a);
        let mut written = Vec::new();
        p.flush(|_, bytes| {
            written.extend_from_slice(bytes);
            Ok(3) // the rest of the first unit and the pong's length byte
        });
        assert_eq!(written, [b'b', b'c', 1, b'P', 2, b'd', b'e', 1, b'f']);
        // The next one goes after the unit being written (the pong, begun),
        // before the two not begun.
        assert!(p.send_ahead(a, &[1, b'Q']));
        p.writable(a);
        let mut rest = Vec::new();
        p.flush(|_, bytes| {
            rest.extend_from_slice(bytes);
            Ok(bytes.len())
        });
        assert_eq!(rest, [b'P', 1, b'Q', 2, b'd', b'e', 1, b'f']);
        // Empty again: at the end, as `send`.
        assert!(p.send_ahead(a, &[1, b'R']));
        assert_eq!(p.get(a).unwrap().out_len(), 2);
    }

    #[test]
    fn a_slow_reader_is_disconnected_and_its_last_bytes_written_once() {
        let mut p = pool(2);
        let a = p.accept(0, peer(), Instant::now()).unwrap();
        assert!(p.send(a, &[1; 60]));
        assert!(!p.send(a, &[2; 60]), "over out_buf_size");
        let gone: Vec<_> = p.take_disconnected().collect();
        assert_eq!(gone[0].reason, DisconnectReason::SlowReader);
        let mut writes = 0;
        p.flush(|_, bytes| {
            writes += 1;
            assert_eq!(bytes.len(), 60);
            Ok(10)
        });
        assert_eq!(writes, 1);
        assert_eq!(p.stats().slow_readers, 1);
    }

    #[test]
    fn an_outbound_connection_queues_output_until_it_is_connected() {
        let mut p = pool(1);
        let now = Instant::now();
        let c = p.connect(Target::new("127.0.0.1", 7), now).unwrap();
        assert!(matches!(
            p.take_commands().next(),
            Some(PoolCmd::Connect { conn, target: Target::Addr(_), .. }) if conn == c
        ));
        assert!(p.send(c, b"early"));
        p.flush(|_, _| panic!("not connected yet"));
        assert!(p.connected(c, peer(), now));
        assert!(!p.connected(c, peer(), now), "only once");
        let mut got = Vec::new();
        p.flush(|_, bytes| {
            got.extend_from_slice(bytes);
            Ok(bytes.len())
        });
        assert_eq!(got, b"early");
        assert_eq!(p.get(c).unwrap().peer(), peer());
    }

    #[test]
    fn a_refused_connect_is_a_disconnect_without_a_last_write() {
        let mut p = pool(1);
        let c = p
            .connect(Target::new("example.org", 7), Instant::now())
            .unwrap();
        p.take_commands().for_each(drop);
        assert!(p.send(c, b"never sent"));
        p.hup(
            c,
            HupReason::ConnectFailed(io::ErrorKind::ConnectionRefused),
        );
        let gone: Vec<_> = p.take_disconnected().collect();
        assert_eq!(gone[0].origin, Origin::Outbound);
        p.flush(|_, _| panic!("nothing goes to a connection that never opened"));
        assert_eq!(
            p.take_commands().collect::<Vec<_>>(),
            [PoolCmd::Close { conn: c }]
        );
        assert!(
            !p.connected(c, peer(), Instant::now()),
            "a late answer is ignored"
        );
    }

    #[test]
    fn a_connect_the_io_thread_never_answers_is_given_up_by_the_backstop() {
        let mut p = pool(1);
        let t0 = Instant::now();
        let c = p.connect(Target::new("127.0.0.1", 7), t0).unwrap();
        assert_eq!(p.get(c).unwrap().addr(), "127.0.0.1:7".parse().unwrap());
        p.tick(t0 + Duration::from_secs(2) + CONNECT_BACKSTOP);
        assert!(
            p.get(c).is_some(),
            "not before its deadline and the backstop"
        );
        p.tick(t0 + Duration::from_secs(2) + CONNECT_BACKSTOP + Duration::from_millis(1));
        let gone: Vec<_> = p.take_disconnected().collect();
        assert_eq!(
            gone[0].reason,
            DisconnectReason::Hup(HupReason::ConnectTimeout)
        );
    }

    #[test]
    fn idle_connections_time_out_and_listener_limits_hold() {
        let mut p = pool(4);
        p.set_listener_limits(1, 10, 1);
        let start = Instant::now();
        let a = p.accept(0, peer(), start).unwrap();
        let b = p.accept(1, peer(), start).unwrap();
        assert!(p.accept(1, peer(), start).is_none(), "listener 1 holds one");
        assert!(!p.send(b, &[0; 11]), "listener 1's own out_buf_size");
        p.read(a, 1, start + Duration::from_millis(900));
        p.tick(start + Duration::from_millis(1500));
        assert!(p.get(a).is_some(), "read 0.6 s ago");
        p.tick(start + Duration::from_millis(2000));
        assert!(p.get(a).is_none(), "idle for 1.1 s");
    }

    #[test]
    fn a_stall_is_one_reason_whether_the_read_or_the_write_saw_it() {
        let timed_out = io::ErrorKind::TimedOut;
        let read = DisconnectReason::Hup(HupReason::Error(timed_out));
        let write = DisconnectReason::WriteError(timed_out);
        for reason in [&read, &write] {
            assert!(reason.is_stall());
            assert_eq!(DisconnectReason::KINDS[reason.kind()], "stalled");
            assert_eq!(reason.to_string(), crate::com::STALL_TEXT);
        }
        let reset = DisconnectReason::Hup(HupReason::Error(io::ErrorKind::ConnectionReset));
        assert!(!reset.is_stall());
        assert_eq!(DisconnectReason::KINDS[reset.kind()], "hangup");
        let broken = DisconnectReason::WriteError(io::ErrorKind::BrokenPipe);
        assert_eq!(DisconnectReason::KINDS[broken.kind()], "write_error");
    }
}
