//! Plumbing of the shard side (thesis §3.5.3, §3.8.1) over real loopback
//! sockets: the real runtime (shard thread, event buffer, secpool) drives a
//! test server with a shard pool kept up by the shard module's policy
//! (`ShardLinks`). A shard listener that appears late is connected within
//! about 2 s; a shard that dies is reconnected; bytes flow both ways; events
//! from an old connection are dropped; a shard that stops reading is
//! disconnected, never waited for.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use muta_proxy::com::{ConnRef, HupReason, PoolId};
use muta_proxy::config::{Config, ShardEntry};
use muta_proxy::conn::thread::IoCfg;
use muta_proxy::conn::{AnyPool, DisconnectReason, Pool, PoolCfg};
use muta_proxy::runtime::{Runtime, RuntimeCfg, Server};
use muta_proxy::secpool::SecpoolConfig;
use muta_proxy::shard::{SLOTS_PER_LINK, ShardLinks};
use util::{free_port, init_logger, loopback, test_config};

/// The test's server: a shard pool and the links that keep it up; it
/// records connects, reads and losses.
struct Links {
    clients: Pool<()>,
    shards: Pool<()>,
    links: ShardLinks,
    /// Bytes of every EVENT_READ_SHARD, with their connection.
    reads: Vec<(ConnRef, Vec<u8>)>,
    connects: Vec<(ConnRef, Instant)>,
    gone: Vec<(ConnRef, DisconnectReason)>,
}

impl Server for Links {
    fn pools(&mut self) -> (&mut dyn AnyPool, Option<&mut dyn AnyPool>) {
        (&mut self.clients, Some(&mut self.shards))
    }

    fn on_accept(&mut self, _: u32, _: SocketAddr, _: Instant) -> Option<ConnRef> {
        None
    }

    fn on_connected(&mut self, conn: ConnRef, _now: Instant) {
        assert!(self.links.connected(conn).is_some());
        self.connects.push((conn, Instant::now()));
    }

    fn on_read(&mut self, conn: ConnRef, data: &mut [u8], now: Instant) {
        if self.shards.read(conn, data.len(), now).is_some() {
            self.reads.push((conn, data.to_vec()));
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.links.next_timer()
    }

    fn on_timers(&mut self, now: Instant) {
        self.links.connect_due(&mut self.shards, now);
    }

    fn settle(&mut self, now: Instant) {
        for gone in self.shards.take_disconnected() {
            self.links.gone(gone.conn, &gone.reason, now);
            self.gone.push((gone.conn, gone.reason));
        }
    }
}

struct Main {
    rt: Runtime,
    srv: Links,
}

impl Main {
    fn start(cfg: &Config, ports: &[u16]) -> Main {
        init_logger();
        let entries: Vec<ShardEntry> = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| ShardEntry {
                line: i + 1,
                host: "127.0.0.1".to_string(),
                port,
                key: None,
            })
            .collect();
        let io = |pool, max_conns| IoCfg {
            pool,
            max_conns,
            read_size: cfg.shard.read_size,
            reads_per_wakeup: cfg.shard.reads_per_wakeup,
            accepts_per_wakeup: 1,
            netpoll_events_max: 64,
            io_batch_max: cfg.runtime.io_batch_max,
            read_ahead_max: 0,
            send_buffer: 0,
            user_timeout_ms: 0,
        };
        let runtime_cfg = RuntimeCfg {
            secpool: SecpoolConfig {
                bytes_max: cfg.runtime.secpool_bytes_max,
                block_size_max: cfg.secpool_block_size_max(),
                free_blocks_max: cfg.runtime.secpool_free_blocks_max,
            },
            event_buffer_capacity: cfg.runtime.event_buffer_capacity,
            event_wait_max: 256,
            client: io(PoolId::Client, 1),
            shard: Some(io(PoolId::Shard, (entries.len() * SLOTS_PER_LINK) as u32)),
        };
        let rt = Runtime::start(&runtime_cfg, Vec::new(), Vec::new()).unwrap();
        let pool = |max_conns| PoolCfg {
            max_conns,
            out_buf_size: cfg.shard.out_buf_size,
            idle_timeout: None,
            connect_timeout: Duration::from_millis(cfg.shard.connect_timeout_ms),
        };
        let now = Instant::now();
        let retry = Duration::from_millis(cfg.shard.connect_retry_ms);
        Main {
            rt,
            srv: Links {
                clients: Pool::new(PoolId::Client, &pool(1), now),
                shards: Pool::new(
                    PoolId::Shard,
                    &pool((entries.len() * SLOTS_PER_LINK) as u32),
                    now,
                ),
                links: ShardLinks::new(&entries, retry, now),
                reads: Vec::new(),
                connects: Vec::new(),
                gone: Vec::new(),
            },
        }
    }

    fn turn(&mut self, timeout_ms: u64) {
        assert!(
            self.rt
                .turn(&mut self.srv, Some(Duration::from_millis(timeout_ms)))
        );
    }

    /// Turns until `done`, failing after `timeout`.
    fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&Links) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.srv) {
            assert!(Instant::now() < deadline, "timed out waiting");
            self.turn(20);
        }
    }

    /// The shard link that is up, if one is.
    fn up(&self) -> Option<ConnRef> {
        self.srv.links.up().next()
    }

    fn stop(mut self) {
        self.rt.shutdown(&mut self.srv);
    }
}

fn accept(listener: &TcpListener) -> std::net::TcpStream {
    listener.set_nonblocking(false).unwrap();
    let (stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

#[test]
fn a_shard_that_appears_late_is_connected_within_about_two_seconds() {
    let cfg = test_config();
    let port = free_port();
    let mut main = Main::start(&cfg, &[port]);
    // The first attempt (at start) finds nothing listening.
    std::thread::sleep(Duration::from_millis(300));
    main.turn(0);
    assert!(main.srv.connects.is_empty());
    let listener = TcpListener::bind(loopback(port)).unwrap();
    let appeared = Instant::now();
    main.run_until(Duration::from_secs(6), |m| !m.connects.is_empty());
    let after = main.srv.connects[0].1 - appeared;
    // The retry period is 2 s; allow a loaded machine some slack.
    assert!(
        after <= Duration::from_millis(3500),
        "connected {after:?} after the listener appeared"
    );
    assert_eq!(main.srv.connects[0].0.pool, PoolId::Shard);
    assert_eq!(main.up(), Some(main.srv.connects[0].0));
    let _shard = accept(&listener);
    main.stop();
}

#[test]
fn bytes_flow_both_ways_and_a_dead_shard_is_reconnected() {
    let cfg = test_config();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut main = Main::start(&cfg, &[port]);
    main.run_until(Duration::from_secs(5), |m| m.connects.len() == 1);
    let mut shard = accept(&listener);
    let first = main.srv.connects[0].0;

    // Shard to main: EVENT_READ_SHARD.
    shard.write_all(b"hello from the shard").unwrap();
    main.run_until(Duration::from_secs(5), |m| {
        m.reads.iter().flat_map(|(_, b)| b.iter()).count() == 20
    });
    assert!(main.srv.reads.iter().all(|(s, _)| *s == first));
    // Main to shard: send, then shard_flush at the end of the turn.
    assert!(main.srv.shards.send(first, b"hello from the proxy"));
    main.turn(0);
    let mut got = [0u8; 20];
    shard.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello from the proxy");

    // The shard dies, and comes back after half a second.
    drop(shard);
    drop(listener);
    main.run_until(Duration::from_secs(5), |m| m.gone.len() == 1);
    assert_eq!(
        main.srv.gone[0],
        (first, DisconnectReason::Hup(HupReason::Eof))
    );
    assert!(!main.srv.shards.send(first, b"nobody there"));
    let died = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let listener = TcpListener::bind(loopback(port)).unwrap();
    main.run_until(Duration::from_secs(6), |m| m.connects.len() == 2);
    let second = main.srv.connects[1].0;
    assert_ne!(second, first, "a new connection, a new reference");
    let gap = main.srv.connects[1].1 - died;
    assert!(
        gap >= Duration::from_millis(1500),
        "reconnected after {gap:?}: sooner than the retry delay"
    );
    assert!(
        gap <= Duration::from_millis(4000),
        "reconnected after {gap:?}"
    );

    // Events naming the old connection are dropped.
    assert!(main.srv.shards.read(first, 1, Instant::now()).is_none());
    assert!(
        !main
            .srv
            .shards
            .disconnect(first, DisconnectReason::Hup(HupReason::Eof))
    );
    let mut shard = accept(&listener);
    assert!(main.srv.shards.send(second, b"again"));
    main.turn(0);
    let mut got = [0u8; 5];
    shard.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"again");
    main.stop();
}

#[test]
fn a_shard_dropped_by_the_main_thread_is_reconnected() {
    let cfg = test_config();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut main = Main::start(&cfg, &[port]);
    main.run_until(Duration::from_secs(5), |m| m.connects.len() == 1);
    let mut shard = accept(&listener);
    let first = main.srv.connects[0].0;
    assert!(
        main.srv
            .shards
            .disconnect(first, DisconnectReason::Protocol("test".into()))
    );
    main.turn(0);
    // The shard sees the connection end...
    let mut buf = [0u8; 1];
    assert!(matches!(shard.read(&mut buf), Ok(0) | Err(_)));
    // ...and a new one arrives after the retry delay.
    main.run_until(Duration::from_secs(6), |m| m.connects.len() == 2);
    assert_ne!(main.srv.connects[1].0, first);
    let _shard = accept(&listener);
    main.stop();
}

#[test]
fn a_shard_that_stops_reading_is_disconnected_not_waited_for() {
    let mut cfg = test_config();
    cfg.shard.out_buf_size = 64 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut main = Main::start(&cfg, &[port]);
    main.run_until(Duration::from_secs(5), |m| m.connects.len() == 1);
    let _shard = accept(&listener); // accepted, never read
    let link = main.srv.connects[0].0;
    let chunk = vec![1u8; 16 * 1024];
    let start = Instant::now();
    while main.srv.shards.send(link, &chunk) {
        main.turn(0);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stalled shard never dropped"
        );
    }
    main.turn(0);
    assert_eq!(main.up(), None);
    assert_eq!(main.srv.gone[0], (link, DisconnectReason::SlowReader));
    main.stop();
}
