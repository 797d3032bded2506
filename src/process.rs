//! The process around a program's main thread, shared by `muta-proxy`,
//! `muta-shard` and `muta-login` (the program side of thesis §3.4): logging,
//! the panic hook, signals, the thread named `main`, and exit codes.
//!
//! [`run_node`] is the whole of their `main` after flag parsing: set up the
//! logger and the panic hook, route SIGINT and SIGTERM into socket pairs the
//! client thread polls (they arrive as `EVENT_SIGNAL`, in order with
//! everything else), start the node on a thread named `main`, run it until a
//! signal, shut it down, and turn the outcome into the exit code: 0 after a
//! signal, 1 when start-up fails. (2, bad usage, is the flag parser's.)

use std::io::{self, Write as _};

use log::{LevelFilter, error, warn};
use mio::net::UnixStream;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

pub use crate::com::signal_name;

use crate::runtime::{Node, Server};

/// Runs a node as a program: see the module docs. `start` gets the signal
/// pipes for its client thread; its error is the start-up failure's line.
pub fn run_node<S, F>(program: &'static str, level: LevelFilter, start: F) -> i32
where
    S: Server,
    F: FnOnce(Vec<(i32, UnixStream)>) -> io::Result<Node<S>> + Send + 'static,
{
    init_logger(level);
    install_panic_abort_hook();
    let signals = match signal_pipes(&[SIGINT, SIGTERM, SIGHUP]) {
        Ok(signals) => signals,
        Err(err) => {
            error!("{program}: cannot install signal handlers: {err}");
            return 1;
        }
    };
    run_on_main_thread(move || {
        let mut node = match start(signals) {
            Ok(node) => node,
            Err(err) => {
                error!("{program}: cannot start: {err}");
                return 1;
            }
        };
        // Listening, threads running: a `Type=notify` unit is started.
        crate::notify::ready("running");
        node.main_loop();
        node.shutdown();
        0
    })
}

/// Runs `body` on a thread named `main` and waits for it. The thread the
/// process started with keeps the program's name, which `ps`, `pgrep` and
/// systemd match on, so it cannot also be called `main`; this way every thread
/// that works carries its role's name (`main`, `client`, `shard`) in `top -H`,
/// `perf report --sort comm` and gdb.
pub fn run_on_main_thread(body: impl FnOnce() -> i32 + Send + 'static) -> i32 {
    let main = std::thread::Builder::new()
        .name("main".to_string())
        .spawn(body);
    match main {
        // A panic aborts the process (see `install_panic_abort_hook`), so a
        // join error is only reachable if the hook could not be installed.
        Ok(main) => main.join().unwrap_or(1),
        Err(err) => {
            eprintln!("cannot start the main thread: {err}");
            1
        }
    }
}

/// Sets up env_logger: `RUST_LOG` if set, else `level`. Lines carry the
/// thread name (`main`, `client`, `shard`), so the threading model shows in
/// the log.
///
/// Started by systemd with its output to the journal (`JOURNAL_STREAM` set),
/// a line has no timestamp of its own (the journal has one) and starts with
/// its syslog priority, `<3>` to `<7>` (sd-daemon(3)), so `journalctl -p
/// warning` finds the warnings and errors.
pub fn init_logger(level: LevelFilter) {
    let env = env_logger::Env::default().default_filter_or(level.as_str());
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    // Without RUST_LOG the level is `log`'s own maximum (set below), so a
    // reload can raise it as well as lower it (env_logger's filter would
    // stay where it started).
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let mut builder = env_logger::Builder::from_env(env);
    if !from_env {
        builder.filter_level(LevelFilter::Trace);
    }
    let _ = builder
        .format(move |buf, record| {
            let thread = std::thread::current();
            let thread = thread.name().unwrap_or("?");
            if journal {
                let priority = syslog_priority(record.level());
                writeln!(
                    buf,
                    "<{priority}>{:<5} [{thread}] {}",
                    record.level(),
                    record.args()
                )
            } else {
                let at = buf.timestamp_millis();
                writeln!(
                    buf,
                    "{at} {:<5} [{thread}] {}",
                    record.level(),
                    record.args()
                )
            }
        })
        .try_init();
    if !from_env {
        log::set_max_level(level);
    }
}

/// The syslog priority of a log level: err, warning, info, debug.
pub fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
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
pub fn check_fd_limit(needed: u64, what: &str) {
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
             ({what}); raise it (ulimit -n, LimitNOFILE=)"
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
