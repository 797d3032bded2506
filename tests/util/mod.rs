//! Helpers shared by the integration tests: a loopback configuration, a
//! logger, bounded waiting. Every socket is on 127.0.0.1 and every port is
//! chosen by the kernel (port 0).

#![allow(dead_code)] // each test binary uses its own subset

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use muta_proxy::config::{Config, Secret};
use muta_proxy::secpool::{Secpool, SecpoolConfig};

/// Defaults, except: listen on a kernel-chosen loopback port, a test
/// password, and per-address limits that let every test's players share
/// 127.0.0.1 (the limits have tests of their own, which set them).
pub fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.proxy.listen = "127.0.0.1:0".parse().unwrap();
    cfg.shard.password = Secret::new("test-password");
    cfg.client.max_conns_per_addr = 100_000;
    cfg.client.new_conns_per_addr_per_s = 100_000;
    cfg.client.new_conns_per_addr_burst = 100_000;
    cfg
}

/// A secpool sized as the daemon sizes it for `cfg`.
pub fn pool_for(cfg: &Config) -> &'static Secpool {
    Secpool::new(SecpoolConfig {
        bytes_max: cfg.runtime.secpool_bytes_max,
        block_size_max: cfg.secpool_block_size_max(),
        free_blocks_max: cfg.runtime.secpool_free_blocks_max,
    })
    .leak()
}

/// Logs to the test's captured output: warnings, or what `RUST_LOG` says.
pub fn init_logger() {
    // Warnings by default: a failing test's output then says what the nodes
    // saw (a dropped link, a slow reader); passing tests' output is hidden.
    let env = env_logger::Env::default().default_filter_or("warn");
    let _ = env_logger::Builder::from_env(env).is_test(true).try_init();
}

/// Polls `f` every few milliseconds until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then closed).
/// For a listener a test starts *later*; there is a small window in which
/// another process could take it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Deterministic pseudo-random bytes (xorshift), so a test's data is
/// reproducible without a dependency.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub mod daemon;
pub mod haproxy;
pub mod otc;
pub mod play;
pub mod system;
