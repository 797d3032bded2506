//! The `muta-proxy` daemon: start-up (thesis §3.5.1 `com_init`), the main
//! thread's event loop (§3.4.3), and shutdown (`com_destroy`).
//!
//! Start-up reads and validates both configuration files, creates the one
//! secpool and the main thread's event buffer, binds the client listener,
//! routes SIGINT and SIGTERM into a socket pair the client thread polls, and
//! starts the client and shard threads. Then the main thread loops (thesis
//! §3.4.3):
//!
//! ```text
//! loop {
//!     event_wait(com_event_buf, events, event_wait_max, until next tick)
//!     for each event: dispatch on its type (cl_accept, cl_read, shard_read, ...)
//!     once a second: timers (idle clients)
//!     cl_flush(); shard_flush();      // one write per peer with output
//!     wake the I/O threads that were given commands
//! }
//! ```
//!
//! The main thread owns every table; it never blocks on an I/O thread: its
//! commands go through `try_push` into queues sized so they cannot fill, and
//! its writes are non-blocking (**invariant**).
//!
//! On a signal the loop ends; shutdown disconnects the clients, closes the
//! event buffer (waking an I/O thread blocked in `event_push`), stops and joins
//! the client and shard threads, and returns exit code 0.
//!
//! The MUTA protocols are not attached yet (they arrive with cryptchan): bytes
//! read from clients and shards are accounted and dropped.

use std::ffi::OsString;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{LevelFilter, debug, error, info};
use mio::net::UnixStream;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::client::{ClientIo, Clients, DisconnectReason, cl_start};
use crate::com::{ComEventBuf, Event};
use crate::config::{self, Config, ShardEntry};
use crate::event_buf::EventBuf;
use crate::netpoll;
use crate::secpool::{Secpool, SecpoolConfig};
use crate::shard::{Shards, shard_start};

/// How often the main loop runs its timers.
pub const MAIN_TICK: Duration = Duration::from_millis(1000);

/// Usage text for `--help`.
pub const USAGE: &str = "\
muta-proxy: the MUTA proxy server (a Rust port of Partanen's thesis design)

Usage: muta-proxy [OPTIONS]

Options:
  --config FILE     proxy configuration, TOML [default: proxy.cfg]
  --shards FILE     shard list, one `shard = HOST[:PORT]` per line [default: shards.cfg]
  --check-config    validate both files and exit: 0 if valid, 1 with the error
  --version         print the version and exit
  -h, --help        print this help and exit

Logging: RUST_LOG (env_logger syntax) overrides proxy.log_level.
Signals: SIGINT and SIGTERM shut down cleanly (exit 0).
";

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `--config FILE`
    pub config: PathBuf,
    /// `--shards FILE`
    pub shards: PathBuf,
    /// `--check-config`
    pub check_config: bool,
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run (or check) with these options.
    Run(Options),
    /// `--help`
    Help,
    /// `--version`
    Version,
}

/// Parses the arguments after the program name. Accepts `--flag VALUE` and
/// `--flag=VALUE`.
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, String> {
    let mut opts = Options {
        config: PathBuf::from("proxy.cfg"),
        shards: PathBuf::from("shards.cfg"),
        check_config: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| format!("argument {a:?} is not UTF-8"))?;
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<PathBuf, String> {
            match inline.clone() {
                Some(v) => Ok(PathBuf::from(v)),
                None => args
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("{name} needs a FILE")),
            }
        };
        match flag.as_str() {
            "--config" => opts.config = value("--config")?,
            "--shards" => opts.shards = value("--shards")?,
            "--check-config" => opts.check_config = true,
            "--version" => return Ok(Command::Version),
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Command::Run(opts))
}

/// The whole program: parse arguments, run, return the exit code (0 ok,
/// 1 bad configuration or start-up failure, 2 bad usage).
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    match parse_args(args) {
        Ok(Command::Run(opts)) => run_on_main_thread(opts),
        Ok(Command::Help) => {
            print!("{USAGE}");
            0
        }
        Ok(Command::Version) => {
            println!("muta-proxy {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Err(msg) => {
            eprintln!("muta-proxy: {msg}\n\n{USAGE}");
            2
        }
    }
}

/// Runs [`run`] on a thread named `main` and waits for it. The thread the
/// process started with keeps the program's name, which `ps`, `pgrep` and
/// systemd match on, so it cannot also be called `main`; this way every thread
/// that works carries its role's name (`main`, `client`, `shard`) in `top -H`,
/// `perf report --sort comm` and gdb.
fn run_on_main_thread(opts: Options) -> i32 {
    let main = std::thread::Builder::new()
        .name("main".to_string())
        .spawn(move || run(&opts));
    match main {
        // A panic aborts the process (see `install_panic_abort_hook`), so a
        // join error is only reachable if the hook could not be installed.
        Ok(main) => main.join().unwrap_or(1),
        Err(err) => {
            eprintln!("muta-proxy: cannot start the main thread: {err}");
            1
        }
    }
}

/// Loads the configuration and runs the daemon until a signal (or only checks
/// the configuration with `--check-config`).
pub fn run(opts: &Options) -> i32 {
    let (cfg, shards) = match config::load(&opts.config, &opts.shards) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("muta-proxy: {err}");
            return 1;
        }
    };
    if opts.check_config {
        println!(
            "muta-proxy: {} and {} are valid: {} shard(s), listening on {}, max_clients {}",
            opts.config.display(),
            opts.shards.display(),
            shards.len(),
            cfg.proxy.listen,
            cfg.client.max_clients
        );
        return 0;
    }
    init_logger(cfg.proxy.log_level);
    install_panic_abort_hook();
    let signals = match signal_pipes(&[SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(err) => {
            error!("cannot install signal handlers: {err}");
            return 1;
        }
    };
    let mut proxy = match Proxy::start(cfg, &shards, signals) {
        Ok(proxy) => proxy,
        Err(err) => {
            error!("cannot start: {err}");
            return 1;
        }
    };
    proxy.main_loop();
    proxy.shutdown();
    0
}

/// Sets up env_logger: `RUST_LOG` if set, else `level`. Lines carry the
/// thread name (`main`, `client`, `shard`), so the threading model shows in
/// the log.
pub fn init_logger(level: LevelFilter) {
    let env = env_logger::Env::default().default_filter_or(level.as_str());
    let _ = env_logger::Builder::from_env(env)
        .format(|buf, record| {
            let thread = std::thread::current();
            writeln!(
                buf,
                "{} {:<5} [{}] {}",
                buf.timestamp_millis(),
                record.level(),
                thread.name().unwrap_or("?"),
                record.args()
            )
        })
        .try_init();
}

/// Makes any panic, on any thread, abort the process after the message is
/// printed: a dead I/O thread must bring the daemon down, not leave the main
/// thread waiting for events that will never come. Release builds also set
/// `panic = "abort"`; this covers debug builds and is what the test checks.
pub fn install_panic_abort_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let thread = std::thread::current();
        log::error!(
            "thread '{}' panicked; aborting the daemon",
            thread.name().unwrap_or("?")
        );
        std::process::abort();
    }));
}

/// One socket pair per signal: the handler (signal-hook's, async-signal-safe)
/// writes a byte into one end; the client thread polls the other.
fn signal_pipes(signals: &[i32]) -> io::Result<Vec<(i32, UnixStream)>> {
    signals
        .iter()
        .map(|&signal| {
            let (read_end, write_end) = std::os::unix::net::UnixStream::pair()?;
            read_end.set_nonblocking(true)?;
            signal_hook::low_level::pipe::register(signal, write_end)?;
            Ok((signal, UnixStream::from_std(read_end)))
        })
        .collect()
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// The main thread's state: every table, and the event buffer it drains.
#[derive(Debug)]
pub struct Proxy {
    clients: Clients,
    shards: Shards,
    evbuf: Arc<ComEventBuf>,
    events: Vec<Event>,
    event_wait_max: usize,
    pool: &'static Secpool,
    running: bool,
}

impl Proxy {
    /// Creates the pool and event buffer, binds the listener, starts the
    /// client thread (also polling `signals`) and the shard thread.
    pub fn start(
        cfg: Config,
        shard_entries: &[ShardEntry],
        signals: Vec<(i32, UnixStream)>,
    ) -> io::Result<Proxy> {
        let pool = Secpool::new(SecpoolConfig {
            bytes_max: cfg.runtime.secpool_bytes_max,
            block_size_max: cfg.secpool_block_size_max(),
            free_blocks_max: cfg.runtime.secpool_free_blocks_max,
        })
        .leak();
        let evbuf: Arc<ComEventBuf> = Arc::new(EventBuf::new(cfg.runtime.event_buffer_capacity));
        let listener =
            netpoll::listen(cfg.proxy.listen, cfg.client.listen_backlog).map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("cannot listen on {}: {err}", cfg.proxy.listen),
                )
            })?;
        let client_io: ClientIo = cl_start(listener, signals, &cfg, evbuf.clone(), pool)?;
        info!(
            "listening for clients on {} (public address {}), max_clients {}",
            client_io.local_addr(),
            cfg.proxy.public_address,
            cfg.client.max_clients
        );
        let shard_io = shard_start(shard_entries, &cfg, evbuf.clone(), pool)?;
        Ok(Proxy {
            clients: Clients::new(&cfg, client_io),
            shards: Shards::new(&cfg, shard_entries, shard_io),
            events: Vec::with_capacity(cfg.runtime.event_wait_max),
            event_wait_max: cfg.runtime.event_wait_max,
            evbuf,
            pool,
            running: true,
        })
    }

    /// The event buffer; pushing `Event::Signal` into it stops the loop, as a
    /// real signal does.
    pub fn event_buf(&self) -> Arc<ComEventBuf> {
        self.evbuf.clone()
    }

    /// Where the client listener is bound.
    pub fn client_addr(&mut self) -> SocketAddr {
        self.clients.io().local_addr()
    }

    /// The main thread's event loop (thesis §3.4.3); returns after a signal or
    /// when the event buffer is closed.
    pub fn main_loop(&mut self) {
        let mut next_tick = Instant::now() + MAIN_TICK;
        let mut events = std::mem::take(&mut self.events);
        while self.running {
            let timeout_ms = next_tick
                .saturating_duration_since(Instant::now())
                .as_millis() as i32;
            if self
                .evbuf
                .event_wait(&mut events, self.event_wait_max, timeout_ms)
                .is_err()
            {
                break;
            }
            let now = Instant::now();
            for ev in events.drain(..) {
                self.handle_event(ev, now);
            }
            if now >= next_tick {
                self.clients.cl_tick(now);
                next_tick = now + MAIN_TICK;
            }
            self.clients.cl_flush();
            self.shards.shard_flush();
            self.clients.io().wake_if_pending();
            self.shards.io().wake_if_pending();
        }
        self.events = events;
    }

    /// Dispatches one event on its type (the `switch (e->type)` of thesis
    /// §3.4.3). Event data (secpool blocks) is freed when `ev` is dropped.
    pub fn handle_event(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::AcceptClient { stream, addr } => {
                self.clients.cl_accept(stream, addr, now);
            }
            Event::ReadClient { client, data } => {
                // No protocol yet: account the bytes, free the block.
                self.clients.cl_read(client, data.len(), now);
            }
            Event::ClientWritable { client } => self.clients.cl_writable(client),
            Event::ClientHup { client, reason } => self.clients.cl_hup(client, reason),
            Event::ClientClosed { client } => self.clients.cl_closed(client),
            Event::ShardConnected { shard, stream } => self.shards.shard_connected(shard, stream),
            Event::ReadShard { shard, data } => {
                // No protocol yet: check the connection is current, drop the bytes.
                let _ = self.shards.shard_read(shard);
                drop(data);
            }
            Event::ShardWritable { shard } => self.shards.shard_writable(shard),
            Event::ShardHup { shard, reason } => {
                self.shards.shard_hup(shard, reason);
            }
            Event::Signal { signal } => {
                info!("{} received, shutting down", signal_name(signal));
                self.running = false;
            }
        }
    }

    /// Stops the I/O threads and releases everything (thesis `com_destroy`).
    pub fn shutdown(mut self) {
        let started = Instant::now();
        info!(
            "shutdown: {} client(s), {}/{} shard(s) connected",
            self.clients.in_use(),
            self.shards.n_connected(),
            self.shards.all().len()
        );
        self.clients.cl_disconnect_all(DisconnectReason::Shutdown);
        self.evbuf.close();
        self.clients.io().stop_and_join();
        self.shards.io().stop_and_join();
        let stats = self.clients.stats();
        debug!(
            "clients: {} accepted, {} refused (full), {} bytes in, {} bytes out; secpool holds {} bytes",
            stats.accepted,
            stats.refused_full,
            stats.bytes_in,
            stats.bytes_out,
            self.pool.bytes_held()
        );
        info!("stopped in {:?}", started.elapsed());
    }
}
