//! Tests of netpoll (thesis §3.3.1) with real sockets on 127.0.0.1: the data
//! word comes back, flags map as documented, edge-triggering means one event
//! per edge, timeouts, the waker, `del`, and write interest through `modify`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use muta_proxy::netpoll::{
    self, NETPOLL_DATA_WAKER, NETPOLL_ET, NETPOLL_HUP, NETPOLL_READ, NETPOLL_WRITE, Netpoll,
    NetpollEvent,
};

const LISTENER: u64 = u64::MAX;
const CONN: u64 = 0xDEAD_BEEF_0000_0007;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Waits up to 5 s for an event with `data`; returns its flags.
fn wait_for(np: &mut Netpoll, data: u64) -> u32 {
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        np.wait(&mut events, 100).unwrap();
        if let Some(ev) = events.iter().find(|e| e.data == data) {
            return ev.events;
        }
    }
    panic!("no event with data {data:#x} within 5 s");
}

/// A connected pair: the accepted (non-blocking, mio) end and the client end.
fn pair() -> (mio::net::TcpStream, TcpStream) {
    let listener = netpoll::listen(loopback(), 16).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match listener.accept() {
            Ok((server, _)) => return (server, client),
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(1)),
            Err(err) => panic!("accept: {err}"),
        }
    }
}

#[test]
fn listener_readable_on_connect_with_its_data_word() {
    let mut np = Netpoll::init(16).unwrap();
    let listener = netpoll::listen(loopback(), 16).unwrap();
    np.add(&listener, NETPOLL_READ | NETPOLL_ET, LISTENER)
        .unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let flags = wait_for(&mut np, LISTENER);
    assert_ne!(flags & NETPOLL_READ, 0);
    assert!(listener.accept().is_ok());
}

#[test]
fn read_event_carries_the_data_word_and_fires_once_per_edge() {
    let mut np = Netpoll::init(16).unwrap();
    let (server, mut client) = pair();
    np.add(&server, NETPOLL_READ | NETPOLL_ET, CONN).unwrap();
    client.write_all(b"ping").unwrap();
    assert_ne!(wait_for(&mut np, CONN) & NETPOLL_READ, 0);

    // Edge-triggered: data left unread produces no second event...
    let mut events: Vec<NetpollEvent> = Vec::new();
    np.wait(&mut events, 100).unwrap();
    assert!(
        events.iter().all(|e| e.data != CONN),
        "level-triggered repeat: {events:?}"
    );

    // ...until new data arrives.
    client.write_all(b"pong").unwrap();
    assert_ne!(wait_for(&mut np, CONN) & NETPOLL_READ, 0);
    let mut buf = [0u8; 16];
    assert_eq!((&server).read(&mut buf).unwrap(), 8);
    assert_eq!(&buf[..8], b"pingpong");
}

#[test]
fn peer_close_reports_hup() {
    let mut np = Netpoll::init(16).unwrap();
    let (server, client) = pair();
    np.add(&server, NETPOLL_READ | NETPOLL_ET, CONN).unwrap();
    drop(client);
    let flags = wait_for(&mut np, CONN);
    assert_ne!(flags & NETPOLL_HUP, 0, "flags {flags:#b}");
    let mut buf = [0u8; 4];
    assert_eq!((&server).read(&mut buf).unwrap(), 0);
}

#[test]
fn wait_honours_its_timeout() {
    let mut np = Netpoll::init(4).unwrap();
    let mut events = Vec::new();
    let start = Instant::now();
    assert_eq!(np.wait(&mut events, 0).unwrap(), 0);
    assert_eq!(np.wait(&mut events, 50).unwrap(), 0);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
}

#[test]
fn waker_ends_a_forever_wait_from_another_thread() {
    let mut np = Netpoll::init(4).unwrap();
    let waker = np.waker();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        waker.wake();
    });
    let mut events = Vec::new();
    assert_eq!(np.wait(&mut events, -1).unwrap(), 1);
    assert_eq!(events[0].data, NETPOLL_DATA_WAKER);
    t.join().unwrap();
}

#[test]
fn del_stops_events() {
    let mut np = Netpoll::init(16).unwrap();
    let (server, mut client) = pair();
    np.add(&server, NETPOLL_READ | NETPOLL_ET, CONN).unwrap();
    np.del(&server).unwrap();
    client.write_all(b"x").unwrap();
    let mut events = Vec::new();
    np.wait(&mut events, 100).unwrap();
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn modify_to_write_interest_reports_a_writable_socket() {
    let mut np = Netpoll::init(16).unwrap();
    let (server, _client) = pair();
    np.add(&server, NETPOLL_READ | NETPOLL_ET, CONN).unwrap();
    let mut events = Vec::new();
    np.wait(&mut events, 50).unwrap();
    assert!(
        events.is_empty(),
        "read-only interest, nothing to read: {events:?}"
    );
    np.modify(&server, NETPOLL_READ | NETPOLL_WRITE | NETPOLL_ET, CONN)
        .unwrap();
    assert_ne!(wait_for(&mut np, CONN) & NETPOLL_WRITE, 0);
}

#[test]
fn registration_without_et_or_interest_is_refused() {
    let np = Netpoll::init(4).unwrap();
    let (server, _client) = pair();
    let err = np.add(&server, NETPOLL_READ, CONN).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("NETPOLL_ET"));
    assert!(np.add(&server, NETPOLL_ET, CONN).is_err());
}

#[test]
fn wait_returns_at_most_max_events() {
    let mut np = Netpoll::init(2).unwrap();
    let pairs: Vec<_> = (0..5).map(|_| pair()).collect();
    for (i, (server, client)) in pairs.iter().enumerate() {
        np.add(server, NETPOLL_READ | NETPOLL_ET, i as u64).unwrap();
        (&*client).write_all(b"x").unwrap();
    }
    thread::sleep(Duration::from_millis(50));
    let mut events = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let n = np.wait(&mut events, 100).unwrap();
        assert!(n <= 2);
        seen.extend(events.iter().map(|e| e.data));
        if seen.len() == 5 {
            break;
        }
    }
    assert_eq!(seen.len(), 5, "every socket's edge is eventually reported");
}
