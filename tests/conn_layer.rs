//! The connection layer's outbound side (thesis §3.5.3, §3.8.1; the
//! non-blocking connect is a port decision) over real loopback sockets:
//! several thousand connections opened at once through one pool and one I/O
//! thread, with no thread per connection, each then read by the same loop
//! that reads accepted connections; a refused connect and one that times out
//! come back as hang-ups; a connection to a name goes through a resolver
//! thread.
//!
//! The tests of this file run one at a time (they count the process's
//! threads).

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use muta_proxy::com::{ConnRef, HupReason, PoolId};
use muta_proxy::conn::thread::IoCfg;
use muta_proxy::conn::{AnyPool, DisconnectReason, Pool, PoolCfg, Target};
use muta_proxy::runtime::{Runtime, RuntimeCfg, Server};
use muta_proxy::secpool::SecpoolConfig;
use util::{free_port, init_logger, loopback};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Opens what it is told to, and counts what happens.
struct Opener {
    clients: Pool<()>,
    shards: Pool<()>,
    connected: usize,
    /// Connections that have read their greeting byte.
    greeted: usize,
    gone: Vec<(ConnRef, DisconnectReason)>,
}

impl Server for Opener {
    fn pools(&mut self) -> (&mut dyn AnyPool, Option<&mut dyn AnyPool>) {
        (&mut self.clients, Some(&mut self.shards))
    }

    fn on_accept(&mut self, _: u32, _: SocketAddr, _: Instant) -> Option<ConnRef> {
        None
    }

    fn on_connected(&mut self, conn: ConnRef, _now: Instant) {
        assert_eq!(conn.pool, PoolId::Shard);
        self.connected += 1;
    }

    fn on_read(&mut self, conn: ConnRef, data: &mut [u8], now: Instant) {
        if self.shards.read(conn, data.len(), now).is_some() {
            assert_eq!(data, b"!", "each connection is greeted once");
            self.greeted += 1;
        }
    }

    fn settle(&mut self, _now: Instant) {
        for gone in self.shards.take_disconnected() {
            self.gone.push((gone.conn, gone.reason));
        }
    }
}

/// A runtime with a shard pool of `n` slots and its server.
fn opener(n: u32, connect_timeout: Duration) -> (Runtime, Opener) {
    init_logger();
    let io = |pool, max_conns| IoCfg {
        pool,
        max_conns,
        read_size: 4096,
        reads_per_wakeup: 4,
        accepts_per_wakeup: 1,
        netpoll_events_max: 1024,
        io_batch_max: 64,
        read_ahead_max: 0,
        send_buffer: 0,
        user_timeout_ms: 0,
    };
    let cfg = RuntimeCfg {
        secpool: SecpoolConfig {
            bytes_max: 64 << 20,
            block_size_max: 4096,
            free_blocks_max: 1024,
        },
        event_buffer_capacity: 1024,
        event_wait_max: 256,
        client: io(PoolId::Client, 1),
        shard: Some(io(PoolId::Shard, n)),
    };
    let pool = |max_conns| PoolCfg {
        max_conns,
        out_buf_size: 4096,
        idle_timeout: None,
        connect_timeout,
    };
    let now = Instant::now();
    let server = Opener {
        clients: Pool::new(PoolId::Client, &pool(1), now),
        shards: Pool::new(PoolId::Shard, &pool(n), now),
        connected: 0,
        greeted: 0,
        gone: Vec::new(),
    };
    (
        Runtime::start(&cfg, Vec::new(), Vec::new()).unwrap(),
        server,
    )
}

/// A blocking loopback listener with room for `backlog` connections not yet
/// accepted.
fn listen(backlog: i32) -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&loopback(0).into()).unwrap();
    socket.listen(backlog).unwrap();
    socket.into()
}

/// Threads of this process right now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// The soft limit on open files.
fn fd_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[test]
fn thousands_of_outbound_connections_open_at_once_without_a_thread_each() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Each connection costs two descriptors here (both ends live in this
    // process); `make test` raises the soft limit to the hard one.
    let n = 4000.min((fd_limit().saturating_sub(200)) / 2);
    assert!(
        n >= 2000,
        "the open-file limit ({}) leaves room for only {n} connections; raise it (ulimit -n)",
        fd_limit()
    );
    let listener = listen(4096);
    let addr = listener.local_addr().unwrap();
    // The far end: accept each one and greet it with one byte.
    let acceptor = std::thread::spawn(move || {
        let mut kept: Vec<TcpStream> = Vec::with_capacity(n);
        while kept.len() < n {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(b"!").unwrap();
            kept.push(stream);
        }
        kept
    });
    let (mut rt, mut srv) = opener(n as u32, Duration::from_secs(20));
    let threads_before = threads();
    let now = Instant::now();
    for _ in 0..n {
        srv.shards
            .connect(Target::Addr(addr), now)
            .expect("a free slot");
    }
    assert!(
        srv.shards.connect(Target::Addr(addr), now).is_none(),
        "the pool holds n"
    );
    let started = Instant::now();
    let mut threads_max = threads();
    while srv.greeted < n {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "after 60 s: {} of {n} connected, {} greeted, {} gone ({:?})",
            srv.connected,
            srv.greeted,
            srv.gone.len(),
            srv.gone.first()
        );
        rt.turn(&mut srv, Some(Duration::from_millis(50)));
        threads_max = threads_max.max(threads());
    }
    assert_eq!(srv.connected, n);
    assert!(
        srv.gone.is_empty(),
        "{:?}",
        &srv.gone[..srv.gone.len().min(5)]
    );
    // One thread more at most (the acceptor, started before): no thread per
    // connection, nor per connect.
    assert!(
        threads_max <= threads_before + 1,
        "{threads_max} threads while connecting, {threads_before} before"
    );
    let kept = acceptor.join().unwrap();
    assert_eq!(kept.len(), n);
    // The far end sees each connection's bytes, and its end at shutdown.
    let some: Vec<ConnRef> = srv.shards.iter_live().map(|(c, _)| c).take(3).collect();
    for &conn in &some {
        assert!(srv.shards.send(conn, b"?"));
    }
    rt.turn(&mut srv, Some(Duration::ZERO));
    rt.shutdown(&mut srv);
    drop(kept);
    eprintln!(
        "{n} connections opened and greeted in {:?}",
        started.elapsed()
    );
}

#[test]
fn a_refused_connect_and_one_past_its_deadline_are_hangups() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut rt, mut srv) = opener(8, Duration::from_millis(500));
    // Nothing listens there.
    let refused = srv
        .shards
        .connect(Target::Addr(loopback(free_port())), Instant::now())
        .unwrap();
    // A listener that never accepts, its queue full: the kernel drops the
    // next handshake, so that connect hangs until its deadline.
    let full = listen(1);
    let full_addr = full.local_addr().unwrap();
    let fillers: Vec<TcpStream> = (0..3)
        .filter_map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.set_nonblocking(true).ok()?;
            let _ = s.connect(&full_addr.into());
            Some(s.into())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let hung = srv
        .shards
        .connect(Target::Addr(full_addr), Instant::now())
        .unwrap();
    let started = Instant::now();
    while srv.gone.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            srv.gone
        );
        rt.turn(&mut srv, Some(Duration::from_millis(20)));
    }
    let reason_of = |conn| {
        srv.gone
            .iter()
            .find(|(c, _)| *c == conn)
            .map(|(_, r)| r.clone())
    };
    assert!(
        matches!(
            reason_of(refused),
            Some(DisconnectReason::Hup(HupReason::ConnectFailed(
                std::io::ErrorKind::ConnectionRefused
            )))
        ),
        "{:?}",
        srv.gone
    );
    assert_eq!(
        reason_of(hung),
        Some(DisconnectReason::Hup(HupReason::ConnectTimeout)),
        "{:?}",
        srv.gone
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "given up early"
    );
    assert_eq!(srv.connected, 0);
    // Both slots come back once the I/O thread lets go.
    while srv.shards.in_use() > 0 {
        assert!(started.elapsed() < Duration::from_secs(10));
        rt.turn(&mut srv, Some(Duration::from_millis(20)));
    }
    rt.shutdown(&mut srv);
    drop((fillers, full));
}

#[test]
fn a_name_is_resolved_on_a_thread_of_its_own_then_connected() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let listener = TcpListener::bind(loopback(0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mut rt, mut srv) = opener(2, Duration::from_secs(5));
    // An address written as a name: no DNS server needed, but the lookup
    // path (a resolver thread, then the connect) all the same.
    let target = Target::Name {
        host: "127.0.0.1".to_string(),
        port,
    };
    let conn = srv.shards.connect(target, Instant::now()).unwrap();
    let far = std::thread::spawn(move || {
        let (mut far, _) = listener.accept().unwrap();
        far.write_all(b"!").unwrap();
        far
    });
    let started = Instant::now();
    while srv.greeted < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            srv.gone
        );
        rt.turn(&mut srv, Some(Duration::from_millis(20)));
    }
    assert_eq!(srv.shards.get(conn).unwrap().peer(), loopback(port));
    let mut far = far.join().unwrap();
    assert!(srv.shards.send(conn, b"back"));
    rt.turn(&mut srv, Some(Duration::ZERO));
    let mut got = [0u8; 4];
    far.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    far.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"back");
    rt.shutdown(&mut srv);
}
