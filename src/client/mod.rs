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
//! (`CL_FLAG_WANT_WRITE`, port decision). A client whose queued output would
//! pass `client.out_buf_size` is a slow reader and is disconnected; the main
//! thread never waits for it.

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
    /// The proxy is shutting down.
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
            DisconnectReason::Shutdown => f.write_str("proxy shutting down"),
        }
    }
}

/// One client slot (thesis `client_t`). The read side lives on the client
/// thread; this is the main thread's part.
#[derive(Debug)]
pub struct Client {
    /// The id the slot got when last taken (thesis `id`).
    pub id: u32,
    /// `CL_FLAG_*` (thesis `flags`).
    pub flags: u32,
    /// The peer's address (`0.0.0.0:0` while the slot is free).
    pub addr: SocketAddr,
    /// Incomplete messages, for the protocol layer (thesis `in_buf`); its
    /// capacity is `client.in_buf_size`.
    pub in_buf: Vec<u8>,
    stream: Option<Arc<TcpStream>>,
    /// Queued output (thesis `out_buf`); capacity `client.out_buf_size`.
    out_buf: Vec<u8>,
    last_read_at: Instant,
}

impl Client {
    fn is_open(&self, id: u32) -> bool {
        self.flags & (CL_FLAG_IN_USE | CL_FLAG_CLOSING) == CL_FLAG_IN_USE && self.id == id
    }

    /// Bytes queued and not yet written.
    pub fn out_len(&self) -> usize {
        self.out_buf.len()
    }
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
pub struct Clients {
    slots: Vec<Client>,
    /// Free slot indices; a stack, so recently used slots are reused first.
    free: Vec<u32>,
    next_id: u32,
    /// Clients with output to write this iteration (thesis flush list).
    flush_list: Vec<u32>,
    flush_spare: Vec<u32>,
    io: ClientIo,
    in_buf_size: usize,
    out_buf_size: usize,
    idle_timeout: Duration,
    refused_since_tick: u64,
    stats: ClientStats,
}

impl Clients {
    /// Creates the pool for `client.max_clients` clients, all free, driving the
    /// client thread behind `io`. Buffers are allocated when a slot is first
    /// used and kept for its next occupants.
    pub fn new(cfg: &Config, io: ClientIo) -> Clients {
        let max_clients = cfg.client.max_clients;
        let now = Instant::now();
        Clients {
            slots: (0..max_clients)
                .map(|_| Client {
                    id: 0,
                    flags: 0,
                    addr: NO_ADDR,
                    in_buf: Vec::new(),
                    stream: None,
                    out_buf: Vec::new(),
                    last_read_at: now,
                })
                .collect(),
            free: (0..max_clients).rev().collect(),
            next_id: 1,
            flush_list: Vec::with_capacity(max_clients as usize),
            flush_spare: Vec::with_capacity(max_clients as usize),
            io,
            in_buf_size: cfg.client.in_buf_size,
            out_buf_size: cfg.client.out_buf_size,
            idle_timeout: Duration::from_millis(cfg.client.idle_timeout_ms),
            refused_since_tick: 0,
            stats: ClientStats::default(),
        }
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

    /// Handles `EVENT_ACCEPT_CLIENT` (thesis `cl_accept`): gives the connection
    /// a slot and a new id and hands the socket to the client thread, or closes
    /// it when the pool is full.
    pub fn cl_accept(
        &mut self,
        stream: TcpStream,
        addr: SocketAddr,
        now: Instant,
    ) -> Option<ClientRef> {
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
        let slot = &mut self.slots[index as usize];
        debug_assert_eq!(slot.flags, 0);
        if slot.out_buf.capacity() == 0 {
            slot.out_buf.reserve_exact(self.out_buf_size);
            slot.in_buf.reserve_exact(self.in_buf_size);
        }
        let stream = Arc::new(stream);
        slot.id = id;
        slot.flags = CL_FLAG_IN_USE;
        slot.addr = addr;
        slot.stream = Some(stream.clone());
        slot.last_read_at = now;
        let client = ClientRef { index, id };
        self.io.command(ClientCmd::Add { client, stream });
        self.stats.accepted += 1;
        debug!("client {index}: accepted {addr} (id {id})");
        Some(client)
    }

    /// The open client `client` names, if the event is not stale.
    pub fn get(&self, client: ClientRef) -> Option<&Client> {
        self.slots
            .get(client.index as usize)
            .filter(|slot| slot.is_open(client.id))
    }

    /// As [`Clients::get`], mutable.
    pub fn get_mut(&mut self, client: ClientRef) -> Option<&mut Client> {
        self.slots
            .get_mut(client.index as usize)
            .filter(|slot| slot.is_open(client.id))
    }

    /// Handles `EVENT_READ_CLIENT` (thesis `cl_read`): checks that the event is
    /// not stale and notes the activity. Returns the client for the protocol
    /// layer, or `None` for a stale event (the caller drops the data).
    pub fn cl_read(
        &mut self,
        client: ClientRef,
        num_bytes: usize,
        now: Instant,
    ) -> Option<&mut Client> {
        let slot = self.slots.get_mut(client.index as usize)?;
        if !slot.is_open(client.id) {
            return None;
        }
        slot.last_read_at = now;
        self.stats.bytes_in += num_bytes as u64;
        Some(slot)
    }

    /// Queues `bytes` for the client. Returns false if the client is not open,
    /// or was just disconnected as a slow reader.
    pub fn cl_send(&mut self, client: ClientRef, bytes: &[u8]) -> bool {
        let Some(slot) = self.slots.get_mut(client.index as usize) else {
            return false;
        };
        if !slot.is_open(client.id) {
            return false;
        }
        if slot.out_buf.len() + bytes.len() > self.out_buf_size {
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
    pub fn cl_flush(&mut self) {
        let mut list =
            std::mem::replace(&mut self.flush_list, std::mem::take(&mut self.flush_spare));
        for &index in &list {
            let slot = &mut self.slots[index as usize];
            slot.flags &= !CL_FLAG_WILL_FLUSH;
            let client = ClientRef { index, id: slot.id };
            if !slot.is_open(slot.id) || slot.out_buf.is_empty() {
                continue;
            }
            let stream = slot.stream.as_ref().expect("open slots have a stream");
            let written = loop {
                match (&**stream).write(&slot.out_buf) {
                    Err(err) if interrupted(&err) => continue,
                    result => break result,
                }
            };
            match written {
                Ok(n) => {
                    self.stats.bytes_out += n as u64;
                    if n == slot.out_buf.len() {
                        slot.out_buf.clear();
                        continue;
                    }
                    slot.out_buf.drain(..n);
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
        if !slot.out_buf.is_empty() && slot.flags & CL_FLAG_WILL_FLUSH == 0 {
            slot.flags |= CL_FLAG_WILL_FLUSH;
            self.flush_list.push(client.index);
        }
    }

    /// Handles `EVENT_HUP_CLIENT`: the client thread stopped reading.
    pub fn cl_hup(&mut self, client: ClientRef, reason: HupReason) {
        self.cl_disconnect(client, DisconnectReason::Hup(reason));
    }

    /// Disconnects a client (thesis `cl_disconnect`): shuts the socket down so
    /// the peer sees it at once, drops output, and asks the client thread to
    /// let go; the slot is freed on its confirmation. Returns false if the
    /// client was not open (already disconnecting, or a stale reference).
    pub fn cl_disconnect(&mut self, client: ClientRef, reason: DisconnectReason) -> bool {
        let Some(slot) = self.get_mut(client) else {
            return false;
        };
        let addr = slot.addr;
        match &reason {
            DisconnectReason::Hup(HupReason::Eof) | DisconnectReason::Shutdown => {
                debug!("client {} ({addr}): disconnected: {reason}", client.index);
            }
            _ => info!("client {} ({addr}): disconnected: {reason}", client.index),
        }
        slot.flags = (slot.flags | CL_FLAG_CLOSING) & !(CL_FLAG_WANT_WRITE | CL_FLAG_AUTHED);
        if let Some(stream) = slot.stream.take() {
            stream.shutdown(Shutdown::Both).ok();
        }
        slot.out_buf.clear();
        slot.in_buf.clear();
        self.stats.disconnected += 1;
        self.io.command(ClientCmd::Del { client });
        true
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
        self.free.push(client.index);
    }

    /// Once per main-loop tick: idle timeouts, and one log line for
    /// connections refused since the last tick.
    pub fn cl_tick(&mut self, now: Instant) {
        if self.refused_since_tick > 0 {
            warn!(
                "refused {} connections: all {} client slots in use (client.max_clients)",
                self.refused_since_tick,
                self.slots.len()
            );
            self.refused_since_tick = 0;
        }
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            if slot.is_open(slot.id) && now.duration_since(slot.last_read_at) > self.idle_timeout {
                let client = ClientRef {
                    index: index as u32,
                    id: slot.id,
                };
                self.cl_disconnect(client, DisconnectReason::IdleTimeout);
            }
        }
    }

    /// Disconnects every open client (shutdown).
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
