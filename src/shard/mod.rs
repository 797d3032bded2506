//! The shard module (thesis §3.5.3, prefix `shard`): the main thread's view of
//! the shard connections, and (in [`thread`]) the shard thread that connects
//! and reads.
//!
//! Everything here runs on the main thread. Each `shards.cfg` line is one
//! [`Shard`]; it is connected between `EVENT_CONNECT_SHARD` and
//! `EVENT_HUP_SHARD` (or the main thread's own [`Shards::shard_disconnect`]).
//! Events carry the connection number, so a late event from a previous
//! connection is dropped.
//!
//! Output is buffered per shard and written by `shard_flush` at the end of the
//! main loop iteration with one `write` per shard, as in the thesis. The
//! backpressure rule (port decision): a shard whose queued output passes
//! `shard.out_buf_size` is not reading; it is disconnected and reconnected,
//! because one stalled link must not make the main thread wait or grow
//! without bound.
//!
//! Like the client pool, the table knows no protocol: each shard carries a
//! session `S` (reset on every new connection, sealed before each flush), and
//! every disconnect, whoever decided it, is reported through
//! [`Shards::take_disconnected`] with the session it had. The login server
//! uses the same module for its links to shards.

pub mod thread;

use std::io::Write;
use std::net::Shutdown;
use std::sync::Arc;

use log::{info, warn};
use mio::net::TcpStream;

pub use crate::client::Session;
use crate::com::{HupReason, ShardRef, interrupted, would_block};
use crate::config::{Config, ShardEntry};
pub use thread::{ShardCmd, ShardIo, shard_start};

/// The shard is on the flush list.
pub const SHARD_FLAG_WILL_FLUSH: u32 = 1 << 0;
/// Output is waiting for a writable event.
pub const SHARD_FLAG_WANT_WRITE: u32 = 1 << 1;

/// What the shard module needs to know, from `proxy.cfg` or a reference
/// program's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardsCfg {
    /// Time between connect attempts.
    pub connect_retry_ms: u64,
    /// Timeout of one connect.
    pub connect_timeout_ms: u64,
    /// Capacity of each `in_buf`.
    pub in_buf_size: usize,
    /// Most bytes queued per shard.
    pub out_buf_size: usize,
    /// Bytes per read on the shard thread.
    pub read_size: usize,
    /// Reads of one shard per wake-up.
    pub reads_per_wakeup: u32,
    /// Events per `netpoll_wait`.
    pub netpoll_events_max: usize,
    /// Events the shard thread collects before pushing.
    pub io_batch_max: usize,
}

impl ShardsCfg {
    /// The `[shard]` and `[runtime]` settings of `proxy.cfg`.
    pub fn from_config(cfg: &Config) -> ShardsCfg {
        ShardsCfg {
            connect_retry_ms: cfg.shard.connect_retry_ms,
            connect_timeout_ms: cfg.shard.connect_timeout_ms,
            in_buf_size: cfg.shard.in_buf_size,
            out_buf_size: cfg.shard.out_buf_size,
            read_size: cfg.shard.read_size,
            reads_per_wakeup: cfg.shard.reads_per_wakeup,
            netpoll_events_max: cfg.runtime.netpoll_events_max,
            io_batch_max: cfg.runtime.io_batch_max,
        }
    }
}

/// One shard, as the main thread sees it.
#[derive(Debug)]
pub struct Shard<S> {
    /// Its `shards.cfg` line.
    pub entry: ShardEntry,
    /// The current connection's number; 0 before the first.
    pub conn_id: u32,
    /// `SHARD_FLAG_*`.
    pub flags: u32,
    /// Incomplete messages, for the protocol layer; it keeps it within
    /// `in_buf_size`.
    pub in_buf: Vec<u8>,
    /// The protocol layer's state for the current connection.
    pub session: S,
    stream: Option<Arc<TcpStream>>,
    /// Queued output; the bytes before `out_pos` are already written.
    out_buf: Vec<u8>,
    out_pos: usize,
}

impl<S> Shard<S> {
    /// True while connected.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// The session, the input buffer and the output buffer at once. Only
    /// append to the output buffer; after writing, call [`Shards::shard_wrote`].
    pub fn parts(&mut self) -> (&mut S, &mut Vec<u8>, &mut Vec<u8>) {
        (&mut self.session, &mut self.in_buf, &mut self.out_buf)
    }

    /// Bytes queued and not yet written.
    pub fn out_len(&self) -> usize {
        self.out_buf.len() - self.out_pos
    }
}

/// A shard connection that ended, with the session it had.
#[derive(Debug)]
pub struct ShardDisconnected<S> {
    /// Which connection.
    pub shard: ShardRef,
    /// Its protocol state at the time.
    pub session: S,
}

/// The shard table and flush list (the main thread's half of the shard module).
#[derive(Debug)]
pub struct Shards<S: Session = ()> {
    shards: Vec<Shard<S>>,
    flush_list: Vec<u32>,
    disconnected: Vec<ShardDisconnected<S>>,
    io: ShardIo,
    in_buf_size: usize,
    out_buf_size: usize,
}

impl<S: Session> Shards<S> {
    /// One disconnected entry per `shards.cfg` line, driving the shard thread
    /// behind `io`.
    pub fn new(cfg: &ShardsCfg, entries: &[ShardEntry], io: ShardIo) -> Shards<S> {
        Shards {
            shards: entries
                .iter()
                .map(|entry| Shard {
                    entry: entry.clone(),
                    conn_id: 0,
                    flags: 0,
                    in_buf: Vec::new(),
                    session: S::default(),
                    stream: None,
                    out_buf: Vec::new(),
                    out_pos: 0,
                })
                .collect(),
            flush_list: Vec::with_capacity(entries.len()),
            disconnected: Vec::new(),
            io,
            in_buf_size: cfg.in_buf_size,
            out_buf_size: cfg.out_buf_size,
        }
    }

    /// The shard thread's handle.
    pub fn io(&mut self) -> &mut ShardIo {
        &mut self.io
    }

    /// All shards, in `shards.cfg` order.
    pub fn all(&self) -> &[Shard<S>] {
        &self.shards
    }

    /// Shards connected right now.
    pub fn n_connected(&self) -> usize {
        self.shards.iter().filter(|s| s.is_connected()).count()
    }

    /// The shard `shard` names, if it is that connection and still connected.
    pub fn get_mut(&mut self, shard: ShardRef) -> Option<&mut Shard<S>> {
        self.shards
            .get_mut(shard.index as usize)
            .filter(|s| s.conn_id == shard.conn_id && s.stream.is_some())
    }

    /// The current connection of shard `index`, if connected.
    pub fn current(&self, index: u32) -> Option<ShardRef> {
        let s = self.shards.get(index as usize)?;
        s.stream.as_ref().map(|_| ShardRef {
            index,
            conn_id: s.conn_id,
        })
    }

    /// Handles `EVENT_CONNECT_SHARD`: takes the write side of the new
    /// connection, with a fresh session.
    pub fn shard_connected(
        &mut self,
        shard: ShardRef,
        stream: Arc<TcpStream>,
    ) -> Option<&mut Shard<S>> {
        let s = self.shards.get_mut(shard.index as usize)?;
        if s.out_buf.capacity() == 0 {
            s.out_buf.reserve_exact(self.out_buf_size);
            s.in_buf.reserve_exact(self.in_buf_size);
        }
        s.conn_id = shard.conn_id;
        s.flags = 0;
        s.stream = Some(stream);
        s.out_buf.clear();
        s.out_pos = 0;
        s.in_buf.clear();
        s.session = S::default();
        Some(s)
    }

    /// Handles `EVENT_READ_SHARD` (thesis `shard_read`): checks the event is for
    /// the current connection and returns the shard for the protocol layer.
    pub fn shard_read(&mut self, shard: ShardRef) -> Option<&mut Shard<S>> {
        self.get_mut(shard)
    }

    /// After the protocol layer wrote to a shard's output: schedules the
    /// flush, and drops the connection if its queue passed `out_buf_size`.
    /// Returns false if the shard is not connected or was just dropped.
    pub fn shard_wrote(&mut self, index: u32) -> bool {
        let Some(shard) = self.current(index) else {
            return false;
        };
        let s = &mut self.shards[index as usize];
        if s.out_len() > self.out_buf_size {
            self.shard_disconnect(shard, "output buffer full: the shard is not reading");
            return false;
        }
        if s.flags & (SHARD_FLAG_WILL_FLUSH | SHARD_FLAG_WANT_WRITE) == 0 && s.out_len() > 0 {
            s.flags |= SHARD_FLAG_WILL_FLUSH;
            self.flush_list.push(index);
        }
        true
    }

    /// Lets `f` write to a connected shard's output with its session at hand,
    /// then does what [`Shards::shard_wrote`] does. `None` if not connected.
    pub fn shard_write<R>(
        &mut self,
        index: u32,
        f: impl FnOnce(&mut S, &mut Vec<u8>) -> R,
    ) -> Option<R> {
        let s = self
            .shards
            .get_mut(index as usize)
            .filter(|s| s.stream.is_some())?;
        let result = f(&mut s.session, &mut s.out_buf);
        self.shard_wrote(index).then_some(result)
    }

    /// Queues `bytes` for a connected shard (raw, for handshakes and tests).
    pub fn shard_send(&mut self, index: u32, bytes: &[u8]) -> bool {
        self.shard_write(index, |_, out| out.extend_from_slice(bytes))
            .is_some()
    }

    /// Writes every listed shard's output, one `write` each (thesis
    /// `shard_flush`), after the session seals its open frame.
    pub fn shard_flush(&mut self) {
        for i in 0..self.flush_list.len() {
            let index = self.flush_list[i];
            let s = &mut self.shards[index as usize];
            s.flags &= !SHARD_FLAG_WILL_FLUSH;
            let shard = ShardRef {
                index,
                conn_id: s.conn_id,
            };
            let Some(stream) = &s.stream else { continue };
            s.session.before_flush(&mut s.out_buf);
            if s.out_len() == 0 {
                continue;
            }
            let written = loop {
                match (&**stream).write(&s.out_buf[s.out_pos..]) {
                    Err(err) if interrupted(&err) => continue,
                    result => break result,
                }
            };
            match written {
                Ok(n) if n == s.out_len() => {
                    s.out_buf.clear();
                    s.out_pos = 0;
                    continue;
                }
                Ok(n) => {
                    s.out_pos += n;
                    crate::client::compact(&mut s.out_buf, &mut s.out_pos);
                }
                Err(err) if would_block(&err) => {}
                Err(err) => {
                    self.shard_disconnect(shard, &format!("write failed: {err}"));
                    continue;
                }
            }
            s.flags |= SHARD_FLAG_WANT_WRITE;
            self.io.command(ShardCmd::WantWrite { shard });
        }
        self.flush_list.clear();
    }

    /// Handles `EVENT_WRITABLE_SHARD`.
    pub fn shard_writable(&mut self, shard: ShardRef) {
        let Some(s) = self.get_mut(shard) else {
            return;
        };
        if s.flags & SHARD_FLAG_WANT_WRITE == 0 {
            return;
        }
        s.flags &= !SHARD_FLAG_WANT_WRITE;
        if s.out_len() > 0 {
            s.flags |= SHARD_FLAG_WILL_FLUSH;
            self.flush_list.push(shard.index);
        }
    }

    /// Handles `EVENT_HUP_SHARD`: the connection is gone (the shard thread has
    /// already scheduled the reconnect). Returns false for a stale event.
    pub fn shard_hup(&mut self, shard: ShardRef, reason: HupReason) -> bool {
        let Some(s) = self.get_mut(shard) else {
            return false;
        };
        warn!("shard {}: disconnected: {reason}", s.entry.addr());
        self.forget_connection(shard);
        true
    }

    /// Drops a connection from the main thread's side (protocol error, stalled
    /// output); the shard thread reconnects after `shard.connect_retry_ms`.
    /// Returns false if that connection was already gone.
    pub fn shard_disconnect(&mut self, shard: ShardRef, why: &str) -> bool {
        let Some(s) = self.get_mut(shard) else {
            return false;
        };
        info!(
            "shard {}: dropping connection {}: {why}",
            s.entry.addr(),
            shard.conn_id
        );
        if let Some(stream) = &s.stream {
            stream.shutdown(Shutdown::Both).ok();
        }
        self.forget_connection(shard);
        self.io.command(ShardCmd::Del { shard });
        true
    }

    fn forget_connection(&mut self, shard: ShardRef) {
        let s = &mut self.shards[shard.index as usize];
        s.stream = None;
        s.flags = 0;
        s.out_buf.clear();
        s.out_pos = 0;
        s.in_buf.clear();
        let session = std::mem::take(&mut s.session);
        self.disconnected.push(ShardDisconnected { shard, session });
    }

    /// The connections lost since the last call, with their sessions.
    pub fn take_disconnected(&mut self) -> std::vec::Drain<'_, ShardDisconnected<S>> {
        self.disconnected.drain(..)
    }
}
