//! A `muta-proxy` daemon run as a child process, as an operator runs it:
//! its files in a scratch directory, its log collected line by line with the
//! time each arrived, signals sent with `kill`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::wait_until;

pub const BIN: &str = env!("CARGO_BIN_EXE_muta-proxy");

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory under the target dir for one test's files.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shipped proxy.cfg with the listener on a kernel-chosen loopback port.
pub fn write_configs(dir: &Path, shard_port: u16, extra: &str) -> (PathBuf, PathBuf) {
    let shipped = std::fs::read_to_string(manifest_dir().join("proxy.cfg")).unwrap();
    let cfg = shipped.replace("listen = \"0.0.0.0:7702\"", "listen = \"127.0.0.1:0\"") + extra;
    assert!(
        cfg.contains("127.0.0.1:0"),
        "proxy.cfg no longer has the expected listen line"
    );
    let config = dir.join("proxy.cfg");
    let shards = dir.join("shards.cfg");
    std::fs::write(&config, cfg).unwrap();
    std::fs::write(&shards, format!("shard = 127.0.0.1:{shard_port}\n")).unwrap();
    (config, shards)
}

pub fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `muta-proxy --check-config` on these two files.
pub fn check_config(config: &Path, shards: &Path) -> (ExitStatus, String, String) {
    run(&[
        "--check-config",
        "--config",
        config.to_str().unwrap(),
        "--shards",
        shards.to_str().unwrap(),
    ])
}

/// A running daemon whose stderr lines are collected with their arrival time.
pub struct Daemon {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Daemon {
    pub fn start(config: &Path, shards: &Path) -> Daemon {
        Daemon::start_logging(config, shards, "info")
    }

    /// As [`Daemon::start`], with `RUST_LOG` set to `filter`.
    pub fn start_logging(config: &Path, shards: &Path, filter: &str) -> Daemon {
        Daemon::start_env(config, shards, &[("RUST_LOG", filter)])
    }

    /// As [`Daemon::start`], with these environment variables set.
    pub fn start_env(config: &Path, shards: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(BIN)
            .args([
                "--config",
                config.to_str().unwrap(),
                "--shards",
                shards.to_str().unwrap(),
            ])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Daemon { child, lines }
    }

    pub fn lines_matching(&self, needle: &str) -> Vec<(Instant, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .cloned()
            .collect()
    }

    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        assert!(
            wait_until(timeout, || !self.lines_matching(needle).is_empty()),
            "no log line containing {needle:?}; log so far:\n{}",
            self.log()
        );
        self.lines_matching(needle)[0].1.clone()
    }

    pub fn log(&self) -> String {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The client listener's address, from the start-up log line.
    pub fn client_addr(&self) -> SocketAddr {
        let line = self.wait_for_line("listening for clients on ", Duration::from_secs(10));
        let rest = line.split("listening for clients on ").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{name} {pid}")])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// (thread name, system call it is in or "running") for each thread.
    pub fn threads(&self) -> Vec<(String, String)> {
        let dir = format!("/proc/{}/task", self.child.id());
        let mut threads = Vec::new();
        for task in std::fs::read_dir(dir).unwrap() {
            let path = task.unwrap().path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let syscall = std::fs::read_to_string(path.join("syscall")).unwrap_or_default();
            let first = syscall.split_whitespace().next().unwrap_or("?").to_string();
            threads.push((comm.trim().to_string(), first));
        }
        threads
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
