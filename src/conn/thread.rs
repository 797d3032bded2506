//! The I/O thread (thesis §3.4.3, §3.5.2 `cl_start`, §3.5.3 `shard_start`):
//! it sleeps in `netpoll_wait`, accepts, opens the connections the main
//! thread asks for, reads, and posts everything as events to the main
//! thread. It never decides anything: the main thread owns the pools and all
//! protocol state. The client thread and the shard thread are two of these,
//! one per [`PoolId`]: the client thread with the listeners, the shard thread
//! with the connections the program opens.
//!
//! What the thread owns: its netpoll, its listeners and signal pipes, and one
//! `Conn` per slot of its pool that the main thread handed it (the read
//! side of `client_t`). What it shares: each socket, through an `Arc` (the
//! main thread writes to it), the event buffer it pushes into, and the
//! command queue it drains.
//!
//! Commands from the main thread ([`IoCmd`]) arrive through an [`EventBuf`]
//! and a netpoll waker:
//! - `Add` hands over an accepted socket under its slot and id; the thread
//!   registers it. Registering here, not on the main thread, means no
//!   readiness edge can arrive before the thread knows the socket.
//! - `Connect` opens a connection without blocking: `connect` returns at once
//!   (`EINPROGRESS`), the socket is registered, and its first writable (or
//!   error) edge says whether it connected; a refused address gives way to
//!   the next one the name resolved to, and a connection not made by its
//!   deadline is given up (`EVENT_HUP_*` with `ConnectTimeout`). A name is
//!   resolved on a short-lived thread (`getaddrinfo` blocks): one lookup per
//!   name at a time, which every connect to that name waits for, and at most
//!   [`RESOLVERS_MAX`] names at once, so a hung DNS server costs one thread,
//!   not one per attempt; addresses need none. Thousands of connects can be
//!   in flight at once with no thread each.
//! - `WantWrite` arms a one-shot write interest: the next writable edge becomes
//!   one `EVENT_WRITABLE_*` and the interest goes back to read-only.
//! - `Del` drops the thread's handle to the socket and confirms with
//!   `EVENT_CLOSED_*`; only then may the main thread reuse the slot.
//! - `Stop` ends the thread.
//!
//! At most one `Add` or `Connect`, one `WantWrite` and one `Del` per slot,
//! and one `Resolved` per lookup in flight, are ever queued, so a queue of
//! `3 * max_conns + RESOLVERS_MAX + 1` never fills and the main thread's
//! `try_push` never fails (**invariant**).
//!
//! Reads are edge-triggered: a readable connection goes on a ready list and
//! is read until `WouldBlock` or a short read (which shows the socket
//! drained: later data brings a new edge), at most `reads_per_wakeup` times
//! per turn so one fast sender cannot starve the rest; a connection left with
//! data stays on the list and the next wait does not sleep. Each read goes
//! into a scratch buffer and is copied into a secpool block of the read's
//! size (thesis §3.4.4). Events are collected and pushed in batches of up to
//! `runtime.io_batch_max`, one lock round trip per batch.
//!
//! A connection's reads waiting for the main thread are bounded too
//! ([`ReadAhead`], `client.read_ahead_max`): past the bound the thread stops
//! reading that one connection, which lets TCP push back on that one peer,
//! until the main thread has handled enough of its reads and wakes the
//! thread. So one sender as fast as the network (a flooder) holds at most
//! that much of the event buffer, and the others' reads are not queued
//! behind a backlog of its.
//!
//! The thread blocks in two places only: `netpoll_wait` and `event_push`
//! (**invariant**). When the main thread falls behind, the full event buffer
//! stops this thread, which stops reading, which lets TCP push back on peers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use mio::net::{TcpListener, TcpStream, UnixStream};

use crate::com::{
    ComEventBuf, ConnRef, Event, FOREVER, HupReason, LogLimit, NETPOLL_DATA_RESERVED_MIN, PoolId,
    interrupted, would_block,
};
use crate::conn::Target;
use crate::event_buf::{Closed, EventBuf, TryPushError};
use crate::netpoll::{
    NETPOLL_DATA_WAKER, NETPOLL_ERR, NETPOLL_ET, NETPOLL_HUP, NETPOLL_READ, NETPOLL_WRITE, Netpoll,
    NetpollEvent, NetpollWaker,
};
use crate::secpool::Secpool;

/// Data word of the first listening socket; listener `i` is `LISTENER_DATA + i`.
/// (The thesis marks its one listener with `0xFFFFFFFFFFFFFFFF`; with several
/// listeners, signal pipes and a waker, the top 256 words are reserved.)
pub const LISTENER_DATA: u64 = NETPOLL_DATA_RESERVED_MIN;
/// Data word of the first signal pipe; pipe `i` is `SIGNAL_DATA + i`.
pub const SIGNAL_DATA: u64 = LISTENER_DATA + MAX_LISTENERS as u64;
/// TCP keepalive of outbound connections: the first probe after this long
/// idle, then one every [`KEEPALIVE_INTERVAL`], and the connection is dead
/// after [`KEEPALIVE_PROBES`] unanswered (about a minute in all). The shard
/// link's own heartbeat (`shard.heartbeat_ms`) finds a dead shard sooner;
/// this catches what a process cannot: a peer host gone.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_PROBES: u32 = 3;

/// Most listeners and most signal pipes one I/O thread polls.
pub const MAX_LISTENERS: usize = 64;
/// Most names being looked up at once on one I/O thread; a connect to yet
/// another name fails at once rather than start one more thread (hung DNS
/// must not pile up threads).
pub const RESOLVERS_MAX: usize = 16;
/// How long accepting pauses after an error such as `EMFILE` (out of file
/// descriptors), which would otherwise leave the listener ready forever.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Most commands handled per wake-up; more wait for the next turn (the thread
/// wakes itself), so a busy main thread cannot keep it from reading.
const COMMANDS_PER_WAKEUP: usize = 1024;

/// A command from the main thread to an I/O thread.
#[derive(Debug)]
pub enum IoCmd {
    /// Start reading this accepted socket, which now owns slot `conn`.
    Add {
        /// Slot and id.
        conn: ConnRef,
        /// The socket; the main thread keeps the other handle to write.
        stream: Arc<TcpStream>,
    },
    /// Open a connection for slot `conn` (see the module docs).
    Connect {
        /// Slot and id.
        conn: ConnRef,
        /// Where to.
        target: Target,
        /// Given up at this time.
        deadline: Instant,
    },
    /// A name lookup finished (sent by the resolver thread itself).
    Resolved {
        /// The name looked up.
        host: String,
        /// The port the connections want.
        port: u16,
        /// The addresses, or why there are none.
        result: io::Result<Vec<SocketAddr>>,
    },
    /// Post one `EVENT_WRITABLE_*` when the socket can take more output.
    WantWrite {
        /// The connection.
        conn: ConnRef,
    },
    /// Stop reading, drop the socket handle, confirm with `EVENT_CLOSED_*`.
    Del {
        /// The connection.
        conn: ConnRef,
    },
    /// Stop accepting: close every listener (the drain on SIGTERM). New
    /// connections are then refused by the kernel, so a forwarder tries its
    /// next server at once.
    Unlisten,
    /// End the thread.
    Stop,
}

/// The per-wake-up bounds a reload may change (`client.reads_per_wakeup`,
/// `client.accepts_per_wakeup`, `shard.reads_per_wakeup`), read by the I/O
/// thread at each use. Atomics, not a command: a command could not be
/// guaranteed room in the thread's queue, and relaxed loads cost nothing.
#[derive(Debug)]
pub struct IoTune {
    reads_per_wakeup: AtomicU32,
    accepts_per_wakeup: AtomicU32,
}

impl IoTune {
    fn new(cfg: &IoCfg) -> IoTune {
        IoTune {
            reads_per_wakeup: AtomicU32::new(cfg.reads_per_wakeup),
            accepts_per_wakeup: AtomicU32::new(cfg.accepts_per_wakeup),
        }
    }
}

/// What an I/O thread takes from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoCfg {
    /// Which pool it serves; also the thread's name (`client`, `shard`).
    pub pool: PoolId,
    /// Slots in that pool.
    pub max_conns: u32,
    /// Bytes per read.
    pub read_size: usize,
    /// Reads of one connection per wake-up.
    pub reads_per_wakeup: u32,
    /// Accepts per listener per wake-up.
    pub accepts_per_wakeup: u32,
    /// Events per `netpoll_wait`.
    pub netpoll_events_max: usize,
    /// Events collected before pushing.
    pub io_batch_max: usize,
    /// Bytes of one connection's reads waiting for the main thread before
    /// the thread stops reading it (0: no bound).
    pub read_ahead_max: usize,
    /// The kernel send buffer (`SO_SNDBUF`) of accepted sockets (0: the
    /// kernel's, which grows it up to `net.ipv4.tcp_wmem`).
    pub send_buffer: usize,
    /// `TCP_USER_TIMEOUT` of accepted sockets, in ms (0: the kernel's).
    pub user_timeout_ms: u64,
}

/// The least a read counts for in a [`ReadAhead`]: with the default
/// `client.read_ahead_max` of 64 KiB, one connection has at most 64 reads in
/// the event buffer, however small.
pub const READ_AHEAD_CHARGE_MIN: usize = 1024;

/// The bit of a [`ReadAhead`] count that says the I/O thread stopped
/// reading the connection and waits to be woken.
const THROTTLED: u32 = 1 << 31;

/// Bytes of each connection's reads pushed by its I/O thread and not yet
/// handled by the main thread, by slot (see the module docs). Shared by the
/// two threads; two atomic operations per read, no lock.
#[derive(Debug)]
pub struct ReadAhead {
    bytes: Box<[AtomicU32]>,
    /// Most bytes in flight per connection before the thread stops reading
    /// it.
    max: u32,
}

impl ReadAhead {
    /// For `slots` slots, at most `max` bytes each (0: no bound).
    pub fn new(slots: usize, max: usize) -> ReadAhead {
        let max = match max {
            0 => THROTTLED - 1,
            max => max.min(1 << 30) as u32,
        };
        ReadAhead {
            bytes: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            max,
        }
    }

    /// I/O thread: may slot `index` be read now? If not, it is marked, and
    /// the main thread wakes the I/O thread once it has caught up.
    fn may_read(&self, index: u32) -> bool {
        let Some(count) = self.bytes.get(index as usize) else {
            return true;
        };
        if count.load(Ordering::Acquire) & !THROTTLED < self.max {
            return true;
        }
        count.fetch_or(THROTTLED, Ordering::AcqRel);
        // The main thread may have caught up before the mark: look again.
        if count.load(Ordering::Acquire) & !THROTTLED < self.max {
            count.fetch_and(!THROTTLED, Ordering::AcqRel);
            return true;
        }
        false
    }

    /// What a read of `n` bytes counts for: at least
    /// [`READ_AHEAD_CHARGE_MIN`], so that a sender of tiny reads is bounded
    /// in events as well as bytes.
    fn charge(n: usize) -> u32 {
        n.max(READ_AHEAD_CHARGE_MIN) as u32
    }

    /// I/O thread: a read of `n` bytes of slot `index` pushed.
    fn pushed(&self, index: u32, n: usize) {
        if let Some(count) = self.bytes.get(index as usize) {
            count.fetch_add(Self::charge(n), Ordering::AcqRel);
        }
    }

    /// Main thread: `n` bytes of slot `index` handled. True if the I/O
    /// thread stopped reading it and may read it again: wake the thread.
    pub fn consumed(&self, index: u32, n: usize) -> bool {
        let Some(count) = self.bytes.get(index as usize) else {
            return false;
        };
        let n = Self::charge(n);
        let before = count.fetch_sub(n, Ordering::AcqRel);
        let after = (before & !THROTTLED).wrapping_sub(n);
        before & THROTTLED != 0
            && after < self.max
            && count.fetch_and(!THROTTLED, Ordering::AcqRel) & THROTTLED != 0
    }
}

/// The main thread's handle on an I/O thread.
#[derive(Debug)]
pub struct IoThread {
    cmds: Arc<EventBuf<IoCmd>>,
    waker: NetpollWaker,
    wake_pending: bool,
    thread: Option<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
    ahead: Arc<ReadAhead>,
    tune: Arc<IoTune>,
}

impl IoThread {
    /// New per-wake-up bounds, from the thread's next use of them.
    pub fn tune(&self, reads_per_wakeup: u32, accepts_per_wakeup: u32) {
        let t = &self.tune;
        t.reads_per_wakeup
            .store(reads_per_wakeup, Ordering::Relaxed);
        t.accepts_per_wakeup
            .store(accepts_per_wakeup, Ordering::Relaxed);
    }

    /// Tells the thread to close its listeners (see [`IoCmd::Unlisten`]).
    pub fn unlisten(&mut self) {
        self.command(IoCmd::Unlisten);
    }

    /// The main thread handled `n` bytes read on slot `index`; wakes the
    /// thread (at the end of the iteration) if it waits for that slot.
    pub fn read_done(&mut self, index: u32, n: usize) {
        if self.ahead.consumed(index, n) {
            self.wake_pending = true;
        }
    }

    /// Queues a command without blocking; the thread is woken by
    /// [`IoThread::wake_if_pending`] at the end of the main loop iteration, so
    /// a burst of commands costs one wake-up.
    pub fn command(&mut self, cmd: IoCmd) {
        match self.cmds.try_push(cmd) {
            Ok(()) => self.wake_pending = true,
            Err(TryPushError::Full(cmd)) => {
                // The queue is sized so this cannot happen; see the module docs.
                error!("io: command queue full, dropping {cmd:?} (bug: the bound was broken)");
            }
            Err(TryPushError::Closed(_)) => {}
        }
    }

    /// Wakes the thread if commands were queued since the last wake-up.
    pub fn wake_if_pending(&mut self) {
        if self.wake_pending {
            self.wake_pending = false;
            self.waker.wake();
        }
    }

    /// The address listener `i` is bound to (useful with port 0).
    pub fn local_addr(&self, i: usize) -> SocketAddr {
        self.local_addrs[i]
    }

    /// Tells the thread to stop, then waits for it. Resolver threads still in
    /// a lookup are not waited for: they hold nothing, and their result is
    /// refused by the closed queue. Safe to call twice.
    pub fn stop_and_join(&mut self) {
        self.command(IoCmd::Stop);
        self.cmds.close();
        self.waker.wake();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("io thread panicked");
        }
    }
}

/// Starts an I/O thread for `cfg.pool`, named after it (thesis `cl_start`
/// for the client thread, `shard_start` for the shard thread), accepting on
/// every listener (at most [`MAX_LISTENERS`]) and reading the given signal
/// pipes.
pub fn io_start(
    cfg: &IoCfg,
    listeners: Vec<TcpListener>,
    signals: Vec<(i32, UnixStream)>,
    evbuf: Arc<ComEventBuf>,
    pool: &'static Secpool,
) -> io::Result<IoThread> {
    if listeners.len() > MAX_LISTENERS || signals.len() > MAX_LISTENERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many listeners or signals",
        ));
    }
    let np = Netpoll::init(cfg.netpoll_events_max)?;
    let mut local_addrs = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.iter().enumerate() {
        np.add(
            listener,
            NETPOLL_READ | NETPOLL_ET,
            LISTENER_DATA + i as u64,
        )?;
        local_addrs.push(listener.local_addr()?);
    }
    for (i, (_, pipe)) in signals.iter().enumerate() {
        np.add(pipe, NETPOLL_READ | NETPOLL_ET, SIGNAL_DATA + i as u64)?;
    }
    let max_conns = cfg.max_conns as usize;
    // 3 per slot (add or connect, want-write, del), 1 per resolver, Unlisten, Stop.
    let cmds = Arc::new(EventBuf::new(3 * max_conns + RESOLVERS_MAX + 2));
    let tune = Arc::new(IoTune::new(cfg));
    let ahead = Arc::new(ReadAhead::new(max_conns, cfg.read_ahead_max));
    let waker = np.waker();
    let thread = Thread {
        pool_id: cfg.pool,
        ev_list: Vec::with_capacity(np.max_events()),
        np,
        listeners_ready: vec![false; listeners.len()],
        listeners,
        accept_paused_until: None,
        signals,
        conns: (0..max_conns).map(|_| None).collect(),
        ready: Vec::new(),
        ready_spare: Vec::new(),
        throttled: Vec::new(),
        ahead: ahead.clone(),
        deadlines: BinaryHeap::new(),
        lookups: HashMap::new(),
        cmds: cmds.clone(),
        cmd_list: Vec::with_capacity(256),
        waker: waker.clone(),
        outbox: Outbox::new(evbuf, cfg.io_batch_max),
        pool,
        scratch: vec![0; cfg.read_size].into_boxed_slice(),
        tune: tune.clone(),
        accepted: SocketOpts::of(cfg),
        pool_log: LogLimit::default(),
    };
    let handle = thread::Builder::new()
        .name(cfg.pool.name().to_string())
        .spawn(move || thread.run())?;
    Ok(IoThread {
        cmds,
        waker,
        wake_pending: false,
        thread: Some(handle),
        local_addrs,
        ahead,
        tune,
    })
}

/// Events collected on an I/O thread and pushed in batches.
struct Outbox {
    events: Vec<Event>,
    evbuf: Arc<ComEventBuf>,
    batch_max: usize,
}

impl Outbox {
    fn new(evbuf: Arc<ComEventBuf>, batch_max: usize) -> Outbox {
        Outbox {
            events: Vec::with_capacity(batch_max),
            evbuf,
            batch_max,
        }
    }

    /// Adds an event; pushes the batch (blocking while the buffer is full)
    /// once it holds `batch_max` events.
    fn emit(&mut self, ev: Event) -> Result<(), Closed> {
        self.events.push(ev);
        if self.events.len() >= self.batch_max {
            self.flush()?;
        }
        Ok(())
    }

    /// Pushes everything collected (thesis `event_push`).
    fn flush(&mut self) -> Result<(), Closed> {
        self.evbuf.event_push(self.events.drain(..))
    }
}

/// What a connection has left after [`Thread::read_conn`].
enum Left {
    /// Nothing to read until its next edge (drained, closed, stopped).
    Nothing,
    /// Data, probably: the per-wake-up budget was spent.
    More,
    /// Its reads in flight passed the bound: it waits for the main thread.
    Throttled,
}

/// Where a connection is, on the I/O thread.
enum ConnState {
    /// A resolver thread is looking the name up.
    Resolving,
    /// A non-blocking connect to `addrs[next - 1]` is in flight.
    Connecting { addrs: Vec<SocketAddr>, next: usize },
    /// Connected (or accepted) and registered for reading.
    Open {
        /// On the ready list: an edge was seen and not yet drained.
        in_ready: bool,
        /// The one-shot write interest is armed.
        want_write: bool,
        /// The peer closed or the socket failed: read to the end, short
        /// reads included (see `read_conn`).
        read_closed: bool,
    },
    /// Reading stopped or the connect failed; waiting for the main thread's
    /// `Del`.
    Stopped,
}

/// The I/O thread's share of one connection.
struct Conn {
    id: u32,
    stream: Option<Arc<TcpStream>>,
    state: ConnState,
}

struct Thread {
    pool_id: PoolId,
    np: Netpoll,
    ev_list: Vec<NetpollEvent>,
    listeners: Vec<TcpListener>,
    /// Listeners with connections left to accept (an edge seen, not drained).
    listeners_ready: Vec<bool>,
    accept_paused_until: Option<Instant>,
    signals: Vec<(i32, UnixStream)>,
    /// Indexed by slot.
    conns: Vec<Option<Conn>>,
    /// Slots with unread data; `ready_spare` is swapped in while it is walked.
    ready: Vec<u32>,
    ready_spare: Vec<u32>,
    /// Ready slots not read because their reads in flight passed
    /// `read_ahead_max`; back on `ready` once the main thread caught up.
    throttled: Vec<u32>,
    ahead: Arc<ReadAhead>,
    /// Connect deadlines, earliest first; entries of connections that have
    /// since connected or gone are skipped when they come up, and pruned
    /// when there are many.
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Name lookups in flight, by name and port: the connections waiting for
    /// each.
    lookups: HashMap<(String, u16), Vec<ConnRef>>,
    cmds: Arc<EventBuf<IoCmd>>,
    cmd_list: Vec<IoCmd>,
    waker: NetpollWaker,
    outbox: Outbox,
    pool: &'static Secpool,
    scratch: Box<[u8]>,
    tune: Arc<IoTune>,
    accepted: SocketOpts,
    pool_log: LogLimit,
}

/// The socket options of accepted connections, from [`IoCfg`].
#[derive(Clone, Copy)]
struct SocketOpts {
    send_buffer: usize,
    user_timeout_ms: u64,
}

impl SocketOpts {
    fn of(cfg: &IoCfg) -> SocketOpts {
        SocketOpts {
            send_buffer: cfg.send_buffer,
            user_timeout_ms: cfg.user_timeout_ms,
        }
    }

    /// Sets them on `stream`. One that fails is logged and the connection
    /// kept: each only bounds what a misbehaving peer can hold.
    fn apply(self, stream: &TcpStream, addr: SocketAddr, pool: PoolId) {
        let name = pool.name();
        if let Err(err) = stream.set_nodelay(true) {
            debug!("{name}: TCP_NODELAY on {addr}: {err}");
        }
        let sock = socket2::SockRef::from(stream);
        if self.send_buffer > 0
            && let Err(err) = sock.set_send_buffer_size(self.send_buffer)
        {
            debug!("{name}: SO_SNDBUF on {addr}: {err}");
        }
        if self.user_timeout_ms > 0
            && let Err(err) =
                sock.set_tcp_user_timeout(Some(Duration::from_millis(self.user_timeout_ms)))
        {
            debug!("{name}: TCP_USER_TIMEOUT on {addr}: {err}");
        }
    }
}

/// The connection in slot `conn.index`, if it is this one. (A free function,
/// so that it borrows only the table, not the whole thread.)
fn conn_slot(conns: &mut [Option<Conn>], conn: ConnRef) -> Option<&mut Conn> {
    conns
        .get_mut(conn.index as usize)?
        .as_mut()
        .filter(|c| c.id == conn.id)
}

/// What the thread does after handling its commands.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl Thread {
    fn run(mut self) {
        debug!("{}: thread started", self.pool_id.name());
        match self.run_loop() {
            Ok(()) => debug!("{}: stopped", self.pool_id.name()),
            Err(Closed) => debug!("{}: event buffer closed, stopping", self.pool_id.name()),
        }
    }

    fn run_loop(&mut self) -> Result<(), Closed> {
        loop {
            let timeout = self.wait_timeout();
            if let Err(err) = self.np.wait(&mut self.ev_list, timeout) {
                // epoll_wait fails only on a broken epoll fd (EINTR is handled
                // in netpoll). Do not spin: the one exception to "block only in
                // netpoll and event_push".
                error!("{}: netpoll_wait failed: {err}", self.pool_id.name());
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            for i in 0..self.ev_list.len() {
                let ev = self.ev_list[i];
                if self.poll_event(ev)? == Flow::Stop {
                    return Ok(());
                }
            }
            self.expire_connects()?;
            self.accept_some()?;
            self.retry_throttled();
            self.read_ready()?;
            self.outbox.flush()?;
        }
    }

    fn poll_event(&mut self, ev: NetpollEvent) -> Result<Flow, Closed> {
        match ev.data {
            NETPOLL_DATA_WAKER => return self.run_commands(),
            data if (LISTENER_DATA..SIGNAL_DATA).contains(&data) => {
                if let Some(ready) = self
                    .listeners_ready
                    .get_mut((data - LISTENER_DATA) as usize)
                {
                    *ready = true;
                }
            }
            data if data >= SIGNAL_DATA && data < SIGNAL_DATA + self.signals.len() as u64 => {
                self.read_signal((data - SIGNAL_DATA) as usize)?;
            }
            data => self.conn_event(ConnRef::from_data(self.pool_id, data), ev.events)?,
        }
        Ok(Flow::Continue)
    }

    /// 0 while work is left over (ready connections, a ready listener); else
    /// until the accept pause ends or the next connect deadline; else forever.
    fn wait_timeout(&mut self) -> i32 {
        if !self.ready.is_empty() {
            return 0;
        }
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|until| until <= now) {
            self.accept_paused_until = None;
        }
        if self.accept_paused_until.is_none() && self.listeners_ready.contains(&true) {
            return 0;
        }
        let next_deadline = self.deadlines.peek().map(|Reverse((at, _, _))| *at);
        match self
            .accept_paused_until
            .into_iter()
            .chain(next_deadline)
            .min()
        {
            None => FOREVER,
            Some(at) => {
                let left = at.saturating_duration_since(now);
                (left.as_millis() as i32).saturating_add(i32::from(!left.is_zero()))
            }
        }
    }

    fn conn_event(&mut self, conn: ConnRef, flags: u32) -> Result<(), Closed> {
        let Some(c) = conn_slot(&mut self.conns, conn) else {
            return Ok(()); // not a slot we know: a sporadic event
        };
        match &mut c.state {
            ConnState::Connecting { .. } => {
                if flags & (NETPOLL_WRITE | NETPOLL_ERR | NETPOLL_HUP) != 0 {
                    self.connect_progress(conn, flags)?;
                }
            }
            ConnState::Open {
                in_ready,
                want_write,
                read_closed,
            } => {
                *read_closed |= flags & (NETPOLL_HUP | NETPOLL_ERR) != 0;
                if flags & (NETPOLL_READ | NETPOLL_HUP | NETPOLL_ERR) != 0 && !*in_ready {
                    *in_ready = true;
                    self.ready.push(conn.index);
                }
                if flags & NETPOLL_WRITE != 0 && *want_write {
                    *want_write = false;
                    if let Some(stream) = &c.stream
                        && let Err(err) =
                            self.np
                                .modify(&**stream, NETPOLL_READ | NETPOLL_ET, conn.to_data())
                    {
                        debug!("{conn}: netpoll modify failed: {err}");
                    }
                    self.outbox.emit(Event::Writable { conn })?;
                }
            }
            ConnState::Resolving | ConnState::Stopped => {}
        }
        Ok(())
    }

    /// A connecting socket became writable or failed: connected, or on to the
    /// next address, or failed.
    fn connect_progress(&mut self, conn: ConnRef, flags: u32) -> Result<(), Closed> {
        let Some(c) = conn_slot(&mut self.conns, conn) else {
            return Ok(());
        };
        let Some(stream) = c.stream.clone() else {
            return Ok(());
        };
        let outcome = match stream.take_error() {
            Ok(Some(err)) | Err(err) => Err(err),
            Ok(None) => stream.peer_addr(),
        };
        let peer = match outcome {
            Ok(peer) => peer,
            // A spurious wake-up before the connect finished.
            Err(err) if err.kind() == io::ErrorKind::NotConnected && flags & NETPOLL_ERR == 0 => {
                return Ok(());
            }
            Err(err) => {
                self.np.del(&*stream).ok();
                c.stream = None;
                return self.connect_next(conn, err);
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            debug!("{conn}: TCP_NODELAY: {err}");
        }
        // An outbound link (a shard, a game server) that dies without a FIN
        // (a host gone, a firewall that drops state) is found by the kernel.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES);
        if let Err(err) = socket2::SockRef::from(&*stream).set_tcp_keepalive(&keepalive) {
            debug!("{conn}: SO_KEEPALIVE: {err}");
        }
        if let Err(err) = self
            .np
            .modify(&*stream, NETPOLL_READ | NETPOLL_ET, conn.to_data())
        {
            warn!("{conn}: netpoll modify failed: {err}");
        }
        c.state = ConnState::Open {
            in_ready: true,
            want_write: false,
            read_closed: flags & (NETPOLL_HUP | NETPOLL_ERR) != 0,
        };
        // Data may have arrived with the connect: read once to find out.
        self.ready.push(conn.index);
        trace!("{conn}: connected to {peer}");
        self.outbox.emit(Event::Connected { conn, stream, peer })
    }

    /// Starts a connect to the next address of `conn`, or reports the last
    /// error once none is left.
    fn connect_next(&mut self, conn: ConnRef, last_err: io::Error) -> Result<(), Closed> {
        let index = conn.index;
        let mut last_err = last_err;
        loop {
            let Some(c) = conn_slot(&mut self.conns, conn) else {
                return Ok(());
            };
            let ConnState::Connecting { addrs, next } = &mut c.state else {
                return Ok(());
            };
            let Some(&addr) = addrs.get(*next) else {
                c.state = ConnState::Stopped;
                let reason = HupReason::ConnectFailed(last_err.kind());
                return self.outbox.emit(Event::Hup { conn, reason });
            };
            *next += 1;
            match TcpStream::connect(addr) {
                Ok(stream) => {
                    let flags = NETPOLL_READ | NETPOLL_WRITE | NETPOLL_ET;
                    match self.np.add(&stream, flags, conn.to_data()) {
                        Ok(()) => {
                            if let Some(Some(c)) = self.conns.get_mut(index as usize) {
                                c.stream = Some(Arc::new(stream));
                            }
                            return Ok(());
                        }
                        Err(err) => last_err = err,
                    }
                }
                Err(err) => last_err = err,
            }
        }
    }

    /// Gives up on connects past their deadline.
    fn expire_connects(&mut self) -> Result<(), Closed> {
        let now = Instant::now();
        while let Some(&Reverse((at, index, id))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let conn = ConnRef {
                pool: self.pool_id,
                index,
                id,
            };
            let Some(c) = conn_slot(&mut self.conns, conn) else {
                continue;
            };
            if !matches!(c.state, ConnState::Resolving | ConnState::Connecting { .. }) {
                continue;
            }
            if let Some(stream) = c.stream.take() {
                self.np.del(&*stream).ok();
            }
            c.state = ConnState::Stopped;
            self.outbox.emit(Event::Hup {
                conn,
                reason: HupReason::ConnectTimeout,
            })?;
        }
        Ok(())
    }

    fn unlisten(&mut self) {
        for listener in self.listeners.drain(..) {
            if let Err(err) = self.np.del(&listener) {
                debug!("{}: netpoll del of a listener: {err}", self.pool_id.name());
            }
        }
        self.listeners_ready.clear();
        info!(
            "{}: listeners closed; no new connections",
            self.pool_id.name()
        );
    }

    fn accept_some(&mut self) -> Result<(), Closed> {
        // The pause ends by its deadline alone: a ready list that never empties
        // (a busy main thread) must not keep it in force.
        if let Some(until) = self.accept_paused_until {
            if Instant::now() < until {
                return Ok(());
            }
            self.accept_paused_until = None;
        }
        for listener in 0..self.listeners.len() {
            if self.listeners_ready[listener] {
                self.accept_from(listener)?;
            }
        }
        Ok(())
    }

    fn accept_from(&mut self, listener: usize) -> Result<(), Closed> {
        for _ in 0..self.tune.accepts_per_wakeup.load(Ordering::Relaxed) {
            match self.listeners[listener].accept() {
                Ok((stream, addr)) => {
                    self.accepted.apply(&stream, addr, self.pool_id);
                    trace!(
                        "{}: accepted {addr} on listener {listener}",
                        self.pool_id.name()
                    );
                    self.outbox.emit(Event::Accepted {
                        pool: self.pool_id,
                        listener: listener as u32,
                        stream,
                        addr,
                    })?;
                }
                Err(err) if would_block(&err) => {
                    self.listeners_ready[listener] = false;
                    return Ok(());
                }
                Err(err) if interrupted(&err) || err.kind() == io::ErrorKind::ConnectionAborted => {
                }
                Err(err) => {
                    // EMFILE, ENFILE, ENOBUFS: the pending connection stays in
                    // the backlog; try again after a pause rather than spin.
                    warn!(
                        "{}: accept failed: {err}; pausing accepts for {ACCEPT_PAUSE:?}",
                        self.pool_id.name()
                    );
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return Ok(());
                }
            }
        }
        Ok(()) // budget spent; the listener stays ready for the next turn
    }

    /// Puts back on the ready list the throttled slots the main thread has
    /// caught up with.
    fn retry_throttled(&mut self) {
        if self.throttled.is_empty() {
            return;
        }
        let ahead = &self.ahead;
        let ready = &mut self.ready;
        self.throttled.retain(|&index| {
            let again = ahead.may_read(index);
            if again {
                ready.push(index);
            }
            !again
        });
    }

    /// Reads every connection on the ready list, keeping those with data
    /// left; one whose reads in flight passed the bound waits aside.
    fn read_ready(&mut self) -> Result<(), Closed> {
        let mut walking = std::mem::replace(&mut self.ready, std::mem::take(&mut self.ready_spare));
        for &index in &walking {
            match self.read_conn(index)? {
                Left::More => self.ready.push(index),
                Left::Throttled => self.throttled.push(index),
                Left::Nothing => {
                    if let Some(Some(Conn {
                        state: ConnState::Open { in_ready, .. },
                        ..
                    })) = self.conns.get_mut(index as usize)
                    {
                        *in_ready = false;
                    }
                }
            }
        }
        walking.clear();
        self.ready_spare = walking;
        Ok(())
    }

    /// Reads one connection up to the per-wake-up budget, or until its reads
    /// in flight pass the bound. Returns what is left.
    fn read_conn(&mut self, index: u32) -> Result<Left, Closed> {
        let Some(Some(c)) = self.conns.get_mut(index as usize) else {
            return Ok(Left::Nothing);
        };
        let (ConnState::Open { read_closed, .. }, Some(stream)) = (&c.state, &c.stream) else {
            return Ok(Left::Nothing);
        };
        let read_closed = *read_closed;
        let conn = ConnRef {
            pool: self.pool_id,
            index,
            id: c.id,
        };
        for _ in 0..self.tune.reads_per_wakeup.load(Ordering::Relaxed) {
            if !self.ahead.may_read(index) {
                return Ok(Left::Throttled);
            }
            let reason = match (&**stream).read(&mut self.scratch) {
                Ok(0) => HupReason::Eof,
                Ok(n) => match self.pool.secpool_copy(&self.scratch[..n]) {
                    Ok(data) => {
                        self.ahead.pushed(index, n);
                        self.outbox.emit(Event::Read { conn, data })?;
                        if n < self.scratch.len() && !read_closed {
                            // A short read drained the socket: with
                            // edge-triggered epoll, later data brings a new
                            // edge, so the read that would only say
                            // `WouldBlock` is saved (as tokio does). Not once
                            // the peer closed: its EOF must still be read.
                            return Ok(Left::Nothing);
                        }
                        continue;
                    }
                    Err(err) => {
                        if let Some(suppressed) =
                            self.pool_log.allow(Instant::now(), Duration::from_secs(1))
                        {
                            error!(
                                "{conn}: {err}; dropping the connection ({suppressed} more not logged)"
                            );
                        }
                        HupReason::PoolExhausted
                    }
                },
                Err(err) if would_block(&err) => return Ok(Left::Nothing),
                Err(err) if interrupted(&err) => continue,
                Err(err) => HupReason::Error(err.kind()),
            };
            // Stop reading; the main thread decides and sends `Del`.
            if let Err(err) = self.np.del(&**stream) {
                debug!("{conn}: netpoll_del: {err}");
            }
            c.state = ConnState::Stopped;
            self.outbox.emit(Event::Hup { conn, reason })?;
            return Ok(Left::Nothing);
        }
        Ok(Left::More)
    }

    /// Runs queued commands, at most [`COMMANDS_PER_WAKEUP`]; if more are
    /// left, wakes itself to come back after reading.
    fn run_commands(&mut self) -> Result<Flow, Closed> {
        let mut handled = 0;
        while handled < COMMANDS_PER_WAKEUP {
            let mut cmds = std::mem::take(&mut self.cmd_list);
            let received = self.cmds.event_wait(&mut cmds, 256, 0);
            handled += cmds.len();
            let mut flow = Flow::Continue;
            for cmd in cmds.drain(..) {
                if self.run_command(cmd)? == Flow::Stop {
                    flow = Flow::Stop;
                }
            }
            self.cmd_list = cmds;
            match received {
                _ if flow == Flow::Stop => return Ok(Flow::Stop),
                Ok(0) => return Ok(Flow::Continue),
                Ok(_) => {}
                Err(Closed) => return Ok(Flow::Stop),
            }
        }
        self.waker.wake();
        Ok(Flow::Continue)
    }

    fn run_command(&mut self, cmd: IoCmd) -> Result<Flow, Closed> {
        match cmd {
            IoCmd::Add { conn, stream } => self.add(conn, stream)?,
            IoCmd::Connect {
                conn,
                target,
                deadline,
            } => self.connect(conn, target, deadline)?,
            IoCmd::Resolved { host, port, result } => self.resolved(host, port, result)?,
            IoCmd::WantWrite { conn } => self.want_write(conn),
            IoCmd::Del { conn } => self.del(conn)?,
            IoCmd::Unlisten => self.unlisten(),
            IoCmd::Stop => return Ok(Flow::Stop),
        }
        Ok(Flow::Continue)
    }

    /// Takes a slot for `conn`; false (and a Hup posted) if the main thread
    /// handed over a slot still held, which would be a bug.
    fn claim_slot(&mut self, conn: ConnRef, state: ConnState) -> Result<bool, Closed> {
        let slot = &mut self.conns[conn.index as usize];
        if let Some(old) = slot {
            error!(
                "{conn}: a new connection for a slot still held by id {} (bug)",
                old.id
            );
            self.outbox.emit(Event::Hup {
                conn,
                reason: HupReason::Error(io::ErrorKind::AlreadyExists),
            })?;
            return Ok(false);
        }
        *slot = Some(Conn {
            id: conn.id,
            stream: None,
            state,
        });
        Ok(true)
    }

    fn add(&mut self, conn: ConnRef, stream: Arc<TcpStream>) -> Result<(), Closed> {
        let open = ConnState::Open {
            in_ready: false,
            want_write: false,
            read_closed: false,
        };
        if !self.claim_slot(conn, open)? {
            return Ok(());
        }
        let registered = self
            .np
            .add(&*stream, NETPOLL_READ | NETPOLL_ET, conn.to_data());
        let c = conn_slot(&mut self.conns, conn).expect("just claimed");
        c.stream = Some(stream);
        if let Err(err) = registered {
            warn!("{conn}: netpoll_add failed: {err}");
            c.state = ConnState::Stopped;
            self.outbox.emit(Event::Hup {
                conn,
                reason: HupReason::Error(err.kind()),
            })?;
        }
        Ok(())
    }

    fn connect(&mut self, conn: ConnRef, target: Target, deadline: Instant) -> Result<(), Closed> {
        let state = match &target {
            Target::Addr(addr) => ConnState::Connecting {
                addrs: vec![*addr],
                next: 0,
            },
            Target::Name { .. } => ConnState::Resolving,
        };
        if !self.claim_slot(conn, state)? {
            return Ok(());
        }
        self.deadlines
            .push(Reverse((deadline, conn.index, conn.id)));
        self.prune_deadlines();
        match target {
            Target::Addr(_) => self.connect_next(conn, io::ErrorKind::NotFound.into()),
            Target::Name { host, port } => self.resolve(conn, host, port),
        }
    }

    /// Drops the deadlines of connections that connected or went, once
    /// they outnumber the slots: the heap stays within about twice the pool.
    fn prune_deadlines(&mut self) {
        if self.deadlines.len() <= 2 * self.conns.len() + 16 {
            return;
        }
        let (conns, pool) = (&mut self.conns, self.pool_id);
        self.deadlines.retain(|&Reverse((_, index, id))| {
            let conn = ConnRef { pool, index, id };
            conn_slot(conns, conn).is_some_and(|c| {
                matches!(c.state, ConnState::Resolving | ConnState::Connecting { .. })
            })
        });
    }

    /// Looks `host` up on a short-lived thread, which posts `Resolved`; a
    /// connect to a name already being looked up waits for that lookup.
    fn resolve(&mut self, conn: ConnRef, host: String, port: u16) -> Result<(), Closed> {
        let key = (host, port);
        if let Some(waiting) = self.lookups.get_mut(&key) {
            waiting.push(conn);
            return Ok(());
        }
        let why = if self.lookups.len() >= RESOLVERS_MAX {
            "too many names being looked up".to_string()
        } else {
            let (cmds, waker) = (self.cmds.clone(), self.waker.clone());
            let (host, port) = key.clone();
            let spawned = thread::Builder::new()
                .name(format!("{}-resolve", self.pool_id.name()))
                .spawn(move || {
                    let result = (host.as_str(), port)
                        .to_socket_addrs()
                        .map(|addrs| addrs.collect());
                    if cmds
                        .try_push(IoCmd::Resolved { host, port, result })
                        .is_ok()
                    {
                        waker.wake();
                    }
                });
            match spawned {
                Ok(_) => {
                    self.lookups.insert(key, vec![conn]);
                    return Ok(());
                }
                Err(err) => err.to_string(),
            }
        };
        warn!("{conn}: cannot resolve {}: {why}", key.0);
        if let Some(c) = conn_slot(&mut self.conns, conn) {
            c.state = ConnState::Stopped;
        }
        self.outbox.emit(Event::Hup {
            conn,
            reason: HupReason::ConnectFailed(io::ErrorKind::Other),
        })
    }

    /// A lookup finished: every connection still waiting for it connects to
    /// the addresses, or fails.
    fn resolved(
        &mut self,
        host: String,
        port: u16,
        result: io::Result<Vec<SocketAddr>>,
    ) -> Result<(), Closed> {
        let waiting = self.lookups.remove(&(host, port)).unwrap_or_default();
        for conn in waiting {
            let Some(c) = conn_slot(&mut self.conns, conn) else {
                continue; // given up meanwhile
            };
            if !matches!(c.state, ConnState::Resolving) {
                continue;
            }
            match &result {
                Ok(addrs) => {
                    c.state = ConnState::Connecting {
                        addrs: addrs.clone(),
                        next: 0,
                    };
                    let none =
                        io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
                    self.connect_next(conn, none)?;
                }
                Err(err) => {
                    c.state = ConnState::Stopped;
                    let reason = HupReason::ConnectFailed(err.kind());
                    self.outbox.emit(Event::Hup { conn, reason })?;
                }
            }
        }
        Ok(())
    }

    fn want_write(&mut self, conn: ConnRef) {
        let Some(c) = conn_slot(&mut self.conns, conn) else {
            return;
        };
        if let (ConnState::Open { want_write, .. }, Some(stream)) = (&mut c.state, &c.stream) {
            *want_write = true;
            let flags = NETPOLL_READ | NETPOLL_WRITE | NETPOLL_ET;
            if let Err(err) = self.np.modify(&**stream, flags, conn.to_data()) {
                debug!("{conn}: netpoll modify failed: {err}");
            }
        }
    }

    fn del(&mut self, conn: ConnRef) -> Result<(), Closed> {
        self.throttled.retain(|&index| index != conn.index);
        let slot = &mut self.conns[conn.index as usize];
        if slot.as_ref().is_some_and(|c| c.id == conn.id) {
            let c = slot.take().expect("checked above");
            if let (ConnState::Open { .. } | ConnState::Connecting { .. }, Some(stream)) =
                (&c.state, &c.stream)
            {
                self.np.del(&**stream).ok();
            }
            // Dropping `c` drops this thread's handle; the socket closes once
            // the main thread has dropped its own.
        }
        self.outbox.emit(Event::Closed { conn })
    }

    fn read_signal(&mut self, i: usize) -> Result<(), Closed> {
        let (signal, pipe) = &self.signals[i];
        let mut buf = [0u8; 64];
        let mut got = false;
        // Bounded: a pipe never holds more than a few bytes per signal, and a
        // broken one must not spin this thread.
        for _ in 0..1024 {
            match (&*pipe).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => got = true,
                Err(err) if interrupted(&err) => {}
                Err(_) => break,
            }
        }
        if got {
            self.outbox.emit(Event::Signal { signal: *signal })?;
        }
        Ok(())
    }
}
