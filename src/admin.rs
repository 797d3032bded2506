//! The admin endpoint (no thesis section: a port decision for operators,
//! `docs/metrics.md`): `[admin] listen` serves Prometheus text at `/metrics`,
//! a JSON status at `/status` and a liveness answer at `/healthz`, over plain
//! HTTP/1.1 (one request per connection), on a thread of its own named
//! `admin` that blocks only in netpoll.
//!
//! It serves a [`Snapshot`] the main thread renders once a second (at its
//! tick) and publishes into a [`Published`] slot: a mutex around an `Arc`,
//! which the main thread only `try_lock`s (a snapshot that finds the slot
//! busy is skipped; the next one goes a second later) and the admin thread
//! holds for an `Arc` clone. So a scrape never makes the main thread wait,
//! and a main thread that is stuck shows as a stale snapshot: `/healthz`
//! answers 503 once the snapshot is older than [`STALE_AFTER`].
//!
//! Bounds: at most `admin.max_conns` connections (more are accepted and
//! closed at once), a request of at most [`REQUEST_MAX`] bytes, and
//! `admin.request_timeout_ms` from accept to the last byte written.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use parking_lot::Mutex;

use crate::com::{interrupted, would_block};
use crate::netpoll::{
    NETPOLL_DATA_WAKER, NETPOLL_ET, NETPOLL_READ, NETPOLL_WRITE, Netpoll, NetpollEvent,
    NetpollWaker,
};

/// The most bytes of one request (its request line and headers).
pub const REQUEST_MAX: usize = 4096;
/// `/healthz` answers 503 when the snapshot is older than this.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// The listener's netpoll data word; connection `i` is `CONN_DATA + i`.
const LISTENER_DATA: u64 = 0;
const CONN_DATA: u64 = 1;

/// What the admin endpoint serves, rendered by the main thread.
#[derive(Debug)]
pub struct Snapshot {
    /// `/metrics`: Prometheus text exposition format 0.0.4.
    pub metrics: String,
    /// `/status`: one JSON object.
    pub status: String,
    /// When it was rendered.
    pub at: Instant,
}

/// The slot the main thread publishes into and the admin thread reads.
#[derive(Debug)]
pub struct Published {
    slot: Mutex<Arc<Snapshot>>,
}

impl Default for Published {
    fn default() -> Published {
        Published {
            slot: Mutex::new(Arc::new(Snapshot {
                metrics: String::new(),
                status: "{}".to_string(),
                at: Instant::now(),
            })),
        }
    }
}

impl Published {
    /// The main thread's side: never waits. False if the admin thread held
    /// the slot at that instant (the snapshot is dropped; the next one
    /// replaces it).
    pub fn publish(&self, snapshot: Snapshot) -> bool {
        match self.slot.try_lock() {
            Some(mut slot) => {
                *slot = Arc::new(snapshot);
                true
            }
            None => false,
        }
    }

    /// The admin thread's side: the latest snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.slot.lock().clone()
    }
}

/// The admin endpoint's limits, from `[admin]`.
#[derive(Clone, Copy, Debug)]
pub struct AdminCfg {
    /// Connections at once.
    pub max_conns: usize,
    /// From accept to the last byte written.
    pub request_timeout: Duration,
}

/// The running admin thread.
#[derive(Debug)]
pub struct AdminThread {
    waker: NetpollWaker,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl AdminThread {
    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread and waits for it.
    pub fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.waker.wake();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("admin thread panicked");
        }
    }
}

impl Drop for AdminThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Starts the admin thread on `listener` (bound by the caller, so a busy
/// port fails the start-up).
pub fn admin_start(
    listener: TcpListener,
    cfg: AdminCfg,
    published: Arc<Published>,
) -> io::Result<AdminThread> {
    let np = Netpoll::init(64)?;
    np.add(&listener, NETPOLL_READ | NETPOLL_ET, LISTENER_DATA)?;
    let addr = listener.local_addr()?;
    let waker = np.waker();
    let stop = Arc::new(AtomicBool::new(false));
    let mut admin = Admin {
        np,
        listener,
        conns: (0..cfg.max_conns).map(|_| None).collect(),
        cfg,
        published,
        stop: stop.clone(),
    };
    let thread = thread::Builder::new()
        .name("admin".to_string())
        .spawn(move || admin.run())?;
    info!("admin endpoint on http://{addr}/ (/metrics, /status, /healthz)");
    Ok(AdminThread {
        waker,
        stop,
        thread: Some(thread),
        addr,
    })
}

struct AdminConn {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
    deadline: Instant,
}

struct Admin {
    np: Netpoll,
    listener: TcpListener,
    conns: Vec<Option<AdminConn>>,
    cfg: AdminCfg,
    published: Arc<Published>,
    stop: Arc<AtomicBool>,
}

impl Admin {
    fn run(&mut self) {
        let mut events: Vec<NetpollEvent> = Vec::with_capacity(64);
        loop {
            let timeout = self.next_timeout();
            if let Err(err) = self.np.wait(&mut events, timeout) {
                warn!("admin: netpoll wait failed: {err}; the admin endpoint stops");
                return;
            }
            for ev in &events {
                match ev.data {
                    NETPOLL_DATA_WAKER => {}
                    LISTENER_DATA => self.accept_all(),
                    data => self.serve((data - CONN_DATA) as usize),
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            self.expire(Instant::now());
        }
    }

    /// Milliseconds to the nearest connection deadline (-1: none).
    fn next_timeout(&self) -> i32 {
        let now = Instant::now();
        self.conns
            .iter()
            .flatten()
            .map(|c| c.deadline.saturating_duration_since(now).as_millis() as i32 + 1)
            .min()
            .unwrap_or(-1)
    }

    fn expire(&mut self, now: Instant) {
        for slot in &mut self.conns {
            if slot.as_ref().is_some_and(|c| now >= c.deadline) {
                debug!("admin: a request timed out");
                *slot = None;
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(err) if would_block(&err) => return,
                Err(err) if interrupted(&err) => continue,
                Err(err) => {
                    debug!("admin: accept failed: {err}");
                    return;
                }
            };
            let Some(index) = self.conns.iter().position(Option::is_none) else {
                debug!("admin: {peer}: refused, admin.max_conns connections open");
                continue; // dropped: closed
            };
            let data = CONN_DATA + index as u64;
            if self
                .np
                .add(&stream, NETPOLL_READ | NETPOLL_WRITE | NETPOLL_ET, data)
                .is_err()
            {
                continue;
            }
            self.conns[index] = Some(AdminConn {
                stream,
                request: Vec::new(),
                response: Vec::new(),
                written: 0,
                deadline: Instant::now() + self.cfg.request_timeout,
            });
            self.serve(index);
        }
    }

    /// Reads the request, answers it, writes what the socket takes; the
    /// connection is closed once the answer is written or on any error.
    fn serve(&mut self, index: usize) {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let done = match step(conn, &self.published) {
            Ok(done) => done,
            Err(err) => {
                debug!("admin: {err}");
                true
            }
        };
        if done {
            self.conns[index] = None;
        }
    }
}

/// One step of a connection: read until the request is whole, then write
/// the answer. `Ok(true)` once there is nothing more to do.
fn step(conn: &mut AdminConn, published: &Published) -> io::Result<bool> {
    if conn.response.is_empty() {
        let mut buf = [0u8; 1024];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => conn.request.extend_from_slice(&buf[..n]),
                Err(err) if would_block(&err) => break,
                Err(err) if interrupted(&err) => continue,
                Err(err) => return Err(err),
            }
            if conn.request.len() > REQUEST_MAX {
                break;
            }
        }
        if conn.request.len() > REQUEST_MAX {
            conn.response = response(431, "text/plain", "request too large\n");
        } else if conn.request.windows(4).any(|w| w == b"\r\n\r\n")
            || conn.request.windows(2).any(|w| w == b"\n\n")
        {
            conn.response = answer(&conn.request, &published.latest());
        } else {
            return Ok(false); // more to come
        }
    }
    while conn.written < conn.response.len() {
        match conn.stream.write(&conn.response[conn.written..]) {
            Ok(0) => return Ok(true),
            Ok(n) => conn.written += n,
            Err(err) if would_block(&err) => return Ok(false),
            Err(err) if interrupted(&err) => {}
            Err(err) => return Err(err),
        }
    }
    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
    Ok(true)
}

/// The answer to one request.
pub fn answer(request: &[u8], snapshot: &Snapshot) -> Vec<u8> {
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return response(405, "text/plain", "only GET\n");
    }
    let path = target.split('?').next().unwrap_or("");
    let mut out = match path {
        "/metrics" => response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &snapshot.metrics,
        ),
        "/status" => response(200, "application/json", &snapshot.status),
        "/healthz" if snapshot.at.elapsed() <= STALE_AFTER => response(200, "text/plain", "ok\n"),
        "/healthz" => response(
            503,
            "text/plain",
            "the main thread has not published lately\n",
        ),
        _ => response(404, "text/plain", "try /metrics, /status or /healthz\n"),
    };
    if method == "HEAD"
        && let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n")
    {
        out.truncate(end + 4);
    }
    out
}

fn response(code: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(age: Duration) -> Snapshot {
        Snapshot {
            metrics: "muta_proxy_up 1\n".to_string(),
            status: "{\"up\":true}".to_string(),
            at: Instant::now() - age,
        }
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn each_path_gets_its_answer() {
        let s = snapshot(Duration::ZERO);
        let metrics = text(answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &s));
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.contains("Content-Length: 16\r\n"));
        assert!(metrics.ends_with("\r\n\r\nmuta_proxy_up 1\n"));
        let status = text(answer(b"GET /status HTTP/1.0\r\n\r\n", &s));
        assert!(status.contains("application/json") && status.ends_with("{\"up\":true}"));
        assert!(text(answer(b"GET /healthz HTTP/1.1\r\n\r\n", &s)).contains(" 200 "));
        assert!(text(answer(b"GET /nope HTTP/1.1\r\n\r\n", &s)).contains(" 404 "));
        assert!(text(answer(b"POST /metrics HTTP/1.1\r\n\r\n", &s)).contains(" 405 "));
        let head = text(answer(b"HEAD /metrics HTTP/1.1\r\n\r\n", &s));
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 16"));
    }

    #[test]
    fn a_stale_snapshot_is_unhealthy() {
        let s = snapshot(STALE_AFTER + Duration::from_secs(1));
        assert!(text(answer(b"GET /healthz HTTP/1.1\r\n\r\n", &s)).contains(" 503 "));
    }

    #[test]
    fn publishing_never_waits_for_a_reader() {
        let published = Published::default();
        let held = published.slot.lock();
        assert!(
            !published.publish(snapshot(Duration::ZERO)),
            "skipped, not waited"
        );
        drop(held);
        assert!(published.publish(snapshot(Duration::ZERO)));
        assert_eq!(published.latest().metrics, "muta_proxy_up 1\n");
    }
}
