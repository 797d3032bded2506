//! The thesis's threading model as one runtime every program shares (thesis
//! §3.4 "Architecture", §3.4.3 the main loop, §3.5.1 `com_init` /
//! `com_destroy`): the event buffer, secpool, the client thread and (for
//! programs that open connections) the shard thread, and the main thread's
//! loop that drains the buffer into a [`Server`].
//!
//! A [`Server`] is a program's main-thread state machine: the proxy, the
//! reference shard, the login server. It never touches a socket or a
//! thread. The loop does, in this order, every iteration:
//!
//! 1. `event_wait`, until events arrive, the next timer is due or the
//!    once-a-second tick ([`MAIN_TICK`]);
//! 2. dispatch each event: accepts, connects and reads to the server;
//!    writability, hang-ups and close confirmations to the pool they name;
//!    every secpool block is freed when its event is dropped;
//! 3. the tick (idle timeouts and refusal summaries of the pools, then the
//!    server's), and the server's own timers;
//! 4. `settle`: the server reacts to every disconnect of the iteration;
//!    then `before_flush` (output the server batches itself) and `settle`
//!    again for what that dropped;
//! 5. flush: each pool's output, one `write` per connection (thesis
//!    `cl_flush`, `shard_flush`), its commands to its I/O thread, and one
//!    wake-up per I/O thread that was given commands.
//!
//! Signals arrive as `EVENT_SIGNAL`, in order with everything else: SIGHUP
//! asks the server for a [`Job`] (the proxy's reload), run on a `reload`
//! thread whose result comes back as `EVENT_JOB_DONE`; the first SIGTERM or
//! SIGINT asks the server how long to drain ([`Server::on_drain`]), closes
//! the listeners and ends the loop once [`Server::drained`] or at that
//! deadline; a second one ends it at once. systemd hears of each
//! (`notify`).
//!
//! **Invariant:** the main thread never blocks on an I/O thread: its
//! commands are `try_push`ed into queues sized so they cannot fill, the
//! waker is one eventfd write, and every socket is non-blocking.

use std::any::Any;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;
use mio::net::{TcpListener, UnixStream};
use signal_hook::consts::SIGHUP;

use crate::com::{ComEventBuf, ConnRef, Event, PoolId, signal_name};
use crate::conn::thread::{IoCfg, io_start};
use crate::conn::wire::PoolIo;
use crate::conn::{AnyPool, DisconnectReason};
use crate::event_buf::EventBuf;
use crate::notify;
use crate::secpool::{Secpool, SecpoolConfig};

/// How often the main loop runs its tick.
pub const MAIN_TICK: Duration = Duration::from_millis(1000);

/// A program's main-thread state: what the runtime drives. Every method gets
/// the time from the loop (`now`), never from the clock, so a test can drive
/// a server on a virtual clock.
pub trait Server {
    /// The client thread's pool, and the shard thread's if the program has
    /// one.
    fn pools(&mut self) -> (&mut dyn AnyPool, Option<&mut dyn AnyPool>);

    /// `EVENT_ACCEPT_CLIENT` (thesis `cl_accept`): a slot for the
    /// connection, or `None` to refuse it (the runtime closes it).
    fn on_accept(&mut self, listener: u32, peer: SocketAddr, now: Instant) -> Option<ConnRef>;

    /// `EVENT_CONNECT_*`: an outbound connection the server asked for is open.
    fn on_connected(&mut self, _conn: ConnRef, _now: Instant) {}

    /// `EVENT_READ_*` (thesis `cl_read`, `shard_read`): bytes from a
    /// connection. They may be changed in place (decrypted); the block goes
    /// back to secpool after the call.
    fn on_read(&mut self, conn: ConnRef, data: &mut [u8], now: Instant);

    /// Once per [`MAIN_TICK`], after the pools' own tick.
    fn on_tick(&mut self, _now: Instant) {}

    /// The earliest time [`Server::on_timers`] has something to do.
    fn next_timer(&self) -> Option<Instant> {
        None
    }

    /// Every iteration: the timers that are due (reconnects).
    fn on_timers(&mut self, _now: Instant) {}

    /// Every iteration, after the events: react to the disconnects of the
    /// pools (tell the other side), until none are left.
    fn settle(&mut self, now: Instant);

    /// Every iteration, just before the pools are flushed: the place for
    /// output the server batches itself (the shard's proxy module seals
    /// each player's messages here). `settle` runs again after it.
    fn before_flush(&mut self, _now: Instant) {}

    /// Shutdown begins: by default every client connection is disconnected,
    /// so the server's `settle` tells whoever must know.
    fn on_shutdown(&mut self, _now: Instant) {
        self.pools().0.disconnect_all(DisconnectReason::Shutdown);
    }

    /// SIGHUP: the server may hand back a [`Job`] (reading its configuration
    /// files) for the runtime to run on a thread of its own; the result
    /// comes back as [`Server::on_job_done`]. By default SIGHUP is logged
    /// and ignored (it must never kill the process: `kill -HUP` is every
    /// operator's reflex for "reload").
    fn on_hangup(&mut self, _now: Instant) -> Option<Job> {
        info!("SIGHUP received: nothing to reload in this program");
        None
    }

    /// `EVENT_JOB_DONE`: the result of the job `on_hangup` gave.
    fn on_job_done(&mut self, _result: Box<dyn Any + Send>, _now: Instant) {}

    /// New per-wake-up bounds for the I/O threads, once, after a reload
    /// changed them.
    fn take_io_tuning(&mut self) -> Option<IoTuning> {
        None
    }

    /// The first SIGTERM or SIGINT: the drain begins (the listeners are
    /// closed by the runtime). Returns how long the runtime waits for
    /// [`Server::drained`] before it stops anyway; zero (the default) stops
    /// at once.
    fn on_drain(&mut self, _now: Instant) -> Duration {
        Duration::ZERO
    }

    /// During the drain: true once nothing is left to wait for.
    fn drained(&self) -> bool {
        true
    }

    /// True if the server wants [`Server::publish`] at every tick.
    fn publishes(&self) -> bool {
        false
    }

    /// Once per tick, after `on_tick`, if [`Server::publishes`]: the
    /// runtime's own figures, for the server's metrics snapshot.
    fn publish(&mut self, _rt: &RuntimeStats, _now: Instant) {}
}

/// What the runtime knows of itself, for a server's metrics.
#[derive(Clone, Debug)]
pub struct RuntimeStats {
    /// When the runtime started.
    pub started: Instant,
    /// Events in the event buffer now.
    pub event_buffer_len: usize,
    /// Its capacity.
    pub event_buffer_capacity: usize,
    /// `event_push` calls that found it full and waited.
    pub event_push_waits: u64,
    /// Bytes secpool holds.
    pub secpool_bytes_held: usize,
    /// Its cap.
    pub secpool_bytes_max: usize,
    /// Each size class.
    pub secpool_classes: Vec<crate::secpool::ClassStats>,
}

/// Work the runtime runs off the main thread for a server (see
/// [`Server::on_hangup`]).
pub type Job = Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>;

/// The I/O threads' per-wake-up bounds (see [`Server::take_io_tuning`]):
/// `(reads_per_wakeup, accepts_per_wakeup)` for the client thread, and the
/// shard thread's if there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoTuning {
    /// The client thread's.
    pub client: (u32, u32),
    /// The shard thread's.
    pub shard: Option<(u32, u32)>,
}

/// The sizes of the runtime, from `proxy.cfg` or a reference program's flags.
#[derive(Clone, Copy, Debug)]
pub struct RuntimeCfg {
    /// secpool's limits.
    pub secpool: SecpoolConfig,
    /// Events the event buffer holds.
    pub event_buffer_capacity: usize,
    /// Events per `event_wait`.
    pub event_wait_max: usize,
    /// The client thread.
    pub client: IoCfg,
    /// The shard thread, if the program opens connections.
    pub shard: Option<IoCfg>,
}

/// The event buffer, secpool, the I/O threads and the main thread's sockets
/// (thesis `com_init`).
#[derive(Debug)]
pub struct Runtime {
    evbuf: Arc<ComEventBuf>,
    secpool: &'static Secpool,
    client: PoolIo,
    shard: Option<PoolIo>,
    events: Vec<Event>,
    event_wait_max: usize,
    next_tick: Instant,
    running: bool,
    /// The drain's deadline, once the first SIGTERM or SIGINT arrived.
    draining: Option<Instant>,
    started: Instant,
    /// A job (`on_hangup`) is running: another SIGHUP waits for it.
    job_running: bool,
}

impl Runtime {
    /// Creates secpool and the event buffer and starts the client thread
    /// (thesis `cl_start`, accepting on `listeners` and reading `signals`)
    /// and, if configured, the shard thread (`shard_start`).
    pub fn start(
        cfg: &RuntimeCfg,
        listeners: Vec<TcpListener>,
        signals: Vec<(i32, UnixStream)>,
    ) -> io::Result<Runtime> {
        let secpool = Secpool::new(cfg.secpool).leak();
        let evbuf: Arc<ComEventBuf> = Arc::new(EventBuf::new(cfg.event_buffer_capacity));
        let client = io_start(&cfg.client, listeners, signals, evbuf.clone(), secpool)?;
        let client = PoolIo::new(client, cfg.client.max_conns);
        let shard = match &cfg.shard {
            Some(shard) => {
                let thread = io_start(shard, Vec::new(), Vec::new(), evbuf.clone(), secpool)?;
                Some(PoolIo::new(thread, shard.max_conns))
            }
            None => None,
        };
        Ok(Runtime {
            evbuf,
            secpool,
            client,
            shard,
            events: Vec::with_capacity(cfg.event_wait_max),
            event_wait_max: cfg.event_wait_max,
            next_tick: Instant::now() + MAIN_TICK,
            running: true,
            draining: None,
            started: Instant::now(),
            job_running: false,
        })
    }

    /// The event buffer; pushing `Event::Signal` into it stops the loop, as a
    /// real signal does.
    pub fn event_buf(&self) -> Arc<ComEventBuf> {
        self.evbuf.clone()
    }

    /// The address listener `i` of the client thread is bound to.
    pub fn local_addr(&self, i: usize) -> SocketAddr {
        self.client.local_addr(i)
    }

    /// Bytes secpool holds now.
    pub fn secpool_bytes(&self) -> usize {
        self.secpool.bytes_held()
    }

    /// The runtime's own figures (see [`RuntimeStats`]).
    pub fn stats(&self) -> RuntimeStats {
        RuntimeStats {
            started: self.started,
            event_buffer_len: self.evbuf.len(),
            event_buffer_capacity: self.evbuf.capacity(),
            event_push_waits: self.evbuf.push_waits(),
            secpool_bytes_held: self.secpool.bytes_held(),
            secpool_bytes_max: self.secpool.bytes_max(),
            secpool_classes: self.secpool.stats(),
        }
    }

    fn io(&mut self, pool: PoolId) -> Option<&mut PoolIo> {
        match pool {
            PoolId::Client => Some(&mut self.client),
            PoolId::Shard => self.shard.as_mut(),
        }
    }

    /// The main thread's event loop (thesis §3.4.3); returns after a signal or
    /// when the event buffer is closed.
    pub fn run<S: Server>(&mut self, server: &mut S) {
        while self.turn(server, None) {}
    }

    /// One iteration of the main loop (see the module docs), waiting at most
    /// `max_wait` for events (besides the timers' own limit). False once a
    /// signal arrived or the event buffer is closed.
    pub fn turn<S: Server>(&mut self, server: &mut S, max_wait: Option<Duration>) -> bool {
        if !self.running {
            return false;
        }
        let now = Instant::now();
        let timeout_ms = if pools_have_disconnects(server) {
            0 // a flush found a dead connection: settle it now
        } else {
            let mut wake_at = server
                .next_timer()
                .map_or(self.next_tick, |t| t.min(self.next_tick));
            if let Some(max) = max_wait {
                wake_at = wake_at.min(now + max);
            }
            ms_until(wake_at, now)
        };
        let mut events = std::mem::take(&mut self.events);
        if self
            .evbuf
            .event_wait(&mut events, self.event_wait_max, timeout_ms)
            .is_err()
        {
            self.running = false;
            return false;
        }
        let now = Instant::now();
        for ev in events.drain(..) {
            self.dispatch(server, ev, now);
        }
        self.events = events;
        if now >= self.next_tick {
            let (client, shard) = server.pools();
            client.tick(now);
            if let Some(shard) = shard {
                shard.tick(now);
            }
            server.on_tick(now);
            if server.publishes() {
                server.publish(&self.stats(), now);
            }
            // Blocks a burst left idle go back to the system.
            let released = self.secpool.trim_idle();
            if released > 0 {
                log::debug!(
                    "secpool: {released} idle blocks released; {} bytes held",
                    self.secpool.bytes_held()
                );
            }
            self.next_tick = now + MAIN_TICK;
        }
        server.on_timers(now);
        server.settle(now);
        server.before_flush(now);
        server.settle(now);
        self.flush(server);
        if let Some(deadline) = self.draining {
            self.check_drain(server, deadline, now);
        }
        self.running
    }

    /// SIGTERM or SIGINT: the first begins the drain (or stops at once if
    /// the server has none), the second stops at once.
    fn on_stop_signal<S: Server>(&mut self, server: &mut S, signal: i32, now: Instant) {
        if self.draining.is_some() {
            info!("{} received again: stopping now", signal_name(signal));
            self.running = false;
            return;
        }
        let allowed = server.on_drain(now);
        if allowed.is_zero() {
            info!("{} received, shutting down", signal_name(signal));
            notify::stopping("shutting down");
            self.running = false;
            return;
        }
        info!(
            "{} received: draining (no new connections; up to {allowed:?}, a second signal \
             stops at once)",
            signal_name(signal)
        );
        notify::stopping("draining");
        self.client.unlisten();
        self.draining = Some(now + allowed);
    }

    fn check_drain<S: Server>(&mut self, server: &mut S, deadline: Instant, now: Instant) {
        if server.drained() {
            info!("drained; shutting down");
            self.running = false;
        } else if now >= deadline {
            info!("drain time is up; shutting down with output still queued");
            self.running = false;
        }
    }

    /// SIGHUP: runs the server's job, if it gives one, on a thread of its
    /// own, which posts the result to the event buffer like any I/O thread.
    fn on_hangup<S: Server>(&mut self, server: &mut S, now: Instant) {
        if self.job_running {
            info!("SIGHUP received while a reload is still running: ignored");
            return;
        }
        if self.draining.is_some() {
            info!("SIGHUP received while draining: ignored");
            return;
        }
        let Some(job) = server.on_hangup(now) else {
            return;
        };
        let evbuf = self.evbuf.clone();
        let spawned = std::thread::Builder::new()
            .name("reload".to_string())
            .spawn(move || {
                let result = job();
                // Closed: the process is stopping; the result is not needed.
                let _ = evbuf.event_push([Event::JobDone { result }]);
            });
        match spawned {
            Ok(_) => self.job_running = true,
            Err(err) => {
                log::error!("SIGHUP: cannot start the reload thread: {err}");
                notify::ready("running; the last reload could not start (see the log)");
            }
        }
    }

    /// Dispatches one event on its type (the `switch (e->type)` of thesis
    /// §3.4.3). Event data (secpool blocks) is freed when `ev` is dropped.
    fn dispatch<S: Server>(&mut self, server: &mut S, ev: Event, now: Instant) {
        match ev {
            Event::Accepted {
                pool,
                listener,
                stream,
                addr,
            } => {
                // Only the client thread is given listeners (`Runtime::start`).
                debug_assert_eq!(pool, PoolId::Client, "an accept on the shard thread");
                // Refused: dropping the stream closes it.
                if let Some(conn) = server.on_accept(listener, addr, now) {
                    self.client.adopt_accepted(conn, stream);
                }
            }
            Event::Connected { conn, stream, peer } => {
                let opened =
                    pool_of(server, conn.pool).is_some_and(|p| p.connected(conn, peer, now));
                if opened && let Some(io) = self.io(conn.pool) {
                    io.adopt_connected(conn, stream);
                    server.on_connected(conn, now);
                }
            }
            Event::Read { conn, mut data } => {
                let n = data.len();
                server.on_read(conn, data.as_mut_slice(), now);
                if let Some(io) = self.io(conn.pool) {
                    io.read_done(conn.index, n);
                }
            }
            Event::Writable { conn } => {
                if let Some(pool) = pool_of(server, conn.pool) {
                    pool.writable(conn);
                }
            }
            Event::Hup { conn, reason } => {
                if let Some(pool) = pool_of(server, conn.pool) {
                    pool.hup(conn, reason);
                }
            }
            Event::Closed { conn } => {
                if let Some(pool) = pool_of(server, conn.pool) {
                    pool.closed(conn);
                }
            }
            Event::Signal { signal: SIGHUP } => self.on_hangup(server, now),
            Event::Signal { signal } => self.on_stop_signal(server, signal, now),
            Event::JobDone { result } => {
                self.job_running = false;
                server.on_job_done(result, now);
                if let Some(tuning) = server.take_io_tuning() {
                    self.client.tune(tuning.client.0, tuning.client.1);
                    if let (Some(io), Some((reads, accepts))) = (self.shard.as_ref(), tuning.shard)
                    {
                        io.tune(reads, accepts);
                    }
                }
            }
        }
    }

    /// Thesis `cl_flush()` and `shard_flush()`: each pool's output, one
    /// `write` per connection, and its commands; then one wake-up per I/O
    /// thread that was given commands.
    fn flush<S: Server>(&mut self, server: &mut S) {
        let (client, shard) = server.pools();
        self.client.flush(client);
        if let (Some(io), Some(shard)) = (self.shard.as_mut(), shard) {
            io.flush(shard);
        }
        self.client.wake_if_pending();
        if let Some(io) = self.shard.as_mut() {
            io.wake_if_pending();
        }
    }

    /// Stops everything (thesis `com_destroy`): the server's shutdown (every
    /// client disconnected, whoever must know told), a last flush, then the
    /// event buffer is closed (waking an I/O thread blocked in `event_push`)
    /// and both I/O threads stopped and joined.
    pub fn shutdown<S: Server>(&mut self, server: &mut S) {
        let now = Instant::now();
        let started = now;
        server.on_shutdown(now);
        server.settle(now);
        server.before_flush(now);
        server.settle(now);
        self.flush(server);
        self.evbuf.close();
        self.client.stop_and_join();
        if let Some(io) = self.shard.as_mut() {
            io.stop_and_join();
        }
        info!("stopped in {:?}", started.elapsed());
    }
}

fn pool_of<S: Server>(server: &mut S, id: PoolId) -> Option<&mut dyn AnyPool> {
    let (client, shard) = server.pools();
    match id {
        PoolId::Client => Some(client),
        PoolId::Shard => shard,
    }
}

fn pools_have_disconnects<S: Server>(server: &mut S) -> bool {
    let (client, shard) = server.pools();
    client.has_disconnected() || shard.is_some_and(|s| s.has_disconnected())
}

/// Milliseconds from `now` until `at`, rounded up so the wait does not end
/// just before it (and spin).
fn ms_until(at: Instant, now: Instant) -> i32 {
    let left = at.saturating_duration_since(now);
    let ms = left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 != 0);
    ms.min(i32::MAX as u128) as i32
}

/// A program's server and its runtime, ready to run on the main thread.
#[derive(Debug)]
pub struct Node<S: Server> {
    /// The program's state.
    pub server: S,
    /// Its threads and sockets.
    pub runtime: Runtime,
}

impl<S: Server> Node<S> {
    /// Runs the main loop until a signal (or `Event::Signal`) arrives.
    pub fn main_loop(&mut self) {
        self.runtime.run(&mut self.server);
    }

    /// Stops the node; see [`Runtime::shutdown`].
    pub fn shutdown(mut self) {
        self.runtime.shutdown(&mut self.server);
    }

    /// The event buffer (see [`Runtime::event_buf`]).
    pub fn event_buf(&self) -> Arc<ComEventBuf> {
        self.runtime.event_buf()
    }

    /// The address listener `i` is bound to.
    pub fn local_addr(&self, i: usize) -> SocketAddr {
        self.runtime.local_addr(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_rounded_up_to_the_millisecond() {
        let now = Instant::now();
        assert_eq!(ms_until(now, now), 0);
        assert_eq!(ms_until(now - Duration::from_secs(1), now), 0);
        assert_eq!(ms_until(now + Duration::from_micros(1), now), 1);
        assert_eq!(ms_until(now + Duration::from_millis(5), now), 5);
    }
}
