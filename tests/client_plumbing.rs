//! Plumbing of the client side (thesis §3.4, §3.5.2) over real loopback
//! sockets: the real runtime (client thread, event buffer, secpool) drives a
//! test server with a client pool that records what it reads. Bytes a client
//! sends reach the main thread as `EVENT_READ_CLIENT`; bytes the main thread
//! queues reach the client; a full event buffer loses nothing; a slow reader
//! is dropped without the main thread waiting on it; a late event for a
//! reused slot is recognised.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use muta_proxy::com::{ComEventBuf, ConnRef, PoolId};
use muta_proxy::config::Config;
use muta_proxy::conn::thread::IoCfg;
use muta_proxy::conn::{AnyPool, DisconnectReason, Pool, PoolCfg};
use muta_proxy::netpoll;
use muta_proxy::runtime::{Runtime, RuntimeCfg, Server};
use muta_proxy::secpool::SecpoolConfig;
use util::{init_logger, pseudo_random_bytes, test_config, wait_until};

/// The test's server: a client pool whose reads are recorded and, when
/// `echo` is set, sent back.
struct Recorder {
    clients: Pool<()>,
    reads: Vec<(ConnRef, Vec<u8>)>,
    echo: bool,
}

impl Server for Recorder {
    fn pools(&mut self) -> (&mut dyn AnyPool, Option<&mut dyn AnyPool>) {
        (&mut self.clients, None)
    }

    fn on_accept(&mut self, listener: u32, peer: SocketAddr, now: Instant) -> Option<ConnRef> {
        self.clients.accept(listener, peer, now)
    }

    fn on_read(&mut self, conn: ConnRef, data: &mut [u8], now: Instant) {
        if self.clients.read(conn, data.len(), now).is_none() {
            return;
        }
        if self.echo {
            self.clients.send(conn, data);
        }
        self.reads.push((conn, data.to_vec()));
    }

    fn settle(&mut self, _now: Instant) {
        self.clients.take_disconnected().for_each(drop);
    }
}

/// A test main thread: the real runtime (client thread, event buffer,
/// secpool) driving the recorder.
struct Main {
    rt: Runtime,
    srv: Recorder,
    evbuf: Arc<ComEventBuf>,
    addr: SocketAddr,
}

impl Main {
    fn start(cfg: &Config) -> Main {
        init_logger();
        let listener = netpoll::listen(cfg.proxy.listen, 128).unwrap();
        let runtime_cfg = RuntimeCfg {
            secpool: SecpoolConfig {
                bytes_max: cfg.runtime.secpool_bytes_max,
                block_size_max: cfg.secpool_block_size_max(),
                free_blocks_max: cfg.runtime.secpool_free_blocks_max,
            },
            event_buffer_capacity: cfg.runtime.event_buffer_capacity,
            event_wait_max: 256,
            client: IoCfg {
                pool: PoolId::Client,
                max_conns: cfg.client.max_clients,
                read_size: cfg.client.read_size,
                reads_per_wakeup: cfg.client.reads_per_wakeup,
                accepts_per_wakeup: cfg.client.accepts_per_wakeup,
                netpoll_events_max: cfg.runtime.netpoll_events_max,
                io_batch_max: cfg.runtime.io_batch_max,
                read_ahead_max: cfg.client.read_ahead_max,
                send_buffer: cfg.client.socket_send_buffer,
                user_timeout_ms: cfg.client.tcp_user_timeout_ms,
            },
            shard: None,
        };
        let rt = Runtime::start(&runtime_cfg, vec![listener], Vec::new()).unwrap();
        let pool_cfg = PoolCfg {
            max_conns: cfg.client.max_clients,
            out_buf_size: cfg.client.out_buf_size,
            idle_timeout: None,
            connect_timeout: Duration::from_secs(2),
        };
        Main {
            addr: rt.local_addr(0),
            evbuf: rt.event_buf(),
            rt,
            srv: Recorder {
                clients: Pool::new(PoolId::Client, &pool_cfg, Instant::now()),
                reads: Vec::new(),
                echo: false,
            },
        }
    }

    /// One main-loop iteration, waiting up to `timeout_ms` for events.
    fn turn(&mut self, timeout_ms: u64) {
        assert!(
            self.rt
                .turn(&mut self.srv, Some(Duration::from_millis(timeout_ms)))
        );
    }

    /// The bytes read so far, in order, and how many read events brought them.
    fn take_reads(&mut self) -> Vec<(ConnRef, Vec<u8>)> {
        std::mem::take(&mut self.srv.reads)
    }

    /// Runs echo turns until `done` or the deadline (a failure).
    fn echo_until(&mut self, timeout: Duration, mut done: impl FnMut() -> bool) {
        self.srv.echo = true;
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "timed out");
            self.turn(10);
        }
        self.srv.echo = false;
    }

    /// Runs turns, appending what is read to `received`, until it holds
    /// `len` bytes (20 s at most: a failure).
    fn read_until(&mut self, received: &mut Vec<u8>, len: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while received.len() < len {
            assert!(
                Instant::now() < deadline,
                "only {} bytes arrived",
                received.len()
            );
            self.turn(10);
            for (_, bytes) in self.take_reads() {
                received.extend_from_slice(&bytes);
            }
        }
    }

    fn stop(mut self) {
        self.rt.shutdown(&mut self.srv);
    }
}

fn client_ref(index: u32, id: u32) -> ConnRef {
    ConnRef {
        pool: PoolId::Client,
        index,
        id,
    }
}

#[test]
fn bytes_a_client_sends_reach_the_main_thread_as_events() {
    let cfg = test_config();
    let mut main = Main::start(&cfg);
    let client = TcpStream::connect(main.addr).unwrap();
    let sent = pseudo_random_bytes(100_000, 1);
    let writer = {
        let sent = sent.clone();
        let mut client = client.try_clone().unwrap();
        thread::spawn(move || {
            for chunk in sent.chunks(777) {
                client.write_all(chunk).unwrap();
            }
        })
    };
    let mut received = Vec::new();
    let mut read_events = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "only {} bytes arrived",
            received.len()
        );
        main.turn(10);
        for (client, bytes) in main.take_reads() {
            assert_eq!(client.index, 0, "the first client takes slot 0");
            received.extend_from_slice(&bytes);
            read_events += 1;
        }
    }
    writer.join().unwrap();
    assert_eq!(received, sent, "bytes lost, duplicated or reordered");
    assert!(read_events >= 1);
    assert_eq!(main.srv.clients.stats().accepted, 1);
    client.shutdown(Shutdown::Both).ok();
    main.stop();
}

#[test]
fn bytes_the_main_thread_queues_reach_the_client() {
    let mut cfg = test_config();
    // Room for the whole echo: this test is about delivery, and a reader thread
    // starved by parallel tests must not count as a slow reader.
    cfg.client.out_buf_size = 2 << 20;
    let mut main = Main::start(&cfg);
    let sent = pseudo_random_bytes(1 << 20, 2);
    let client = TcpStream::connect(main.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = {
        let mut client = client.try_clone().unwrap();
        let len = sent.len();
        thread::spawn(move || {
            let mut got = vec![0u8; len];
            client.read_exact(&mut got).unwrap();
            got
        })
    };
    let writer = {
        let sent = sent.clone();
        let mut client = client.try_clone().unwrap();
        thread::spawn(move || client.write_all(&sent).unwrap())
    };
    main.echo_until(Duration::from_secs(20), || reader.is_finished());
    writer.join().unwrap();
    assert_eq!(reader.join().unwrap(), sent, "echo differs");
    assert!(main.srv.clients.stats().bytes_out >= sent.len() as u64);
    main.stop();
}

#[test]
fn a_full_event_buffer_blocks_the_client_thread_and_loses_nothing() {
    let mut cfg = test_config();
    cfg.runtime.event_buffer_capacity = 4;
    cfg.runtime.io_batch_max = 2;
    cfg.client.read_size = 1024;
    let mut main = Main::start(&cfg);
    let client = TcpStream::connect(main.addr).unwrap();
    let sent = pseudo_random_bytes(4 << 20, 3);
    let writer = {
        let sent = sent.clone();
        let mut client = client.try_clone().unwrap();
        thread::spawn(move || client.write_all(&sent).unwrap())
    };
    // Accept, then stop draining: the buffer fills, the client thread blocks
    // in event_push, and TCP pushes back on the writer.
    main.turn(5000);
    thread::sleep(Duration::from_millis(300));
    // Full, and no fuller: the client thread is waiting in event_push. (Whether
    // the writer is also blocked depends on how far the kernel grows the
    // socket buffers, up to tcp_rmem's maximum.)
    assert_eq!(main.evbuf.len(), 4, "the event buffer is not exactly full");
    let mut received = Vec::new();
    main.read_until(&mut received, sent.len());
    writer.join().unwrap();
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "bytes lost, duplicated or reordered");
    main.stop();
}

#[test]
fn one_fast_sender_holds_at_most_its_read_ahead_of_the_event_buffer_and_loses_nothing() {
    let mut cfg = test_config();
    cfg.client.read_size = 4096;
    cfg.client.read_ahead_max = 16 * 1024;
    let mut main = Main::start(&cfg);
    let client = TcpStream::connect(main.addr).unwrap();
    let sent = pseudo_random_bytes(2 << 20, 5);
    let writer = {
        let sent = sent.clone();
        let mut client = client.try_clone().unwrap();
        thread::spawn(move || client.write_all(&sent).unwrap())
    };
    // Accept, then stop draining: the client thread reads that client's
    // read-ahead, and then no more, though the event buffer has room.
    main.turn(5000);
    thread::sleep(Duration::from_millis(300));
    let queued = main.evbuf.len();
    assert!(queued > 0, "nothing was read");
    main.turn(0);
    let mut received = Vec::new();
    for (_, bytes) in main.take_reads() {
        received.extend_from_slice(&bytes);
    }
    assert!(
        received.len() <= 16 * 1024 + 4096,
        "{} bytes in flight for one client (read_ahead_max 16 KiB)",
        received.len()
    );
    // Handling them wakes the client thread, which reads on: all of it
    // arrives, in order.
    main.read_until(&mut received, sent.len());
    writer.join().unwrap();
    assert!(received == sent, "bytes lost, duplicated or reordered");
    main.stop();
}

#[test]
fn a_slow_reader_is_dropped_and_the_main_thread_never_waits_for_it() {
    let mut cfg = test_config();
    cfg.client.out_buf_size = 64 * 1024;
    let mut main = Main::start(&cfg);
    // The slow client never reads; the fast one echoes normally.
    let slow = TcpStream::connect(main.addr).unwrap();
    main.turn(5000);
    let slow_ref = client_ref(0, 1);
    assert!(main.srv.clients.get(slow_ref).is_some());

    let chunk = vec![0x5A; 16 * 1024];
    let start = Instant::now();
    let mut rounds = 0;
    // Each round queues 16 KiB and flushes, as the main loop would. No call may
    // block: the loop ends when the client is dropped, within a bounded time.
    while main.srv.clients.send(slow_ref, &chunk) {
        main.turn(0);
        rounds += 1;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "slow reader never dropped"
        );
    }
    assert!(
        rounds > 4,
        "dropped before its socket filled ({rounds} rounds)"
    );
    assert!(
        main.srv.clients.get(slow_ref).is_none(),
        "slow reader still open"
    );
    assert_eq!(main.srv.clients.stats().slow_readers, 1);

    // Its slot comes back once the client thread confirms, and another client
    // is served normally.
    let mut fast = TcpStream::connect(main.addr).unwrap();
    fast.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    fast.write_all(b"still serving").unwrap();
    let mut buf = [0u8; 13];
    let reader = thread::spawn(move || {
        fast.read_exact(&mut buf).unwrap();
        buf
    });
    main.echo_until(Duration::from_secs(10), || reader.is_finished());
    assert_eq!(&reader.join().unwrap(), b"still serving");
    // The slow client sees its connection end.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = (&slow).read_to_end(&mut sink);
    main.stop();
}

#[test]
fn a_late_event_for_a_reused_slot_is_dropped() {
    let mut cfg = test_config();
    cfg.client.max_clients = 1;
    let mut main = Main::start(&cfg);
    let first = TcpStream::connect(main.addr).unwrap();
    main.turn(5000);
    let old = client_ref(0, 1);
    assert!(main.srv.clients.get(old).is_some());
    assert!(
        main.srv
            .clients
            .disconnect(old, DisconnectReason::Protocol("test".into()))
    );
    assert_eq!(main.srv.clients.in_use(), 1, "still held until confirmed");
    // The slot is free only after the client thread's confirmation.
    assert!(wait_until(Duration::from_secs(5), || {
        main.turn(10);
        main.srv.clients.in_use() == 0
    }));
    drop(first);

    let mut second = TcpStream::connect(main.addr).unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        main.turn(10);
        main.srv.clients.in_use() == 1
    }));
    let new = client_ref(0, 2);
    assert!(
        main.srv.clients.get(new).is_some(),
        "the slot was reused with a new id"
    );

    // An event still naming the old occupant is recognised and dropped...
    assert!(main.srv.clients.read(old, 5, Instant::now()).is_none());
    assert!(!main.srv.clients.send(old, b"stale"));
    assert!(
        !main
            .srv
            .clients
            .disconnect(old, DisconnectReason::Protocol("stale".into()))
    );
    // ...and the new occupant is untouched.
    second.write_all(b"new").unwrap();
    let mut got = Vec::new();
    assert!(wait_until(Duration::from_secs(5), || {
        main.turn(10);
        for (client, bytes) in main.take_reads() {
            assert_eq!(client, new);
            got.extend_from_slice(&bytes);
        }
        got == b"new"
    }));
    main.stop();
}

#[test]
fn connections_beyond_max_clients_are_closed() {
    let mut cfg = test_config();
    cfg.client.max_clients = 2;
    let mut main = Main::start(&cfg);
    let kept: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(main.addr).unwrap())
        .collect();
    assert!(wait_until(Duration::from_secs(5), || {
        main.turn(10);
        main.srv.clients.in_use() == 2
    }));
    let mut extra = TcpStream::connect(main.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        main.turn(10);
        main.srv.clients.stats().refused_full == 1
    }));
    let mut buf = [0u8; 1];
    assert!(
        matches!(extra.read(&mut buf), Ok(0) | Err(_)),
        "refused connection is closed"
    );
    assert_eq!(main.srv.clients.in_use(), 2);
    drop(kept);
    main.stop();
}

#[test]
fn a_client_that_hangs_up_frees_its_slot() {
    let cfg = test_config();
    let mut main = Main::start(&cfg);
    let client = TcpStream::connect(main.addr).unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        main.turn(10);
        main.srv.clients.in_use() == 1
    }));
    drop(client);
    assert!(wait_until(Duration::from_secs(5), || {
        main.turn(10);
        main.srv.clients.in_use() == 0
    }));
    assert_eq!(main.srv.clients.stats().disconnected, 1);
    main.stop();
}
