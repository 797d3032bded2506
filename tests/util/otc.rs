//! The OTC front end's pieces for tests: the game-server stand-in on its own
//! thread, a proxy serving only `[otc]`, and a raw OTC path (a blocking
//! socket that sends and reads frames byte by byte as a hostile client
//! would, from an address of its own in 127.0.0.0/8).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use muta_proxy::config::Config;
use muta_proxy::otserv::{self, OtservCfg};
use muta_proxy::proto::otc;
use socket2::{Domain, Protocol, Socket, Type};

use super::system::{ProxyNode, Running, start_proxy};
use super::{free_port, init_logger, loopback};

/// A running `muta-otserv`.
pub struct OtservNode {
    pub addr: SocketAddr,
    pub run: Running,
}

/// Starts the stand-in on a kernel-chosen port.
pub fn start_otserv() -> OtservNode {
    init_logger();
    let cfg = OtservCfg {
        listen: loopback(0),
        ..OtservCfg::default()
    };
    let node = otserv::start(cfg, Vec::new()).unwrap();
    let addr = node.local_addr(0);
    let run = Running::spawn("otserv", node.event_buf(), move || {
        let mut node = node;
        node.main_loop();
        node.shutdown();
    });
    OtservNode { addr, run }
}

/// A proxy with no shard and `[otc]` on a free port, its game server
/// `game`, `tweak` applied last.
pub fn start_otc_proxy(game: SocketAddr, tweak: impl FnOnce(&mut Config)) -> ProxyNode {
    start_proxy(&[], 0, |cfg| {
        cfg.otc.listen = Some(loopback(free_port()));
        cfg.otc.game_host = game.ip().to_string();
        cfg.otc.allowed_ports = vec![game.port()];
        tweak(cfg);
        // What a test runs is a configuration the daemon would accept.
        cfg.validate().expect("a valid configuration");
    })
}

/// One frame as read: session, packet id, argument, the rest.
pub type Frame = (u32, u32, u32, Vec<u8>);

/// A blocking OTC connection.
pub struct RawPath {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawPath {
    /// Connects from `ip` (any 127.x address) to `to`; `recv_buffer`, if
    /// given, is set before connecting (a client that reads little).
    pub fn connect(ip: IpAddr, to: SocketAddr, recv_buffer: Option<usize>) -> RawPath {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes).unwrap();
        }
        socket.bind(&SocketAddr::new(ip, 0).into()).unwrap();
        socket
            .connect_timeout(&to.into(), Duration::from_secs(5))
            .unwrap();
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).unwrap();
        RawPath {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends raw bytes; false if the proxy closed the connection.
    pub fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Sends one frame.
    pub fn send(&mut self, session: u32, packet_id: u32, arg: u32, rest: &[u8]) -> bool {
        let mut out = Vec::new();
        otc::put_header(&mut out, rest.len(), session, packet_id, arg);
        out.extend_from_slice(rest);
        self.send_raw(&out)
    }

    /// Opens (attaches to) `session` towards `port`.
    pub fn open(&mut self, session: u32, port: u16) -> bool {
        self.send(session, otc::PACKET_ID_OPEN, u32::from(port), &[])
    }

    /// Sends one Tibia packet `body` as data frame `packet_id`.
    pub fn data(&mut self, session: u32, packet_id: u32, ack: u32, body: &[u8]) -> bool {
        let mut packet = (body.len() as u16).to_le_bytes().to_vec();
        packet.extend_from_slice(body);
        self.send(session, packet_id, ack, &packet)
    }

    /// The next frame within `timeout`; `None` at the end of the stream or
    /// after the timeout.
    pub fn recv(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 2 {
                let n = 2 + usize::from(u16::from_le_bytes([self.buf[0], self.buf[1]]));
                if self.buf.len() >= n && n >= 14 {
                    let f: Vec<u8> = self.buf.drain(..n).collect();
                    let word = |at: usize| u32::from_le_bytes(f[at..at + 4].try_into().unwrap());
                    return Some((word(2), word(6), word(10), f[14..].to_vec()));
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// The next data frame of `session` (pings, pongs and others skipped).
    pub fn recv_data(&mut self, session: u32, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let f = self.recv(left)?;
            if f.0 == session && f.1 != 0 && f.1 != otc::PACKET_ID_END {
                return Some(f);
            }
        }
    }

    /// True if the proxy closes the connection within `timeout` (frames
    /// before the end are read and dropped).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if self.recv(left).is_none() {
                return Instant::now() < deadline;
            }
        }
        false
    }
}
