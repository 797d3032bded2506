//! The client thread (thesis §3.4.3 and §3.5.2 `cl_start`): it sleeps in
//! `netpoll_wait`, accepts new connections, reads from clients, and posts
//! everything as events to the main thread. It never decides anything: the main
//! thread owns the client pool and all protocol state.
//!
//! What the thread owns: its netpoll, the listener, and one `Conn` per client
//! slot the main thread has handed it (the read side of `client_t`). What it
//! shares: each socket, through an `Arc` (the main thread writes to it), the
//! event buffer it pushes into, and the command queue it drains.
//!
//! Commands from the main thread ([`ClientCmd`]) arrive through an
//! [`EventBuf`] and a netpoll waker:
//! - `Add` hands over an accepted socket under its slot and id; the thread
//!   registers it. Registering here, not on the main thread, means no readiness
//!   edge can arrive before the thread knows the socket.
//! - `WantWrite` arms a one-shot write interest: the next writable edge becomes
//!   one `EVENT_WRITABLE_CLIENT` and the interest goes back to read-only.
//! - `Del` drops the thread's handle to the socket and confirms with
//!   `EVENT_CLOSED_CLIENT`; only then may the main thread reuse the slot. At
//!   most one `Add`, one `WantWrite` and one `Del` per slot are ever queued, so
//!   a queue of `3 * max_clients + 1` never fills and the main thread's
//!   `try_push` never fails (**invariant**).
//! - `Stop` ends the thread.
//!
//! Reads are edge-triggered: a readable client goes on a ready list and is
//! read until `WouldBlock` or a short read (which shows the socket drained:
//! later data brings a new edge), at most `client.reads_per_wakeup` times per turn
//! so one fast sender cannot starve the rest; a client left with data stays on
//! the list and the next wait does not sleep. Each read goes into a scratch
//! buffer and is copied into a secpool block of the read's size (thesis
//! §3.4.4: "space for it is allocated from the segpool on the client thread.
//! The message is copied"). Events are collected and pushed in batches of up to
//! `runtime.io_batch_max`, one lock round trip per batch.
//!
//! The thread blocks in two places only: `netpoll_wait` and `event_push`
//! (**invariant**). When the main thread falls behind, the full event buffer
//! stops this thread, which stops reading, which lets TCP push back on clients.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, trace, warn};
use mio::net::{TcpListener, TcpStream, UnixStream};

use crate::client::ClientsCfg;
use crate::com::{
    ClientRef, ComEventBuf, Event, FOREVER, HupReason, LogLimit, interrupted, would_block,
};
use crate::event_buf::{Closed, EventBuf, TryPushError};
use crate::netpoll::{
    NETPOLL_DATA_WAKER, NETPOLL_ERR, NETPOLL_ET, NETPOLL_HUP, NETPOLL_READ, NETPOLL_WRITE, Netpoll,
    NetpollEvent, NetpollWaker,
};
use crate::secpool::Secpool;

/// Data word of the first listening socket; listener `i` is `CL_LISTENER_DATA + i`.
/// (The thesis marks its one listener with `0xFFFFFFFFFFFFFFFF`; with several
/// listeners, signal pipes and a waker, the top 256 words are reserved.)
pub const CL_LISTENER_DATA: u64 = crate::com::NETPOLL_DATA_RESERVED_MIN;
/// Data word of the first signal pipe; pipe `i` is `CL_SIGNAL_DATA + i`.
pub const CL_SIGNAL_DATA: u64 = CL_LISTENER_DATA + MAX_LISTENERS as u64;
/// Most listeners and most signal pipes one client thread polls.
pub const MAX_LISTENERS: usize = 64;
/// How long accepting pauses after an error such as `EMFILE` (out of file
/// descriptors), which would otherwise leave the listener ready forever.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A command from the main thread to the client thread.
#[derive(Debug)]
pub enum ClientCmd {
    /// Start reading this accepted socket, which now owns slot `client`.
    Add {
        /// Slot and id.
        client: ClientRef,
        /// The socket; the main thread keeps the other handle to write.
        stream: Arc<TcpStream>,
    },
    /// Post one `EVENT_WRITABLE_CLIENT` when the socket can take more output.
    WantWrite {
        /// Which client.
        client: ClientRef,
    },
    /// Stop reading, drop the socket handle, confirm with `EVENT_CLOSED_CLIENT`.
    Del {
        /// Which client.
        client: ClientRef,
    },
    /// End the thread.
    Stop,
}

/// The main thread's handle on the client thread.
#[derive(Debug)]
pub struct ClientIo {
    cmds: Arc<EventBuf<ClientCmd>>,
    waker: NetpollWaker,
    wake_pending: bool,
    thread: Option<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
}

impl ClientIo {
    /// Queues a command without blocking; the thread is woken by
    /// [`ClientIo::wake_if_pending`] at the end of the main loop iteration, so
    /// a burst of commands costs one wake-up.
    pub fn command(&mut self, cmd: ClientCmd) {
        match self.cmds.try_push(cmd) {
            Ok(()) => self.wake_pending = true,
            Err(TryPushError::Full(cmd)) => {
                // The queue is sized so this cannot happen; see the module docs.
                error!("client: command queue full, dropping {cmd:?} (bug: the bound was broken)");
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

    /// Tells the thread to stop, then waits for it. Safe to call twice.
    pub fn stop_and_join(&mut self) {
        self.command(ClientCmd::Stop);
        self.cmds.close();
        self.waker.wake();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("client thread panicked");
        }
    }
}

/// The client thread's share of one `client_t`.
struct Conn {
    id: u32,
    stream: Arc<TcpStream>,
    /// On the ready list: an edge was seen and not yet drained.
    in_ready: bool,
    /// The one-shot write interest is armed.
    want_write: bool,
    /// Reading stopped (EOF, error); waiting for the main thread's `Del`.
    hup: bool,
    /// The peer closed or the socket failed: read to the end, short reads
    /// included (see `read_conn`).
    read_closed: bool,
}

/// Events collected on an I/O thread and pushed in batches.
pub(crate) struct Outbox {
    events: Vec<Event>,
    evbuf: Arc<ComEventBuf>,
    batch_max: usize,
}

impl Outbox {
    pub(crate) fn new(evbuf: Arc<ComEventBuf>, batch_max: usize) -> Outbox {
        Outbox {
            events: Vec::with_capacity(batch_max),
            evbuf,
            batch_max,
        }
    }

    /// Adds an event; pushes the batch (blocking while the buffer is full)
    /// once it holds `batch_max` events.
    pub(crate) fn emit(&mut self, ev: Event) -> Result<(), Closed> {
        self.events.push(ev);
        if self.events.len() >= self.batch_max {
            self.flush()?;
        }
        Ok(())
    }

    /// Pushes everything collected (thesis `event_push`).
    pub(crate) fn flush(&mut self) -> Result<(), Closed> {
        self.evbuf.event_push(self.events.drain(..))
    }
}

/// Sizes the client thread takes from the configuration.
#[derive(Clone, Copy, Debug)]
struct Limits {
    reads_per_wakeup: u32,
    accepts_per_wakeup: u32,
}

struct ClientThread {
    np: Netpoll,
    ev_list: Vec<NetpollEvent>,
    listeners: Vec<TcpListener>,
    /// Listeners with connections left to accept (an edge seen, not drained).
    listeners_ready: Vec<bool>,
    accept_paused_until: Option<Instant>,
    signals: Vec<(i32, UnixStream)>,
    /// Indexed by client slot.
    conns: Vec<Option<Conn>>,
    /// Slots with unread data; `ready_spare` is swapped in while it is walked.
    ready: Vec<u32>,
    ready_spare: Vec<u32>,
    cmds: Arc<EventBuf<ClientCmd>>,
    cmd_list: Vec<ClientCmd>,
    outbox: Outbox,
    pool: &'static Secpool,
    scratch: Box<[u8]>,
    limits: Limits,
    pool_log: LogLimit,
}

/// Starts the client thread (thesis `cl_start`), named `client`, accepting on
/// every listener (at most [`MAX_LISTENERS`]) and reading the given signal
/// pipes.
pub fn cl_start(
    listeners: Vec<TcpListener>,
    signals: Vec<(i32, UnixStream)>,
    cfg: &ClientsCfg,
    evbuf: Arc<ComEventBuf>,
    pool: &'static Secpool,
) -> io::Result<ClientIo> {
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
            CL_LISTENER_DATA + i as u64,
        )?;
        local_addrs.push(listener.local_addr()?);
    }
    for (i, (_, pipe)) in signals.iter().enumerate() {
        np.add(pipe, NETPOLL_READ | NETPOLL_ET, CL_SIGNAL_DATA + i as u64)?;
    }
    let max_clients = cfg.max_clients as usize;
    let cmds = Arc::new(EventBuf::new(3 * max_clients + 1));
    let waker = np.waker();
    let thread = ClientThread {
        ev_list: Vec::with_capacity(np.max_events()),
        np,
        listeners_ready: vec![false; listeners.len()],
        listeners,
        accept_paused_until: None,
        signals,
        conns: (0..max_clients).map(|_| None).collect(),
        ready: Vec::with_capacity(max_clients),
        ready_spare: Vec::with_capacity(max_clients),
        cmds: cmds.clone(),
        cmd_list: Vec::with_capacity(256),
        outbox: Outbox::new(evbuf, cfg.io_batch_max),
        pool,
        scratch: vec![0; cfg.read_size].into_boxed_slice(),
        limits: Limits {
            reads_per_wakeup: cfg.reads_per_wakeup,
            accepts_per_wakeup: cfg.accepts_per_wakeup,
        },
        pool_log: LogLimit::default(),
    };
    let handle = thread::Builder::new()
        .name("client".to_string())
        .spawn(move || thread.run())?;
    Ok(ClientIo {
        cmds,
        waker,
        wake_pending: false,
        thread: Some(handle),
        local_addrs,
    })
}

/// What the thread does after handling its commands.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl ClientThread {
    fn run(mut self) {
        debug!("client: thread started");
        match self.run_loop() {
            Ok(()) => debug!("client: stopped"),
            Err(Closed) => debug!("client: event buffer closed, stopping"),
        }
    }

    fn run_loop(&mut self) -> Result<(), Closed> {
        loop {
            let timeout = self.wait_timeout();
            if let Err(err) = self.np.wait(&mut self.ev_list, timeout) {
                // epoll_wait fails only on a broken epoll fd (EINTR is handled
                // in netpoll). Do not spin: the one exception to "block only in
                // netpoll and event_push".
                error!("client: netpoll_wait failed: {err}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            for i in 0..self.ev_list.len() {
                let ev = self.ev_list[i];
                match ev.data {
                    NETPOLL_DATA_WAKER => {
                        if self.run_commands()? == Flow::Stop {
                            return Ok(());
                        }
                    }
                    data if (CL_LISTENER_DATA..CL_SIGNAL_DATA).contains(&data) => {
                        if let Some(ready) = self
                            .listeners_ready
                            .get_mut((data - CL_LISTENER_DATA) as usize)
                        {
                            *ready = true;
                        }
                    }
                    data if data >= CL_SIGNAL_DATA
                        && data < CL_SIGNAL_DATA + self.signals.len() as u64 =>
                    {
                        self.read_signal((data - CL_SIGNAL_DATA) as usize)?;
                    }
                    data => self.conn_event(ClientRef::from_data(data), ev.events)?,
                }
            }
            self.accept_some()?;
            self.read_ready()?;
            self.outbox.flush()?;
        }
    }

    /// 0 while work is left over (ready clients, a ready listener), the
    /// remaining accept pause, or forever.
    fn wait_timeout(&mut self) -> i32 {
        if !self.ready.is_empty() {
            return 0;
        }
        if let Some(until) = self.accept_paused_until {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.accept_paused_until = None;
            } else {
                return left.as_millis() as i32 + 1;
            }
        }
        if self.listeners_ready.contains(&true) {
            0
        } else {
            FOREVER
        }
    }

    fn conn_event(&mut self, client: ClientRef, flags: u32) -> Result<(), Closed> {
        let Some(Some(conn)) = self.conns.get_mut(client.index as usize) else {
            return Ok(()); // not a slot we know: a sporadic event
        };
        if conn.id != client.id || conn.hup {
            return Ok(()); // an event for a previous occupant, or already stopped
        }
        conn.read_closed |= flags & (NETPOLL_HUP | NETPOLL_ERR) != 0;
        if flags & (NETPOLL_READ | NETPOLL_HUP | NETPOLL_ERR) != 0 && !conn.in_ready {
            conn.in_ready = true;
            self.ready.push(client.index);
        }
        if flags & NETPOLL_WRITE != 0 && conn.want_write {
            conn.want_write = false;
            if let Err(err) =
                self.np
                    .modify(&*conn.stream, NETPOLL_READ | NETPOLL_ET, client.to_data())
            {
                debug!("client {}: netpoll modify failed: {err}", client.index);
            }
            self.outbox.emit(Event::ClientWritable { client })?;
        }
        Ok(())
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
        for _ in 0..self.limits.accepts_per_wakeup {
            match self.listeners[listener].accept() {
                Ok((stream, addr)) => {
                    if let Err(err) = stream.set_nodelay(true) {
                        debug!("client: TCP_NODELAY on {addr}: {err}");
                    }
                    trace!("client: accepted {addr} on listener {listener}");
                    self.outbox.emit(Event::AcceptClient {
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
                    warn!("client: accept failed: {err}; pausing accepts for {ACCEPT_PAUSE:?}");
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return Ok(());
                }
            }
        }
        Ok(()) // budget spent; the listener stays ready for the next turn
    }

    /// Reads every client on the ready list, keeping those with data left.
    fn read_ready(&mut self) -> Result<(), Closed> {
        let mut walking = std::mem::replace(&mut self.ready, std::mem::take(&mut self.ready_spare));
        for &index in &walking {
            if self.read_conn(index)? {
                self.ready.push(index);
            } else if let Some(conn) = self.conns[index as usize].as_mut() {
                conn.in_ready = false;
            }
        }
        walking.clear();
        self.ready_spare = walking;
        Ok(())
    }

    /// Reads one client up to the per-wake-up budget. Returns true if data may
    /// be left (budget spent).
    fn read_conn(&mut self, index: u32) -> Result<bool, Closed> {
        let Some(conn) = self.conns[index as usize].as_mut() else {
            return Ok(false);
        };
        if conn.hup {
            return Ok(false);
        }
        let client = ClientRef { index, id: conn.id };
        for _ in 0..self.limits.reads_per_wakeup {
            let reason = match (&*conn.stream).read(&mut self.scratch) {
                Ok(0) => HupReason::Eof,
                Ok(n) => match self.pool.secpool_copy(&self.scratch[..n]) {
                    Ok(data) => {
                        self.outbox.emit(Event::ReadClient { client, data })?;
                        if n < self.scratch.len() && !conn.read_closed {
                            // A short read drained the socket: with
                            // edge-triggered epoll, later data brings a new
                            // edge, so the read that would only say
                            // `WouldBlock` is saved (as tokio does). Not once
                            // the peer closed: its EOF must still be read.
                            return Ok(false);
                        }
                        continue;
                    }
                    Err(err) => {
                        if let Some(suppressed) =
                            self.pool_log.allow(Instant::now(), Duration::from_secs(1))
                        {
                            error!(
                                "client {index}: {err}; dropping the client ({suppressed} more not logged)"
                            );
                        }
                        HupReason::PoolExhausted
                    }
                },
                Err(err) if would_block(&err) => return Ok(false),
                Err(err) if interrupted(&err) => continue,
                Err(err) => HupReason::Error(err.kind()),
            };
            // Stop reading; the main thread decides and sends `Del`.
            if let Err(err) = self.np.del(&*conn.stream) {
                debug!("client {index}: netpoll_del: {err}");
            }
            conn.hup = true;
            self.outbox.emit(Event::ClientHup { client, reason })?;
            return Ok(false);
        }
        Ok(true)
    }

    fn run_commands(&mut self) -> Result<Flow, Closed> {
        loop {
            let mut cmds = std::mem::take(&mut self.cmd_list);
            let received = self.cmds.event_wait(&mut cmds, 256, 0);
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
    }

    fn run_command(&mut self, cmd: ClientCmd) -> Result<Flow, Closed> {
        match cmd {
            ClientCmd::Add { client, stream } => {
                let slot = &mut self.conns[client.index as usize];
                if let Some(old) = slot {
                    error!(
                        "client {}: Add for a slot still held by id {} (bug)",
                        client.index, old.id
                    );
                    return self
                        .outbox
                        .emit(Event::ClientHup {
                            client,
                            reason: HupReason::Error(io::ErrorKind::AlreadyExists),
                        })
                        .map(|()| Flow::Continue);
                }
                let mut conn = Conn {
                    id: client.id,
                    stream,
                    in_ready: false,
                    want_write: false,
                    hup: false,
                    read_closed: false,
                };
                if let Err(err) =
                    self.np
                        .add(&*conn.stream, NETPOLL_READ | NETPOLL_ET, client.to_data())
                {
                    warn!("client {}: netpoll_add failed: {err}", client.index);
                    conn.hup = true;
                    self.outbox.emit(Event::ClientHup {
                        client,
                        reason: HupReason::Error(err.kind()),
                    })?;
                }
                *slot = Some(conn);
            }
            ClientCmd::WantWrite { client } => {
                if let Some(Some(conn)) = self.conns.get_mut(client.index as usize)
                    && conn.id == client.id
                    && !conn.hup
                {
                    conn.want_write = true;
                    let flags = NETPOLL_READ | NETPOLL_WRITE | NETPOLL_ET;
                    if let Err(err) = self.np.modify(&*conn.stream, flags, client.to_data()) {
                        debug!("client {}: netpoll modify failed: {err}", client.index);
                    }
                }
            }
            ClientCmd::Del { client } => {
                let slot = &mut self.conns[client.index as usize];
                if slot.as_ref().is_some_and(|c| c.id == client.id) {
                    let conn = slot.take().expect("checked above");
                    if !conn.hup {
                        self.np.del(&*conn.stream).ok();
                    }
                    // Dropping `conn` drops this thread's handle; the socket
                    // closes once the main thread has dropped its own.
                }
                self.outbox.emit(Event::ClientClosed { client })?;
            }
            ClientCmd::Stop => return Ok(Flow::Stop),
        }
        Ok(Flow::Continue)
    }

    fn read_signal(&mut self, i: usize) -> Result<(), Closed> {
        let (signal, pipe) = &self.signals[i];
        let mut buf = [0u8; 64];
        let mut got = false;
        loop {
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
