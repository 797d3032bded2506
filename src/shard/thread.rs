//! The shard thread (thesis §3.5.3 `shard_start`, §3.8.1): one connection per
//! `shards.cfg` line, kept up for the life of the process.
//!
//! As in the thesis, connects are blocking calls made on their own short-lived
//! threads (named `shard-connect`), retried every `shard.connect_retry_ms`
//! (2 s) while a shard cannot be reached, and again after a connection is
//! lost. A connect thread resolves the name, connects within
//! `shard.connect_timeout_ms` in all, posts the result to this thread's
//! command queue and ends. Each attempt has an id and a deadline (the
//! timeout plus [`CONNECT_GRACE`] for the name lookup): an attempt past it is
//! given up and its late result ignored. This thread joins a connect thread
//! only once it has ended, never waiting on it, and starts no new attempt
//! while the previous thread still runs (a hung DNS lookup), so there is at
//! most one connect thread per shard.
//!
//! Once connected, the socket is shared with the main thread (which writes,
//! `shard_flush`) and read here until `WouldBlock`, at most
//! `shard.reads_per_wakeup` times per turn; reads are posted as
//! `EVENT_READ_SHARD` in secpool blocks. The rest mirrors the client thread:
//! one-shot write interest on `WantWrite`, batches pushed with `event_push`,
//! and the thread blocks only in `netpoll_wait` and `event_push`
//! (**invariant**).
//!
//! Each connection is numbered ([`ShardRef::conn_id`]); when it is lost the
//! thread posts `EVENT_HUP_SHARD` and schedules the next attempt itself. A
//! `Del` from the main thread (it dropped the shard: protocol error, stalled
//! output) does the same for the connection it names; a `Del` for an older
//! connection is ignored. Per shard at most one connect result, one
//! `WantWrite` and one `Del` are queued, so a queue of `3 * shards + 1` never
//! fills.

use std::io::{self, Read};
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::TcpStream;

use crate::client::thread::Outbox;
use crate::com::{
    ComEventBuf, Event, FOREVER, HupReason, LogLimit, ShardRef, interrupted, would_block,
};
use crate::config::ShardEntry;
use crate::event_buf::{Closed, EventBuf, TryPushError};
use crate::netpoll::{
    NETPOLL_DATA_WAKER, NETPOLL_ERR, NETPOLL_ET, NETPOLL_HUP, NETPOLL_READ, NETPOLL_WRITE, Netpoll,
    NetpollEvent, NetpollWaker,
};
use crate::secpool::Secpool;
use crate::shard::ShardsCfg;

/// Time an attempt may take beyond `shard.connect_timeout_ms`, for the name
/// lookup, before the shard thread gives up on it.
pub const CONNECT_GRACE: Duration = Duration::from_secs(1);

/// A command to the shard thread.
#[derive(Debug)]
pub enum ShardCmd {
    /// A connect thread finished (sent by the connect thread itself).
    Connected {
        /// Which shard.
        index: u32,
        /// Which attempt (a result of an abandoned attempt is ignored).
        attempt: u64,
        /// The connected, non-blocking socket, or why there is none.
        result: io::Result<std::net::TcpStream>,
    },
    /// Post one `EVENT_WRITABLE_SHARD` when the socket can take more output.
    WantWrite {
        /// Which connection.
        shard: ShardRef,
    },
    /// Drop this connection and reconnect after the retry delay.
    Del {
        /// Which connection.
        shard: ShardRef,
    },
    /// End the thread.
    Stop,
}

/// The main thread's handle on the shard thread.
#[derive(Debug)]
pub struct ShardIo {
    cmds: Arc<EventBuf<ShardCmd>>,
    waker: NetpollWaker,
    wake_pending: bool,
    thread: Option<JoinHandle<()>>,
}

impl ShardIo {
    /// Queues a command without blocking (see `ClientIo::command`).
    pub fn command(&mut self, cmd: ShardCmd) {
        match self.cmds.try_push(cmd) {
            Ok(()) => self.wake_pending = true,
            Err(TryPushError::Full(cmd)) => {
                error!("shard: command queue full, dropping {cmd:?} (bug: the bound was broken)");
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

    /// Tells the thread to stop, then waits for it. Connect threads still in
    /// a blocking connect are not waited for: they hold nothing, and their
    /// result is refused by the closed queue. Safe to call twice.
    pub fn stop_and_join(&mut self) {
        self.command(ShardCmd::Stop);
        self.cmds.close();
        self.waker.wake();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("shard thread panicked");
        }
    }
}

/// The shard thread's state for one `shards.cfg` line.
struct Slot {
    entry: ShardEntry,
    /// Connect attempts so far; also the id of the latest.
    attempts: u64,
    /// Number of the last connection made (0 before the first).
    conn_id: u32,
    state: SlotState,
    /// The connect thread of an earlier attempt, until it has ended.
    lingering: Option<JoinHandle<()>>,
}

enum SlotState {
    /// Not connected; the next attempt starts at this time.
    Waiting { next_attempt: Instant },
    /// A connect thread runs attempt `attempt`; given up at `deadline`.
    Connecting {
        started: Instant,
        deadline: Instant,
        attempt: u64,
        thread: JoinHandle<()>,
    },
    /// Connected and registered.
    Connected(Conn),
}

struct Conn {
    conn_id: u32,
    stream: Arc<TcpStream>,
    in_ready: bool,
    want_write: bool,
    /// The shard closed or the socket failed: read to the end.
    read_closed: bool,
}

struct ShardThread {
    np: Netpoll,
    ev_list: Vec<NetpollEvent>,
    slots: Vec<Slot>,
    ready: Vec<u32>,
    ready_spare: Vec<u32>,
    cmds: Arc<EventBuf<ShardCmd>>,
    cmd_list: Vec<ShardCmd>,
    waker: NetpollWaker,
    outbox: Outbox,
    pool: &'static Secpool,
    scratch: Box<[u8]>,
    retry: Duration,
    connect_timeout: Duration,
    reads_per_wakeup: u32,
    pool_log: LogLimit,
}

/// Starts the shard thread (thesis `shard_start`), named `shard`; the first
/// connect attempts start at once.
pub fn shard_start(
    entries: &[ShardEntry],
    cfg: &ShardsCfg,
    evbuf: Arc<ComEventBuf>,
    pool: &'static Secpool,
) -> io::Result<ShardIo> {
    let np = Netpoll::init(cfg.netpoll_events_max)?;
    let waker = np.waker();
    let cmds = Arc::new(EventBuf::new(3 * entries.len() + 1));
    let now = Instant::now();
    let thread = ShardThread {
        ev_list: Vec::with_capacity(np.max_events()),
        np,
        slots: entries
            .iter()
            .map(|entry| Slot {
                entry: entry.clone(),
                attempts: 0,
                conn_id: 0,
                state: SlotState::Waiting { next_attempt: now },
                lingering: None,
            })
            .collect(),
        ready: Vec::with_capacity(entries.len()),
        ready_spare: Vec::with_capacity(entries.len()),
        cmds: cmds.clone(),
        cmd_list: Vec::with_capacity(16),
        waker: waker.clone(),
        outbox: Outbox::new(evbuf, cfg.io_batch_max),
        pool,
        scratch: vec![0; cfg.read_size].into_boxed_slice(),
        retry: Duration::from_millis(cfg.connect_retry_ms),
        connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
        reads_per_wakeup: cfg.reads_per_wakeup,
        pool_log: LogLimit::default(),
    };
    let handle = thread::Builder::new()
        .name("shard".to_string())
        .spawn(move || thread.run())?;
    Ok(ShardIo {
        cmds,
        waker,
        wake_pending: false,
        thread: Some(handle),
    })
}

/// Connects to a shard with a blocking connect (thesis §3.8.1), trying each
/// address the name resolves to, all within `timeout`.
fn shard_connect(entry: &ShardEntry, timeout: Duration) -> io::Result<std::net::TcpStream> {
    let deadline = Instant::now() + timeout;
    let mut last_err = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
    for addr in (entry.host.as_str(), entry.port).to_socket_addrs()? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        match std::net::TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_nonblocking(true)?;
                return Ok(stream);
            }
            Err(err) => last_err = err,
        }
    }
    Err(last_err)
}

impl ShardThread {
    fn run(mut self) {
        debug!("shard: thread started, {} shards", self.slots.len());
        match self.run_loop() {
            Ok(()) => debug!("shard: stopped"),
            Err(Closed) => debug!("shard: event buffer closed, stopping"),
        }
    }

    fn run_loop(&mut self) -> Result<(), Closed> {
        loop {
            self.expire_connects();
            self.start_due_connects();
            let timeout = self.wait_timeout();
            if let Err(err) = self.np.wait(&mut self.ev_list, timeout) {
                // See the client thread: the one exception to "block only in
                // netpoll and event_push", for a broken epoll fd.
                error!("shard: netpoll_wait failed: {err}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            for i in 0..self.ev_list.len() {
                let ev = self.ev_list[i];
                if ev.data == NETPOLL_DATA_WAKER {
                    if !self.run_commands()? {
                        return Ok(());
                    }
                } else {
                    self.conn_event(ShardRef::from_data(ev.data), ev.events)?;
                }
            }
            self.read_ready()?;
            self.outbox.flush()?;
        }
    }

    /// 0 with reads left over; else until the next connect attempt is due or
    /// the next running one must be given up.
    fn wait_timeout(&self) -> i32 {
        if !self.ready.is_empty() {
            return 0;
        }
        let now = Instant::now();
        self.slots
            .iter()
            .filter_map(|slot| match slot.state {
                SlotState::Waiting { next_attempt } => Some(next_attempt),
                SlotState::Connecting { deadline, .. } => Some(deadline),
                SlotState::Connected(_) => None,
            })
            .min()
            .map_or(FOREVER, |next| {
                let left = next.saturating_duration_since(now);
                (left.as_millis() as i32).saturating_add(i32::from(!left.is_zero()))
            })
    }

    /// Gives up on attempts past their deadline; their late results will be
    /// ignored.
    fn expire_connects(&mut self) {
        let now = Instant::now();
        for slot in &mut self.slots {
            let SlotState::Connecting {
                deadline, started, ..
            } = slot.state
            else {
                continue;
            };
            if now < deadline {
                continue;
            }
            info!(
                "shard {}: connect attempt {} gave no answer in {:?}; retrying",
                slot.entry.addr(),
                slot.attempts,
                now - started
            );
            let waiting = SlotState::Waiting {
                next_attempt: (started + self.retry).max(now),
            };
            if let SlotState::Connecting { thread, .. } =
                std::mem::replace(&mut slot.state, waiting)
            {
                slot.lingering = Some(thread);
            }
        }
    }

    fn start_due_connects(&mut self) {
        let now = Instant::now();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let SlotState::Waiting { next_attempt } = slot.state else {
                continue;
            };
            if next_attempt > now {
                continue;
            }
            if let Some(thread) = slot.lingering.take() {
                if !thread.is_finished() {
                    debug!(
                        "shard {}: the previous connect thread is still running",
                        slot.entry.addr()
                    );
                    slot.lingering = Some(thread);
                    slot.state = SlotState::Waiting {
                        next_attempt: now + self.retry,
                    };
                    continue;
                }
                let _ = thread.join(); // it has ended: this does not block
            }
            slot.attempts += 1;
            let attempt = slot.attempts;
            debug!(
                "shard {}: connecting (attempt {attempt})",
                slot.entry.addr()
            );
            let entry = slot.entry.clone();
            let timeout = self.connect_timeout;
            let cmds = self.cmds.clone();
            let waker = self.waker.clone();
            let spawned = thread::Builder::new()
                .name("shard-connect".to_string())
                .spawn(move || {
                    let result = shard_connect(&entry, timeout);
                    let cmd = ShardCmd::Connected {
                        index: index as u32,
                        attempt,
                        result,
                    };
                    if cmds.try_push(cmd).is_ok() {
                        waker.wake();
                    }
                });
            slot.state = match spawned {
                Ok(thread) => SlotState::Connecting {
                    started: now,
                    deadline: now + self.connect_timeout + CONNECT_GRACE,
                    attempt,
                    thread,
                },
                Err(err) => {
                    error!(
                        "shard {}: cannot start a connect thread: {err}",
                        slot.entry.addr()
                    );
                    SlotState::Waiting {
                        next_attempt: now + self.retry,
                    }
                }
            };
        }
    }

    fn conn_event(&mut self, shard: ShardRef, flags: u32) -> Result<(), Closed> {
        let Some(slot) = self.slots.get_mut(shard.index as usize) else {
            return Ok(());
        };
        let SlotState::Connected(conn) = &mut slot.state else {
            return Ok(());
        };
        if conn.conn_id != shard.conn_id {
            return Ok(());
        }
        conn.read_closed |= flags & (NETPOLL_HUP | NETPOLL_ERR) != 0;
        if flags & (NETPOLL_READ | NETPOLL_HUP | NETPOLL_ERR) != 0 && !conn.in_ready {
            conn.in_ready = true;
            self.ready.push(shard.index);
        }
        if flags & NETPOLL_WRITE != 0 && conn.want_write {
            conn.want_write = false;
            if let Err(err) =
                self.np
                    .modify(&*conn.stream, NETPOLL_READ | NETPOLL_ET, shard.to_data())
            {
                debug!("shard {}: netpoll modify failed: {err}", slot.entry.addr());
            }
            self.outbox.emit(Event::ShardWritable { shard })?;
        }
        Ok(())
    }

    fn read_ready(&mut self) -> Result<(), Closed> {
        let mut walking = std::mem::replace(&mut self.ready, std::mem::take(&mut self.ready_spare));
        for &index in &walking {
            if self.read_conn(index)? {
                self.ready.push(index);
            } else if let SlotState::Connected(conn) = &mut self.slots[index as usize].state {
                conn.in_ready = false;
            }
        }
        walking.clear();
        self.ready_spare = walking;
        Ok(())
    }

    /// Reads one shard up to the budget; true if data may be left.
    fn read_conn(&mut self, index: u32) -> Result<bool, Closed> {
        let slot = &mut self.slots[index as usize];
        let SlotState::Connected(conn) = &mut slot.state else {
            return Ok(false);
        };
        let shard = ShardRef {
            index,
            conn_id: conn.conn_id,
        };
        for _ in 0..self.reads_per_wakeup {
            let reason = match (&*conn.stream).read(&mut self.scratch) {
                Ok(0) => HupReason::Eof,
                Ok(n) => match self.pool.secpool_copy(&self.scratch[..n]) {
                    Ok(data) => {
                        self.outbox.emit(Event::ReadShard { shard, data })?;
                        if n < self.scratch.len() && !conn.read_closed {
                            // Drained: see `client::thread`'s `read_conn`.
                            return Ok(false);
                        }
                        continue;
                    }
                    Err(err) => {
                        if let Some(suppressed) =
                            self.pool_log.allow(Instant::now(), Duration::from_secs(1))
                        {
                            error!(
                                "shard {}: {err}; dropping the connection ({suppressed} more not logged)",
                                slot.entry.addr()
                            );
                        }
                        HupReason::PoolExhausted
                    }
                },
                Err(err) if would_block(&err) => return Ok(false),
                Err(err) if interrupted(&err) => continue,
                Err(err) => HupReason::Error(err.kind()),
            };
            warn!("shard {}: connection lost: {reason}", slot.entry.addr());
            self.np.del(&*conn.stream).ok();
            slot.state = SlotState::Waiting {
                next_attempt: Instant::now() + self.retry,
            };
            self.outbox.emit(Event::ShardHup { shard, reason })?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Runs queued commands; false on `Stop`.
    fn run_commands(&mut self) -> Result<bool, Closed> {
        loop {
            let mut cmds = std::mem::take(&mut self.cmd_list);
            let received = self.cmds.event_wait(&mut cmds, 64, 0);
            let mut keep_running = true;
            for cmd in cmds.drain(..) {
                keep_running &= self.run_command(cmd)?;
            }
            self.cmd_list = cmds;
            match received {
                _ if !keep_running => return Ok(false),
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(Closed) => return Ok(false),
            }
        }
    }

    fn run_command(&mut self, cmd: ShardCmd) -> Result<bool, Closed> {
        match cmd {
            ShardCmd::Connected {
                index,
                attempt,
                result,
            } => self.connected(index, attempt, result)?,
            ShardCmd::WantWrite { shard } => {
                if let Some(slot) = self.slots.get_mut(shard.index as usize)
                    && let SlotState::Connected(conn) = &mut slot.state
                    && conn.conn_id == shard.conn_id
                {
                    conn.want_write = true;
                    let flags = NETPOLL_READ | NETPOLL_WRITE | NETPOLL_ET;
                    if let Err(err) = self.np.modify(&*conn.stream, flags, shard.to_data()) {
                        debug!("shard {}: netpoll modify failed: {err}", slot.entry.addr());
                    }
                }
            }
            ShardCmd::Del { shard } => {
                if let Some(slot) = self.slots.get_mut(shard.index as usize)
                    && let SlotState::Connected(conn) = &slot.state
                    && conn.conn_id == shard.conn_id
                {
                    self.np.del(&*conn.stream).ok();
                    info!(
                        "shard {}: connection dropped by the proxy; reconnecting in {:?}",
                        slot.entry.addr(),
                        self.retry
                    );
                    slot.state = SlotState::Waiting {
                        next_attempt: Instant::now() + self.retry,
                    };
                }
            }
            ShardCmd::Stop => return Ok(false),
        }
        Ok(true)
    }

    fn connected(
        &mut self,
        index: u32,
        attempt: u64,
        result: io::Result<std::net::TcpStream>,
    ) -> Result<(), Closed> {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return Ok(());
        };
        let now = Instant::now();
        let started = match slot.state {
            SlotState::Connecting {
                started,
                attempt: current,
                ..
            } if current == attempt => started,
            _ => {
                debug!(
                    "shard {}: result of abandoned attempt {attempt} ignored",
                    slot.entry.addr()
                );
                return Ok(());
            }
        };
        let waiting = SlotState::Waiting {
            next_attempt: (started + self.retry).max(now),
        };
        if let SlotState::Connecting { thread, .. } = std::mem::replace(&mut slot.state, waiting) {
            // The thread posted its result as its last act; it is joined once
            // it has ended, before the next attempt.
            slot.lingering = Some(thread);
        }
        let stream = match result {
            Ok(stream) => Arc::new(TcpStream::from_std(stream)),
            Err(err) => {
                info!(
                    "shard {}: connect attempt {attempt} failed: {err}; retrying in {:?}",
                    slot.entry.addr(),
                    self.retry
                );
                return Ok(());
            }
        };
        slot.conn_id = slot.conn_id.wrapping_add(1).max(1);
        let shard = ShardRef {
            index,
            conn_id: slot.conn_id,
        };
        if let Err(err) = self
            .np
            .add(&*stream, NETPOLL_READ | NETPOLL_ET, shard.to_data())
        {
            warn!("shard {}: netpoll_add failed: {err}", slot.entry.addr());
            return Ok(());
        }
        info!(
            "shard {}: connected (attempt {attempt}, connection {})",
            slot.entry.addr(),
            shard.conn_id
        );
        slot.state = SlotState::Connected(Conn {
            conn_id: shard.conn_id,
            stream: stream.clone(),
            in_ready: false,
            want_write: false,
            read_closed: false,
        });
        self.outbox.emit(Event::ShardConnected { shard, stream })
    }
}
