//! The main thread's sockets (thesis §3.5.2 `cl_flush`, §3.5.3
//! `shard_flush`): what turns a [`super::Pool`]'s decisions into system calls and
//! commands to its I/O thread.
//!
//! [`PoolIo`] owns the write side of every connection of one pool (an
//! `Arc<TcpStream>` per slot; the I/O thread holds the read side) and the
//! handle on the pool's I/O thread. At the end of every main loop iteration
//! it flushes the pool, one non-blocking `write` per connection with output,
//! and passes on the commands the pool recorded: connects, one-shot write
//! interests, closes (a close shuts the socket down first, so the peer sees
//! the end at once). It is the only place the main thread touches a socket.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;

use mio::net::TcpStream;

use super::thread::{IoCmd, IoThread};
use super::{AnyPool, PoolCmd};
use crate::com::ConnRef;

/// One pool's sockets and I/O thread, on the main thread.
#[derive(Debug)]
pub struct PoolIo {
    /// The write side of each slot's connection, while it is open.
    sockets: Vec<Option<Arc<TcpStream>>>,
    thread: IoThread,
}

impl PoolIo {
    /// Drives `thread`, whose pool has `max_conns` slots.
    pub fn new(thread: IoThread, max_conns: u32) -> PoolIo {
        PoolIo {
            sockets: (0..max_conns).map(|_| None).collect(),
            thread,
        }
    }

    /// Takes the write side of an accepted connection that got slot `conn`,
    /// and hands the read side to the I/O thread.
    pub fn adopt_accepted(&mut self, conn: ConnRef, stream: TcpStream) {
        let stream = Arc::new(stream);
        self.sockets[conn.index as usize] = Some(stream.clone());
        self.thread.command(IoCmd::Add { conn, stream });
    }

    /// Takes the write side of an outbound connection that just opened.
    pub fn adopt_connected(&mut self, conn: ConnRef, stream: Arc<TcpStream>) {
        self.sockets[conn.index as usize] = Some(stream);
    }

    /// The address listener `i` of the pool's I/O thread is bound to.
    pub fn local_addr(&self, i: usize) -> SocketAddr {
        self.thread.local_addr(i)
    }

    /// Writes the pool's output (one `write` per connection with output) and
    /// carries out its commands; the I/O thread is woken once, by
    /// [`PoolIo::wake_if_pending`].
    pub fn flush(&mut self, pool: &mut dyn AnyPool) {
        let sockets = &self.sockets;
        pool.flush_to(&mut |conn, bytes| match &sockets[conn.index as usize] {
            Some(stream) => (&**stream).write(bytes),
            None => Err(io::ErrorKind::NotConnected.into()),
        });
        for cmd in pool.take_commands() {
            let cmd = match cmd {
                PoolCmd::Connect {
                    conn,
                    target,
                    deadline,
                } => IoCmd::Connect {
                    conn,
                    target,
                    deadline,
                },
                PoolCmd::WantWrite { conn } => IoCmd::WantWrite { conn },
                PoolCmd::Close { conn } => {
                    if let Some(stream) = self.sockets[conn.index as usize].take() {
                        stream.shutdown(Shutdown::Both).ok();
                    }
                    IoCmd::Del { conn }
                }
            };
            self.thread.command(cmd);
        }
    }

    /// The main thread handled `n` bytes read on slot `index` (see
    /// `thread::ReadAhead`).
    pub fn read_done(&mut self, index: u32, n: usize) {
        self.thread.read_done(index, n);
    }

    /// Wakes the I/O thread if it was given commands since the last wake-up.
    pub fn wake_if_pending(&mut self) {
        self.thread.wake_if_pending();
    }

    /// Closes the I/O thread's listeners (the drain).
    pub fn unlisten(&mut self) {
        self.thread.unlisten();
    }

    /// New per-wake-up bounds for the I/O thread (a reload).
    pub fn tune(&self, reads_per_wakeup: u32, accepts_per_wakeup: u32) {
        self.thread.tune(reads_per_wakeup, accepts_per_wakeup);
    }

    /// Stops the I/O thread and waits for it.
    pub fn stop_and_join(&mut self) {
        self.thread.stop_and_join();
    }
}
