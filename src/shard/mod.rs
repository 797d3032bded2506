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
//! backpressure rule (port decision): a shard whose queued output would pass
//! `shard.out_buf_size` is not reading; it is disconnected and reconnected,
//! because one stalled link must not make the main thread wait or grow
//! without bound.

pub mod thread;

use std::io::Write;
use std::net::Shutdown;
use std::sync::Arc;

use log::{info, warn};
use mio::net::TcpStream;

use crate::com::{HupReason, ShardRef, interrupted, would_block};
use crate::config::{Config, ShardEntry};
pub use thread::{ShardCmd, ShardIo, shard_start};

/// The shard is on the flush list.
pub const SHARD_FLAG_WILL_FLUSH: u32 = 1 << 0;
/// Output is waiting for a writable event.
pub const SHARD_FLAG_WANT_WRITE: u32 = 1 << 1;

/// One shard, as the main thread sees it.
#[derive(Debug)]
pub struct Shard {
    /// Its `shards.cfg` line.
    pub entry: ShardEntry,
    /// The current connection's number; 0 while disconnected.
    pub conn_id: u32,
    /// `SHARD_FLAG_*`.
    pub flags: u32,
    /// Incomplete messages, for the protocol layer; capacity `shard.in_buf_size`.
    pub in_buf: Vec<u8>,
    stream: Option<Arc<TcpStream>>,
    out_buf: Vec<u8>,
}

impl Shard {
    /// True while connected.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }
}

/// The shard table and flush list (the main thread's half of the shard module).
#[derive(Debug)]
pub struct Shards {
    shards: Vec<Shard>,
    flush_list: Vec<u32>,
    io: ShardIo,
    in_buf_size: usize,
    out_buf_size: usize,
}

impl Shards {
    /// One disconnected entry per `shards.cfg` line, driving the shard thread
    /// behind `io`.
    pub fn new(cfg: &Config, entries: &[ShardEntry], io: ShardIo) -> Shards {
        Shards {
            shards: entries
                .iter()
                .map(|entry| Shard {
                    entry: entry.clone(),
                    conn_id: 0,
                    flags: 0,
                    in_buf: Vec::new(),
                    stream: None,
                    out_buf: Vec::new(),
                })
                .collect(),
            flush_list: Vec::with_capacity(entries.len()),
            io,
            in_buf_size: cfg.shard.in_buf_size,
            out_buf_size: cfg.shard.out_buf_size,
        }
    }

    /// The shard thread's handle.
    pub fn io(&mut self) -> &mut ShardIo {
        &mut self.io
    }

    /// All shards, in `shards.cfg` order.
    pub fn all(&self) -> &[Shard] {
        &self.shards
    }

    /// Shards connected right now.
    pub fn n_connected(&self) -> usize {
        self.shards.iter().filter(|s| s.is_connected()).count()
    }

    /// The shard `shard` names, if it is that connection.
    pub fn get_mut(&mut self, shard: ShardRef) -> Option<&mut Shard> {
        self.shards
            .get_mut(shard.index as usize)
            .filter(|s| s.conn_id == shard.conn_id && s.stream.is_some())
    }

    /// Handles `EVENT_CONNECT_SHARD`: takes the write side of the new
    /// connection.
    pub fn shard_connected(&mut self, shard: ShardRef, stream: Arc<TcpStream>) {
        let Some(s) = self.shards.get_mut(shard.index as usize) else {
            return;
        };
        if s.out_buf.capacity() == 0 {
            s.out_buf.reserve_exact(self.out_buf_size);
            s.in_buf.reserve_exact(self.in_buf_size);
        }
        s.conn_id = shard.conn_id;
        s.flags = 0;
        s.stream = Some(stream);
        s.out_buf.clear();
        s.in_buf.clear();
    }

    /// Handles `EVENT_READ_SHARD` (thesis `shard_read`): checks the event is for
    /// the current connection and returns the shard for the protocol layer.
    pub fn shard_read(&mut self, shard: ShardRef) -> Option<&mut Shard> {
        self.get_mut(shard)
    }

    /// Queues `bytes` for a connected shard. Returns false if it is not
    /// connected, or was just disconnected for falling `shard.out_buf_size`
    /// behind.
    pub fn shard_send(&mut self, index: u32, bytes: &[u8]) -> bool {
        let Some(s) = self.shards.get_mut(index as usize) else {
            return false;
        };
        if s.stream.is_none() {
            return false;
        }
        if s.out_buf.len() + bytes.len() > self.out_buf_size {
            let shard = ShardRef {
                index,
                conn_id: s.conn_id,
            };
            self.shard_disconnect(shard, "output buffer full: the shard is not reading");
            return false;
        }
        s.out_buf.extend_from_slice(bytes);
        if s.flags & (SHARD_FLAG_WILL_FLUSH | SHARD_FLAG_WANT_WRITE) == 0 {
            s.flags |= SHARD_FLAG_WILL_FLUSH;
            self.flush_list.push(index);
        }
        true
    }

    /// Writes every listed shard's output, one `write` each (thesis
    /// `shard_flush`).
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
            if s.out_buf.is_empty() {
                continue;
            }
            let written = loop {
                match (&**stream).write(&s.out_buf) {
                    Err(err) if interrupted(&err) => continue,
                    result => break result,
                }
            };
            match written {
                Ok(n) if n == s.out_buf.len() => {
                    s.out_buf.clear();
                    continue;
                }
                Ok(n) => {
                    s.out_buf.drain(..n);
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
        if !s.out_buf.is_empty() {
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
        Self::forget_connection(s);
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
        Self::forget_connection(s);
        self.io.command(ShardCmd::Del { shard });
        true
    }

    fn forget_connection(s: &mut Shard) {
        s.stream = None;
        s.flags = 0;
        s.out_buf.clear();
        s.in_buf.clear();
    }
}
