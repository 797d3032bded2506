//! The `muta-proxy` daemon as a program (the program around thesis §3.4):
//! its command line and `--check-config`; the rest is shared with the
//! reference programs ([`crate::process`]).
//!
//! Start-up reads and validates both configuration files, then
//! [`process::run_node`] sets up logging, the panic hook and the signals and
//! starts the [`proxy::Proxy`] on its runtime, on a thread named `main`. On a
//! signal the main loop ends; shutdown disconnects the players (telling
//! their shards), closes the event buffer (waking an I/O thread blocked in
//! `event_push`), stops and joins the client and shard threads, and the
//! process exits 0.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::cli::FlagArgs;
use crate::{config, process, proxy};

/// Usage text for `--help`.
pub const USAGE: &str = "\
muta-proxy: the MUTA proxy server (a Rust port of Partanen's thesis design)

Usage: muta-proxy [OPTIONS]

Options:
  --config FILE     proxy configuration, TOML [default: ./proxy.cfg, or
                    /etc/muta-proxy/proxy.cfg if there is no ./proxy.cfg]
  --shards FILE     shard list, one `shard = HOST[:PORT]` per line [default:
                    ./shards.cfg, or /etc/muta-proxy/shards.cfg likewise]
  --check-config    validate both files and exit: 0 if valid, 1 with the error
  -h, --help        print this help and exit
  -V, --version     print the version (and the git revision) and exit

Logging: RUST_LOG (env_logger syntax) overrides proxy.log_level.
Signals: SIGHUP rereads both files (a file with a problem is refused and the
running configuration kept); SIGTERM or SIGINT drains (no new connection,
players closed once their output is written, at most proxy.drain_timeout_ms)
and exits 0; a second one stops at once. Under systemd (Type=notify) readiness,
reloads and stopping are reported over NOTIFY_SOCKET.
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

/// Where the configuration files are installed (`dist/muta-proxy.service`).
pub const ETC_DIR: &str = "/etc/muta-proxy";

/// A file's default path: `./NAME` if it exists, else `/etc/muta-proxy/NAME`
/// if that exists, else `./NAME` (whose absence the error then names).
pub fn default_file(name: &str) -> PathBuf {
    pick_file(
        PathBuf::from(name),
        std::path::Path::new(ETC_DIR).join(name),
    )
}

fn pick_file(here: PathBuf, etc: PathBuf) -> PathBuf {
    if !here.exists() && etc.exists() {
        etc
    } else {
        here
    }
}

/// Parses the arguments after the program name. Accepts `--flag VALUE` and
/// `--flag=VALUE`.
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, String> {
    let mut opts = Options {
        config: default_file("proxy.cfg"),
        shards: default_file("shards.cfg"),
        check_config: false,
    };
    let mut args = FlagArgs::new(args)?;
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--config" => opts.config = args.value(&flag)?.into(),
            "--shards" => opts.shards = args.value(&flag)?.into(),
            "--check-config" => opts.check_config = true,
            "--version" | "-V" => return Ok(Command::Version),
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
        Ok(Command::Run(opts)) => run(opts),
        Ok(Command::Help) => {
            print!("{USAGE}");
            0
        }
        Ok(Command::Version) => {
            println!("{}", crate::cli::version_line("muta-proxy"));
            0
        }
        Err(msg) => {
            eprintln!("muta-proxy: {msg}\n\n{USAGE}");
            2
        }
    }
}

/// Loads the configuration and runs the daemon until a signal (or only checks
/// the configuration with `--check-config`).
pub fn run(opts: Options) -> i32 {
    let loaded = match config::load_values(&opts.config, &opts.shards) {
        Ok(loaded) => loaded,
        Err(errors) => {
            for err in &errors {
                eprintln!("muta-proxy: {err}");
            }
            return 1;
        }
    };
    let running = proxy::ops::Running {
        config_path: opts.config.clone(),
        shards_path: opts.shards.clone(),
        config: loaded.config.clone(),
        values: loaded.values,
        generation: 0,
    };
    let (cfg, shards) = (loaded.config, loaded.shards);
    let warnings = config::warnings(&cfg, shards.len());
    if opts.check_config {
        for warning in &warnings {
            eprintln!("muta-proxy: warning: {warning}");
        }
        let muta = if shards.is_empty() {
            "the MUTA listener is not opened".to_string()
        } else {
            format!(
                "listening on {}, max_clients {}",
                cfg.proxy.listen, cfg.client.max_clients
            )
        };
        let otc = match cfg.otc.listen {
            Some(addr) => format!(
                "; OTC on {addr}, max_paths {}, max_sessions {}",
                cfg.otc.max_paths, cfg.otc.max_sessions
            ),
            None => String::new(),
        };
        println!(
            "muta-proxy: {} and {} are valid: {} shard(s), {muta}{otc}",
            opts.config.display(),
            opts.shards.display(),
            shards.len(),
        );
        return 0;
    }
    let level = cfg.proxy.log_level;
    // One descriptor per slot of both pools, the event buffer's worth in
    // flight, and the rest.
    let slots = proxy::client_slots(&cfg) + proxy::shard_slots(&cfg, shards.len());
    let needed = u64::from(slots) + cfg.runtime.event_buffer_capacity as u64 + 64;
    process::run_node("muta-proxy", level, move |signals| {
        for warning in &warnings {
            log::warn!("{warning}");
        }
        process::check_fd_limit(needed, "the pools' slots + event_buffer_capacity + 64");
        let mut node = proxy::start(cfg, &shards, signals)?;
        node.server.set_running(running);
        Ok(node)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_files_are_here_else_in_etc() {
        let dir = std::env::temp_dir().join(format!("muta-default-file-{}", std::process::id()));
        let (here, etc) = (dir.join("here.cfg"), dir.join("etc.cfg"));
        std::fs::create_dir_all(&dir).unwrap();
        let pick = || pick_file(here.clone(), etc.clone());
        assert_eq!(pick(), here, "neither exists: the error names ./NAME");
        std::fs::write(&etc, "").unwrap();
        assert_eq!(pick(), etc, "only /etc/muta-proxy/NAME exists");
        std::fs::write(&here, "").unwrap();
        assert_eq!(pick(), here, "./NAME wins");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
