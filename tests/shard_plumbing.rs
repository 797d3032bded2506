//! Plumbing of the shard side (thesis §3.5.3, §3.8.1) over real loopback
//! sockets: the test plays the main thread with the real shard thread. A shard
//! listener that appears late is connected within about 2 s; a shard that dies
//! is reconnected; bytes flow both ways; events from an old connection are
//! dropped.

mod util;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muta_proxy::com::{ComEventBuf, Event, HupReason, ShardRef};
use muta_proxy::config::{Config, ShardEntry};
use muta_proxy::event_buf::EventBuf;
use muta_proxy::shard::{Shards, ShardsCfg, shard_start};
use util::{free_port, init_logger, loopback, pool_for, test_config};

struct Main {
    shards: Shards,
    evbuf: Arc<ComEventBuf>,
    events: Vec<Event>,
    /// (shard, bytes) of every EVENT_READ_SHARD for the current connection.
    reads: Vec<(ShardRef, Vec<u8>)>,
    connects: Vec<(ShardRef, Instant)>,
    hups: Vec<(ShardRef, HupReason)>,
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
        let evbuf: Arc<ComEventBuf> = Arc::new(EventBuf::new(cfg.runtime.event_buffer_capacity));
        let shards_cfg = ShardsCfg::from_config(cfg);
        let io = shard_start(&entries, &shards_cfg, evbuf.clone(), pool_for(cfg)).unwrap();
        Main {
            shards: Shards::new(&shards_cfg, &entries, io),
            evbuf,
            events: Vec::new(),
            reads: Vec::new(),
            connects: Vec::new(),
            hups: Vec::new(),
        }
    }

    fn turn(&mut self, timeout_ms: i32) {
        self.evbuf
            .event_wait(&mut self.events, 256, timeout_ms)
            .unwrap();
        for ev in self.events.drain(..) {
            match ev {
                Event::ShardConnected { shard, stream } => {
                    self.shards.shard_connected(shard, stream);
                    self.shards.take_disconnected().for_each(drop);
                    self.connects.push((shard, Instant::now()));
                }
                Event::ReadShard { shard, data } => {
                    if self.shards.shard_read(shard).is_some() {
                        self.reads.push((shard, data.to_vec()));
                    }
                }
                Event::ShardWritable { shard } => self.shards.shard_writable(shard),
                Event::ShardHup { shard, reason } => {
                    if self.shards.shard_hup(shard, reason) {
                        self.hups.push((shard, reason));
                    }
                }
                other => panic!("unexpected {}", other.name()),
            }
        }
        self.shards.shard_flush();
        self.shards.io().wake_if_pending();
    }

    /// Turns until `done`, failing after `timeout`.
    fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&Main) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting");
            self.turn(20);
        }
    }

    fn stop(mut self) {
        self.evbuf.close();
        self.shards.io().stop_and_join();
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
    assert!(main.connects.is_empty());
    let listener = TcpListener::bind(loopback(port)).unwrap();
    let appeared = Instant::now();
    main.run_until(Duration::from_secs(6), |m| !m.connects.is_empty());
    let after = main.connects[0].1 - appeared;
    // The retry period is 2 s; allow a loaded machine some slack.
    assert!(
        after <= Duration::from_millis(3500),
        "connected {after:?} after the listener appeared"
    );
    assert_eq!(
        main.connects[0].0,
        ShardRef {
            index: 0,
            conn_id: 1
        }
    );
    assert_eq!(main.shards.n_connected(), 1);
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
    let first = main.connects[0].0;

    // Shard to main: EVENT_READ_SHARD.
    shard.write_all(b"hello from the shard").unwrap();
    main.run_until(Duration::from_secs(5), |m| {
        m.reads.iter().flat_map(|(_, b)| b.iter()).count() == 20
    });
    assert!(main.reads.iter().all(|(s, _)| *s == first));
    // Main to shard: shard_send + shard_flush.
    assert!(main.shards.shard_send(0, b"hello from the proxy"));
    main.turn(0);
    let mut got = [0u8; 20];
    shard.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello from the proxy");

    // The shard dies, and comes back after half a second.
    drop(shard);
    drop(listener);
    main.run_until(Duration::from_secs(5), |m| m.hups.len() == 1);
    assert_eq!(main.hups[0], (first, HupReason::Eof));
    assert!(!main.shards.shard_send(0, b"nobody there"));
    let died = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let listener = TcpListener::bind(loopback(port)).unwrap();
    main.run_until(Duration::from_secs(6), |m| m.connects.len() == 2);
    let second = main.connects[1].0;
    assert_eq!(
        second,
        ShardRef {
            index: 0,
            conn_id: 2
        }
    );
    let gap = main.connects[1].1 - died;
    assert!(
        gap >= Duration::from_millis(1500),
        "reconnected after {gap:?}: sooner than the retry delay"
    );
    assert!(
        gap <= Duration::from_millis(4000),
        "reconnected after {gap:?}"
    );

    // Events naming the old connection are dropped.
    assert!(main.shards.shard_read(first).is_none());
    assert!(!main.shards.shard_hup(first, HupReason::Eof));
    let mut shard = accept(&listener);
    assert!(main.shards.shard_send(0, b"again"));
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
    let first = main.connects[0].0;
    assert!(main.shards.shard_disconnect(first, "test"));
    main.turn(0);
    // The shard sees the connection end...
    let mut buf = [0u8; 1];
    assert!(matches!(shard.read(&mut buf), Ok(0) | Err(_)));
    // ...and a new one arrives after the retry delay.
    main.run_until(Duration::from_secs(6), |m| m.connects.len() == 2);
    assert_eq!(main.connects[1].0.conn_id, 2);
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
    let chunk = vec![1u8; 16 * 1024];
    let start = Instant::now();
    while main.shards.shard_send(0, &chunk) {
        main.shards.shard_flush();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stalled shard never dropped"
        );
    }
    assert_eq!(main.shards.n_connected(), 0);
    main.stop();
}
