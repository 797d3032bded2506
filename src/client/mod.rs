//! The client module (thesis §3.5.2, prefix `cl`): the fixed pool of
//! `client_t` slots that the main thread owns, and (in [`thread`]) the client
//! thread that accepts and reads.
//!
//! Everything here runs on the main thread. A slot is taken in `cl_accept`
//! (refused when `client.max_clients` are in use), gets a fresh 32-bit id, and
//! goes through three states:
//!
//! ```text
//!  free ──cl_accept──▶ open ──cl_disconnect──▶ closing ──EVENT_CLOSED_CLIENT──▶ free
//! ```
//!
//! Every event names a client by slot and id ([`ClientRef`]); one that does not
//! match an open slot is stale and dropped. A slot returns to the free list
//! only when the client thread confirms it has let go of the socket, so the
//! thread never sees two owners of one slot.
//!
//! Output follows the thesis: bytes for a client are appended to its `out_buf`
//! and the client goes on the flush list (`CL_FLAG_WILL_FLUSH`); `cl_flush` at
//! the end of the main loop iteration writes each listed client with one
//! `write`. What the socket does not take waits for a one-shot writable event
//! (`CL_FLAG_WANT_WRITE`, port decision). A client whose queued output passes
//! `client.out_buf_size` is a slow reader and is disconnected; the main thread
//! never waits for it.
//!
//! The pool knows no protocol. Each slot carries a protocol session `S`
//! ([`Session`]) that is reset when the slot is taken and handed back to the
//! protocol layer when the client is disconnected ([`Clients::take_disconnected`]),
//! so the layer learns of every disconnect, including those the pool decides
//! itself (slow reader, write error, idle timeout), and can tell the shard.
//! The same pool serves the proxy's players, and in the reference programs
//! the shard's proxies and the login server's players.

pub mod thread;

use std::fmt;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpStream;

use crate::com::{ClientRef, HupReason, interrupted, would_block};
use crate::config::Config;
pub use thread::{ClientCmd, ClientIo, cl_start};

/// The slot is taken (thesis).
pub const CL_FLAG_IN_USE: u32 = 1 << 0;
/// The client is on the flush list (thesis).
pub const CL_FLAG_WILL_FLUSH: u32 = 1 << 1;
/// The client passed its auth proof (thesis; set by the protocol layer).
pub const CL_FLAG_AUTHED: u32 = 1 << 2;
/// `cl_disconnect` ran; waiting for the client thread's confirmation (port decision).
pub const CL_FLAG_CLOSING: u32 = 1 << 3;
/// Output is waiting for a writable event (port decision).
pub const CL_FLAG_WANT_WRITE: u32 = 1 << 4;

/// The address of a free slot.
const NO_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// The protocol state a slot carries. `Default` is the state of a fresh
/// connection; it is dropped (and its keys wiped) when the client goes.
pub trait Session: Default {
    /// Called just before the client's output is written, once per flush:
    /// the place to seal an open encrypted frame.
    fn before_flush(&mut self, _out: &mut Vec<u8>) {}
}

impl Session for () {}

/// Why the main thread disconnects a client; shown in its log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client thread stopped reading (peer closed, socket error).
    Hup(HupReason),
    /// Queued output passed `client.out_buf_size`.
    SlowReader,
    /// Nothing received for `client.idle_timeout_ms`.
    IdleTimeout,
    /// A write to the socket failed.
    WriteError(io::ErrorKind),
    /// The client broke a protocol rule (the text says which).
    Protocol(String),
    /// The protocol layer ended the connection for a reason that is not the
    /// client's fault (its shard went away, it logged out, ...).
    Closed(&'static str),
    /// The program is shutting down.
    Shutdown,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Hup(reason) => write!(f, "{reason}"),
            DisconnectReason::SlowReader => f.write_str("output buffer full (slow reader)"),
            DisconnectReason::IdleTimeout => f.write_str("idle timeout"),
            DisconnectReason::WriteError(kind) => write!(f, "write failed: {kind}"),
            DisconnectReason::Protocol(what) => write!(f, "protocol violation: {what}"),
            DisconnectReason::Closed(why) => f.write_str(why),
            DisconnectReason::Shutdown => f.write_str("shutting down"),
        }
    }
}

/// What the pool needs to know, from `proxy.cfg` or a reference program's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientsCfg {
    /// Slots in the pool.
    pub max_clients: u32,
    /// Most bytes queued per client.
    pub out_buf_size: usize,
    /// Bytes per read on the client thread.
    pub read_size: usize,
    /// Reads of one client per wake-up.
    pub reads_per_wakeup: u32,
    /// Accepts per wake-up.
    pub accepts_per_wakeup: u32,
    /// Idle timeout; 0 turns it off.
    pub idle_timeout_ms: u64,
    /// Events per `netpoll_wait`.
    pub netpoll_events_max: usize,
    /// Events the client thread collects before pushing.
    pub io_batch_max: usize,
}

impl ClientsCfg {
    /// The `[client]` and `[runtime]` settings of `proxy.cfg`.
    pub fn from_config(cfg: &Config) -> ClientsCfg {
        ClientsCfg {
            max_clients: cfg.client.max_clients,
            out_buf_size: cfg.client.out_buf_size,
            read_size: cfg.client.read_size,
            reads_per_wakeup: cfg.client.reads_per_wakeup,
            accepts_per_wakeup: cfg.client.accepts_per_wakeup,
            idle_timeout_ms: cfg.client.idle_timeout_ms,
            netpoll_events_max: cfg.runtime.netpoll_events_max,
            io_batch_max: cfg.runtime.io_batch_max,
        }
    }
}

/// One client slot (thesis `client_t`). The read side lives on the client
/// thread; this is the main thread's part.
#[derive(Debug)]
pub struct Client<S> {
    /// The id the slot got when last taken (thesis `id`).
    pub id: u32,
    /// `CL_FLAG_*` (thesis `flags`).
    pub flags: u32,
    /// Which listener accepted it (index in the list given to `cl_start`).
    pub listener: u32,
    /// The peer's address (`0.0.0.0:0` while the slot is free).
    pub addr: SocketAddr,
    /// Incomplete messages, for the protocol layer (thesis `in_buf`); the
    /// layer keeps it within `in_buf_size`.
    pub in_buf: Vec<u8>,
    /// The protocol layer's state for this connection (thesis: `cryptchan`,
    /// `shard`, `client_info`).
    pub session: S,
    stream: Option<Arc<TcpStream>>,
    /// Queued output (thesis `out_buf`); the bytes before `out_pos` are
    /// already written.
    out_buf: Vec<u8>,
    out_pos: usize,
    /// Most bytes queued (`out_buf_size` of its listener).
    out_max: usize,
    last_read_at: Instant,
}

impl<S> Client<S> {
    fn is_open(&self, id: u32) -> bool {
        self.flags & (CL_FLAG_IN_USE | CL_FLAG_CLOSING) == CL_FLAG_IN_USE && self.id == id
    }

    /// Bytes queued and not yet written.
    pub fn out_len(&self) -> usize {
        self.out_buf.len() - self.out_pos
    }

    /// The session, the input buffer and the output buffer at once, for a
    /// protocol step that reads one and writes the other. Only append to the
    /// output buffer (its front may hold bytes already written); after
    /// writing, call [`Clients::cl_wrote`].
    pub fn parts(&mut self) -> (&mut S, &mut Vec<u8>, &mut Vec<u8>) {
        (&mut self.session, &mut self.in_buf, &mut self.out_buf)
    }
}

/// A client the pool disconnected, with the session it had.
#[derive(Debug)]
pub struct Disconnected<S> {
    /// Which client.
    pub client: ClientRef,
    /// Its address.
    pub addr: SocketAddr,
    /// Its protocol state at the time.
    pub session: S,
    /// Why.
    pub reason: DisconnectReason,
}

/// Counters for logs and, later, metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Connections given a slot.
    pub accepted: u64,
    /// Connections refused because the pool was full.
    pub refused_full: u64,
    /// Disconnects, all reasons.
    pub disconnected: u64,
    /// Disconnects of slow readers.
    pub slow_readers: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
}

/// The client pool and flush list (the main thread's half of the client
/// module).
#[derive(Debug)]
pub struct Clients<S: Session = ()> {
    slots: Vec<Client<S>>,
    /// Free slot indices; a stack, so recently used slots are reused first.
    free: Vec<u32>,
    next_id: u32,
    /// Clients with output to write this iteration (thesis flush list).
    flush_list: Vec<u32>,
    flush_spare: Vec<u32>,
    /// Disconnects not yet taken by the protocol layer; at most one per slot.
    disconnected: Vec<Disconnected<S>>,
    io: ClientIo,
    /// Limits of one listener's connections, where they differ from the
    /// pool's, and how many it has now.
    listeners: Vec<ListenerLimits>,
    out_buf_size: usize,
    idle_timeout: Option<Duration>,
    refused_since_tick: u64,
    /// Connections refused by a listener's own limit since the last tick.
    refused_by_listener_since_tick: u64,
    /// Disconnect lines still allowed this tick, and those held back.
    log_budget: u32,
    log_suppressed: u64,
    stats: ClientStats,
}

/// One listener's own limits (see [`Clients::set_listener_limits`]).
#[derive(Clone, Copy, Debug, Default)]
struct ListenerLimits {
    /// Most bytes queued per connection; the pool's `out_buf_size` if `None`.
    out_max: Option<usize>,
    /// Most slots its connections hold at once; no limit but the pool's if
    /// `None`.
    max_conns: Option<u32>,
    /// Slots its connections hold now (from accept until the slot is free).
    open: u32,
}

/// Disconnects logged at `info` per second at most; more are counted and
/// summed up in one line.
pub const DISCONNECT_LOG_LINES_PER_TICK: u32 = 20;

impl<S: Session> Clients<S> {
    /// Creates the pool for `cfg.max_clients` clients, all free, driving the
    /// client thread behind `io`. A slot's buffers grow as its occupants need
    /// and keep their capacity for the next ones.
    pub fn new(cfg: &ClientsCfg, io: ClientIo) -> Clients<S> {
        let max_clients = cfg.max_clients;
        let now = Instant::now();
        Clients {
            slots: (0..max_clients)
                .map(|_| Client {
                    id: 0,
                    flags: 0,
                    listener: 0,
                    addr: NO_ADDR,
                    in_buf: Vec::new(),
                    session: S::default(),
                    stream: None,
                    out_buf: Vec::new(),
                    out_pos: 0,
                    out_max: cfg.out_buf_size,
                    last_read_at: now,
                })
                .collect(),
            free: (0..max_clients).rev().collect(),
            next_id: 1,
            flush_list: Vec::with_capacity(max_clients as usize),
            flush_spare: Vec::with_capacity(max_clients as usize),
            disconnected: Vec::with_capacity(64),
            io,
            listeners: Vec::new(),
            out_buf_size: cfg.out_buf_size,
            idle_timeout: (cfg.idle_timeout_ms > 0)
                .then(|| Duration::from_millis(cfg.idle_timeout_ms)),
            refused_since_tick: 0,
            refused_by_listener_since_tick: 0,
            log_budget: DISCONNECT_LOG_LINES_PER_TICK,
            log_suppressed: 0,
            stats: ClientStats::default(),
        }
    }

    /// Gives the connections of one listener their own limits, for a program
    /// serving two kinds of peers from one pool (the shard: its proxy links
    /// may queue megabytes, its direct players less; and players, on a public
    /// listener, must not be able to take the slots its links need).
    /// `out_buf_size` replaces the pool's for these connections; at most
    /// `max_conns` of them hold a slot at once, more are refused at accept.
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

    /// The client thread's handle.
    pub fn io(&mut self) -> &mut ClientIo {
        &mut self.io
    }

    /// Counters so far.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Slots taken (open or closing).
    pub fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Slots free for new connections.
    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    /// Handles `EVENT_ACCEPT_CLIENT` (thesis `cl_accept`): gives the connection
    /// a slot and a new id and hands the socket to the client thread, or closes
    /// it when the pool is full. The caller may refuse it first (thesis: "if
    /// the IP address is not in a list of allowed IP addresses").
    pub fn cl_accept(
        &mut self,
        listener: u32,
        stream: TcpStream,
        addr: SocketAddr,
        now: Instant,
    ) -> Option<ClientRef> {
        let limits = *self.listener_mut(listener);
        if limits.max_conns.is_some_and(|max| limits.open >= max) {
            self.refused_by_listener_since_tick += 1;
            self.stats.refused_full += 1;
            drop(stream);
            return None;
        }
        let Some(index) = self.free.pop() else {
            // Logged once per tick, not per connection: a flood must not also
            // flood the log.
            self.refused_since_tick += 1;
            self.stats.refused_full += 1;
            drop(stream);
            return None;
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let out_max = limits.out_max.unwrap_or(self.out_buf_size);
        self.listener_mut(listener).open += 1;
        let slot = &mut self.slots[index as usize];
        debug_assert_eq!(slot.flags, 0);
        // Buffers are not sized up front: a slot's buffers grow to what its
        // occupants needed (its high-water mark, within the limits) and keep
        // that capacity for the next ones, so a connection costs the memory
        // it uses, and steady traffic allocates nothing.
        slot.out_max = out_max;
        let stream = Arc::new(stream);
        slot.id = id;
        slot.flags = CL_FLAG_IN_USE;
        slot.listener = listener;
        slot.addr = addr;
        slot.stream = Some(stream.clone());
        slot.last_read_at = now;
        let client = ClientRef { index, id };
        self.io.command(ClientCmd::Add { client, stream });
        self.stats.accepted += 1;
        debug!("client {index}: accepted {addr} (id {id})");
        Some(client)
    }

    /// The open client `client` names, if the reference is not stale.
    pub fn get(&self, client: ClientRef) -> Option<&Client<S>> {
        self.slots
            .get(client.index as usize)
            .filter(|slot| slot.is_open(client.id))
    }

    /// As [`Clients::get`], mutable.
    pub fn get_mut(&mut self, client: ClientRef) -> Option<&mut Client<S>> {
        self.slots
            .get_mut(client.index as usize)
            .filter(|slot| slot.is_open(client.id))
    }

    /// Every open client, with its reference.
    pub fn iter_open(&self) -> impl Iterator<Item = (ClientRef, &Client<S>)> {
        self.slots.iter().enumerate().filter_map(|(index, slot)| {
            slot.is_open(slot.id).then_some((
                ClientRef {
                    index: index as u32,
                    id: slot.id,
                },
                slot,
            ))
        })
    }

    /// Handles `EVENT_READ_CLIENT` (thesis `cl_read`): checks that the event is
    /// not stale and notes the activity. Returns the client for the protocol
    /// layer, or `None` for a stale event (the caller drops the data).
    pub fn cl_read(
        &mut self,
        client: ClientRef,
        num_bytes: usize,
        now: Instant,
    ) -> Option<&mut Client<S>> {
        let slot = self.slots.get_mut(client.index as usize)?;
        if !slot.is_open(client.id) {
            return None;
        }
        slot.last_read_at = now;
        self.stats.bytes_in += num_bytes as u64;
        Some(slot)
    }

    /// After the protocol layer wrote to a client's output (through
    /// [`Client::parts`]): schedules the flush, and disconnects the client as
    /// a slow reader if its queue passed `out_buf_size`. Returns false if the
    /// client is not open or was just dropped.
    pub fn cl_wrote(&mut self, client: ClientRef) -> bool {
        let Some(slot) = self.get_mut(client) else {
            return false;
        };
        if slot.out_len() > slot.out_max {
            self.stats.slow_readers += 1;
            self.cl_disconnect(client, DisconnectReason::SlowReader);
            return false;
        }
        if slot.flags & (CL_FLAG_WILL_FLUSH | CL_FLAG_WANT_WRITE) == 0 && slot.out_len() > 0 {
            slot.flags |= CL_FLAG_WILL_FLUSH;
            self.flush_list.push(client.index);
        }
        true
    }

    /// Lets `f` write to an open client's output with its session at hand,
    /// then does what [`Clients::cl_wrote`] does. `None` if the client is not
    /// open.
    pub fn cl_write<R>(
        &mut self,
        client: ClientRef,
        f: impl FnOnce(&mut S, &mut Vec<u8>) -> R,
    ) -> Option<R> {
        let slot = self.get_mut(client)?;
        let result = f(&mut slot.session, &mut slot.out_buf);
        self.cl_wrote(client).then_some(result)
    }

    /// Queues `bytes` for the client (thesis `cl_forward_shard_packet`).
    /// Returns false if the client is not open, or would pass `out_buf_size`
    /// and was disconnected as a slow reader.
    pub fn cl_send(&mut self, client: ClientRef, bytes: &[u8]) -> bool {
        let Some(slot) = self.get_mut(client) else {
            return false;
        };
        if slot.out_len() + bytes.len() > slot.out_max {
            self.stats.slow_readers += 1;
            self.cl_disconnect(client, DisconnectReason::SlowReader);
            return false;
        }
        slot.out_buf.extend_from_slice(bytes);
        if slot.flags & (CL_FLAG_WILL_FLUSH | CL_FLAG_WANT_WRITE) == 0 {
            slot.flags |= CL_FLAG_WILL_FLUSH;
            self.flush_list.push(client.index);
        }
        true
    }

    /// Writes the output of every client on the flush list, one `write` each
    /// (thesis `cl_flush`); called at the end of every main loop iteration.
    /// The session seals its open frame first ([`Session::before_flush`]).
    pub fn cl_flush(&mut self) {
        let mut list =
            std::mem::replace(&mut self.flush_list, std::mem::take(&mut self.flush_spare));
        for &index in &list {
            let slot = &mut self.slots[index as usize];
            slot.flags &= !CL_FLAG_WILL_FLUSH;
            let client = ClientRef { index, id: slot.id };
            if !slot.is_open(slot.id) {
                continue;
            }
            slot.session.before_flush(&mut slot.out_buf);
            if slot.out_len() == 0 {
                continue;
            }
            let stream = slot.stream.as_ref().expect("open slots have a stream");
            let written = loop {
                match (&**stream).write(&slot.out_buf[slot.out_pos..]) {
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
                        continue;
                    }
                    slot.out_pos += n;
                    compact(&mut slot.out_buf, &mut slot.out_pos);
                }
                Err(err) if would_block(&err) => {}
                Err(err) => {
                    self.cl_disconnect(client, DisconnectReason::WriteError(err.kind()));
                    continue;
                }
            }
            // The socket is full: wait for one writable event.
            slot.flags |= CL_FLAG_WANT_WRITE;
            self.io.command(ClientCmd::WantWrite { client });
        }
        list.clear();
        self.flush_spare = list;
    }

    /// Handles `EVENT_WRITABLE_CLIENT`: the client can take more output.
    pub fn cl_writable(&mut self, client: ClientRef) {
        let Some(slot) = self.get_mut(client) else {
            return;
        };
        if slot.flags & CL_FLAG_WANT_WRITE == 0 {
            return;
        }
        slot.flags &= !CL_FLAG_WANT_WRITE;
        if slot.out_len() > 0 && slot.flags & CL_FLAG_WILL_FLUSH == 0 {
            slot.flags |= CL_FLAG_WILL_FLUSH;
            self.flush_list.push(client.index);
        }
    }

    /// Handles `EVENT_HUP_CLIENT`: the client thread stopped reading.
    pub fn cl_hup(&mut self, client: ClientRef, reason: HupReason) {
        self.cl_disconnect(client, DisconnectReason::Hup(reason));
    }

    /// Disconnects a client (thesis `cl_disconnect`): writes what output can
    /// go without waiting, shuts the socket down so the peer sees it at once,
    /// and asks the client thread to let go; the slot is freed on its
    /// confirmation. The session goes to [`Clients::take_disconnected`].
    /// Returns false if the client was not open.
    pub fn cl_disconnect(&mut self, client: ClientRef, reason: DisconnectReason) -> bool {
        let Some(slot) = self
            .slots
            .get_mut(client.index as usize)
            .filter(|slot| slot.is_open(client.id))
        else {
            return false;
        };
        let addr = slot.addr;
        match &reason {
            // Ordinary ends: one line per connection only when debugging.
            DisconnectReason::Hup(_) | DisconnectReason::Shutdown | DisconnectReason::Closed(_) => {
                debug!("client {} ({addr}): disconnected: {reason}", client.index);
            }
            // A rule broken or a limit hit: a clear line, but at most
            // `DISCONNECT_LOG_LINES_PER_TICK` a second; the rest are counted
            // and summed up by `cl_tick`.
            _ if self.log_budget > 0 => {
                self.log_budget -= 1;
                info!("client {} ({addr}): disconnected: {reason}", client.index);
            }
            _ => self.log_suppressed += 1,
        }
        slot.flags = (slot.flags | CL_FLAG_CLOSING) & !(CL_FLAG_WANT_WRITE | CL_FLAG_AUTHED);
        if let Some(stream) = slot.stream.take() {
            // A last message (an error, a goodbye) goes out if the socket takes
            // it now; nothing waits for it.
            slot.session.before_flush(&mut slot.out_buf);
            if slot.out_len() > 0
                && !matches!(reason, DisconnectReason::Hup(_))
                && let Ok(n) = (&*stream).write(&slot.out_buf[slot.out_pos..])
            {
                self.stats.bytes_out += n as u64;
            }
            stream.shutdown(Shutdown::Both).ok();
        }
        slot.out_buf.clear();
        slot.out_pos = 0;
        slot.in_buf.clear();
        let session = std::mem::take(&mut slot.session);
        self.stats.disconnected += 1;
        self.disconnected.push(Disconnected {
            client,
            addr,
            session,
            reason,
        });
        self.io.command(ClientCmd::Del { client });
        true
    }

    /// The clients disconnected since the last call, with their sessions, so
    /// the protocol layer can react (tell the shard). Call once per main loop
    /// iteration, after dispatching events.
    pub fn take_disconnected(&mut self) -> std::vec::Drain<'_, Disconnected<S>> {
        self.disconnected.drain(..)
    }

    /// Handles `EVENT_CLOSED_CLIENT`: the client thread let go of the socket,
    /// so the slot is free again.
    pub fn cl_closed(&mut self, client: ClientRef) {
        let Some(slot) = self.slots.get_mut(client.index as usize) else {
            return;
        };
        if slot.id != client.id || slot.flags & CL_FLAG_CLOSING == 0 {
            warn!(
                "client {}: unexpected EVENT_CLOSED_CLIENT for id {}",
                client.index, client.id
            );
            return;
        }
        slot.flags = 0;
        slot.addr = NO_ADDR;
        // A buffer that once grew past its limit (one write may overshoot it
        // before the check) is not kept that large for the next occupant.
        if slot.out_buf.capacity() > slot.out_max {
            slot.out_buf.shrink_to(slot.out_max);
        }
        let listener = slot.listener;
        let limits = self.listener_mut(listener);
        limits.open = limits.open.saturating_sub(1);
        self.free.push(client.index);
    }

    /// Once per main-loop tick: idle timeouts, and one log line for
    /// connections refused since the last tick.
    pub fn cl_tick(&mut self, now: Instant) {
        if self.refused_since_tick > 0 {
            warn!(
                "refused {} connections: all {} client slots in use (max_clients)",
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
                "{} more client disconnects not logged (over {DISCONNECT_LOG_LINES_PER_TICK} a second)",
                self.log_suppressed
            );
            self.log_suppressed = 0;
        }
        self.log_budget = DISCONNECT_LOG_LINES_PER_TICK;
        let Some(idle_timeout) = self.idle_timeout else {
            return;
        };
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.is_open(slot.id) && now.duration_since(slot.last_read_at) > idle_timeout {
                let client = ClientRef {
                    index: index as u32,
                    id: slot.id,
                };
                self.cl_disconnect(client, DisconnectReason::IdleTimeout);
            }
        }
    }

    /// Disconnects every open client.
    pub fn cl_disconnect_all(&mut self, reason: DisconnectReason) {
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.is_open(slot.id) {
                let client = ClientRef {
                    index: index as u32,
                    id: slot.id,
                };
                self.cl_disconnect(client, reason.clone());
            }
        }
    }
}

/// After a partial write: once at least half the buffer is written bytes,
/// moves the rest to the front. Each byte is moved at most about once, instead
/// of on every partial write; only called after the session has sealed its
/// frames, so no open frame's offset is invalidated.
pub(crate) fn compact(buf: &mut Vec<u8>, pos: &mut usize) {
    if *pos > 0 && *pos >= buf.len() / 2 {
        buf.drain(..*pos);
        *pos = 0;
    }
}
