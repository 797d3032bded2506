//! The `muta-proxy` daemon as a program: the command line, logging, signals,
//! the panic hook, and the order of start-up and shutdown around
//! [`Proxy`], which holds the main thread's state and loop
//! (thesis §3.4.3).
//!
//! Start-up reads and validates both configuration files, routes SIGINT and
//! SIGTERM into socket pairs the client thread polls (they arrive as
//! `EVENT_SIGNAL`, in order with everything else), and starts the proxy on a
//! thread named `main`. On a signal the main loop ends; shutdown disconnects
//! the players (telling their shards), closes the event buffer (waking an I/O
//! thread blocked in `event_push`), stops and joins the client and shard
//! threads, and the process exits 0.

use std::ffi::OsString;
use std::io::{self, Write as _};
use std::path::PathBuf;

use log::{LevelFilter, error, warn};
use mio::net::UnixStream;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::cli::FlagArgs;
use crate::config;
use crate::proxy::Proxy;

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
    let mut args = FlagArgs::new(args)?;
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--config" => opts.config = args.value(&flag)?.into(),
            "--shards" => opts.shards = args.value(&flag)?.into(),
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
        Err(errors) => {
            for err in &errors {
                eprintln!("muta-proxy: {err}");
            }
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
    check_fd_limit(
        u64::from(cfg.client.max_clients) + cfg.runtime.event_buffer_capacity as u64 + 64,
    );
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

/// Warns when the soft limit on open files is below `needed`: past it,
/// `accept` fails with `EMFILE` and players are refused. Read from
/// `/proc/self/limits` (no `unsafe` needed); a systemd unit should set
/// `LimitNOFILE=`.
pub fn check_fd_limit(needed: u64) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(soft) = soft
        && soft < needed
    {
        warn!(
            "the open-file limit is {soft}, below the {needed} this configuration can use \
             (max_clients + event_buffer_capacity + 64); raise it (ulimit -n, LimitNOFILE=)"
        );
    }
}

/// One socket pair per signal: the handler (signal-hook's, async-signal-safe)
/// writes a byte into one end; the client thread polls the other.
pub fn signal_pipes(signals: &[i32]) -> io::Result<Vec<(i32, UnixStream)>> {
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

/// The name of a signal the daemon handles, for its log line.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
