//! The connection-level attacks of `muta-attack` (every class but the three
//! that log in): one event loop over netpoll opening `rate` connections a
//! second, each following its class's script, and noting when the proxy
//! cuts it off (the peer closes or resets it). Port decision, as the rest
//! of the tool.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::{AttackCfg, AttackReport, Class};
use crate::cryptchan::{KeyPair, TOKEN_BYTES, random_bytes};
use crate::netpoll::{NETPOLL_ERR, NETPOLL_ET, NETPOLL_HUP, NETPOLL_READ, NETPOLL_WRITE, Netpoll};
use crate::netpoll::{NetpollEvent, connect_from};
use crate::proto::client::{AuthProof, ClientMsg};
use crate::proto::frame::{Channel, Frames, MSG_PUB_KEY, PUB_KEY_MSG_BYTES, Unit};
use crate::proto::otc::{self, OtcFrame};
use crate::proto::proxy_protocol::{ProxyHeader, V2_SIGNATURE, encode_v2};

/// A slowloris attacker sends a byte this often.
const TRICKLE_EVERY: Duration = Duration::from_millis(500);

/// One attacking connection.
struct Conn {
    stream: TcpStream,
    started: Instant,
    connected: bool,
    /// The key exchange, for the classes that finish it first.
    chan: Option<Channel>,
    in_buf: Vec<u8>,
    out: Vec<u8>,
    /// Slowloris: the handshake bytes not yet sent, and when the next goes.
    trickle: Vec<u8>,
    next_trickle: Instant,
    done: bool,
}

/// The event loop's state.
struct Flood<'a> {
    cfg: &'a AttackCfg,
    np: Netpoll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
    report: AttackReport,
    read_buf: Vec<u8>,
    keys: Arc<KeyPair>,
    next_ip: usize,
}

/// Where a class's connections go, and from which addresses: the
/// forwarder, or (the two PROXY header classes) the proxy itself.
fn target(cfg: &AttackCfg) -> SocketAddr {
    match cfg.class {
        Class::UntrustedProxyHeader | Class::MalformedProxyHeader => cfg.proxy,
        class if class.is_otc() => cfg.otc_front,
        _ => cfg.front,
    }
}

/// What an OTC class's connection sends: every frame at once (a session
/// id of its own per connection, `n`).
fn otc_bytes(class: Class, n: u64, port: u16) -> Vec<u8> {
    let session = 0x0a77_0000 ^ (n as u32).wrapping_mul(2_654_435_761) | 1;
    let mut out = Vec::new();
    let data = |out: &mut Vec<u8>, id: u32, ack: u32, body: &[u8]| {
        otc::put_header(out, 2 + body.len(), session, id, ack);
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(body);
    };
    match class {
        Class::OtcBadFrames => match n % 3 {
            0 => out.extend_from_slice(&[4, 0, 1, 2, 3, 4]),
            1 => {
                otc::put_header(&mut out, 6, session, 1, 0);
                out.extend_from_slice(&[200, 0, b'E', b'x', b'y', b'z']);
            }
            _ => otc::put_header(&mut out, 0, otc::SESSION_CONTROL, 7, 0),
        },
        Class::OtcPortScan => {
            let ports = [22u16, 25, 3306, 6379, 5432, 11211];
            let port = ports[n as usize % ports.len()];
            otc::put_header(&mut out, 0, session, otc::PACKET_ID_OPEN, u32::from(port));
        }
        Class::OtcFarFuture => {
            otc::put_header(&mut out, 0, session, otc::PACKET_ID_OPEN, u32::from(port));
            data(&mut out, 1_000_000, 0, b"Efar");
        }
        Class::OtcUnackedFlood => {
            otc::put_header(&mut out, 0, session, otc::PACKET_ID_OPEN, u32::from(port));
            let body = [b'E'; 1024];
            for id in 1..=400 {
                data(&mut out, id, 0, &body);
            }
        }
        Class::OtcSessionFlood => {
            for k in 0..40u32 {
                let s = session.wrapping_add(k << 8);
                otc::put_header(&mut out, 0, s, otc::PACKET_ID_OPEN, u32::from(port));
            }
        }
        _ => {}
    }
    out
}

/// True once `in_buf` holds an OTC session end: the proxy ended or refused
/// the attacker's session (frames before it, and the rest, are dropped).
fn otc_session_ended(in_buf: &mut Vec<u8>) -> bool {
    loop {
        match OtcFrame::decode(in_buf) {
            Ok(Some((OtcFrame::End { .. }, _))) => return true,
            Ok(Some((_, n))) => {
                in_buf.drain(..n);
            }
            Ok(None) => return false,
            Err(_) => {
                in_buf.clear();
                return false;
            }
        }
    }
}

/// What a connection of the class sends as soon as it is connected.
fn opening_bytes(class: Class, n: u64) -> Vec<u8> {
    match class {
        Class::Garbage => {
            let mut junk = vec![0u8; 256];
            random_bytes(&mut junk);
            junk
        }
        Class::BadFirstByte => b"GET / HTTP/1.1\r\nHost: game\r\n\r\n".to_vec(),
        Class::UntrustedProxyHeader => {
            let mut out = Vec::new();
            let src = SocketAddr::from(([203, 0, 113, (n % 250) as u8 + 1], 40_000));
            let dst = SocketAddr::from(([127, 0, 0, 1], 7000));
            encode_v2(&ProxyHeader::Proxy { src, dst }, &[], &mut out);
            out
        }
        Class::MalformedProxyHeader => malformed_header(n),
        _ => Vec::new(),
    }
}

/// One of several malformed PROXY headers, in turn.
fn malformed_header(n: u64) -> Vec<u8> {
    let mut v2 = Vec::new();
    let src = SocketAddr::from(([198, 51, 100, 7], 40_000));
    let dst = SocketAddr::from(([127, 0, 0, 1], 7000));
    encode_v2(&ProxyHeader::Proxy { src, dst }, &[], &mut v2);
    match n % 5 {
        0 => {
            v2[13] = 0x12; // UDP
            v2
        }
        1 => {
            v2[12] = 0x31; // version 3
            v2
        }
        2 => {
            let mut long = V2_SIGNATURE.to_vec();
            long.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]); // 65,535 bytes declared
            long
        }
        3 => b"PROXY TCP4 300.1.2.3 127.0.0.1 40000 7000\r\n".to_vec(),
        _ => [b"PROXY TCP4 ".as_slice(), &[b'9'; 200]].concat(),
    }
}

/// True for the classes that finish the key exchange before attacking.
fn handshakes(class: Class) -> bool {
    matches!(
        class,
        Class::Idle | Class::OversizedFrame | Class::BadMac | Class::GuessedProof
    )
}

impl Flood<'_> {
    fn bind_ip(&mut self) -> Option<IpAddr> {
        if self.cfg.bind_ips.is_empty() {
            return None;
        }
        let ip = self.cfg.bind_ips[self.next_ip % self.cfg.bind_ips.len()];
        self.next_ip += 1;
        Some(ip)
    }

    /// Opens one attacking connection.
    fn open_one(&mut self, now: Instant) {
        let addr = target(self.cfg);
        let opened = match self.bind_ip() {
            Some(ip) => connect_from(ip, addr),
            None => TcpStream::connect(addr),
        };
        let Ok(stream) = opened else {
            self.report.errors += 1;
            return;
        };
        let index = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let flags = NETPOLL_READ | NETPOLL_WRITE | NETPOLL_ET;
        if self.np.add(&stream, flags, index as u64).is_err() {
            self.report.errors += 1;
            self.free.push(index);
            return;
        }
        let mut trickle = Vec::new();
        if self.cfg.class == Class::Slowloris {
            // A valid PUB_KEY message, a byte at a time.
            trickle.push(MSG_PUB_KEY);
            trickle.extend_from_slice(&self.keys.public().0);
            debug_assert_eq!(trickle.len(), PUB_KEY_MSG_BYTES);
        }
        let mut out = if self.cfg.class.is_otc() {
            otc_bytes(self.cfg.class, self.report.attackers, self.cfg.otc_port)
        } else {
            opening_bytes(self.cfg.class, self.report.attackers)
        };
        let chan = handshakes(self.cfg.class)
            .then(|| Channel::initiator(self.keys.clone(), None, &mut out));
        self.conns[index] = Some(Conn {
            stream,
            started: now,
            connected: false,
            chan,
            in_buf: Vec::new(),
            out,
            trickle,
            next_trickle: now,
            done: false,
        });
        self.open += 1;
        self.report.attackers += 1;
    }

    /// The proxy (or the forwarder on its behalf) closed connection `i`.
    fn cut(&mut self, i: usize, now: Instant) {
        let Some(conn) = self.conns[i].take() else {
            return;
        };
        let _ = self.np.del(&conn.stream);
        self.report
            .cut(now.duration_since(conn.started).as_millis() as u64);
        self.open -= 1;
        self.free.push(i);
    }

    fn event(&mut self, ev: NetpollEvent, now: Instant) {
        let i = ev.data as usize;
        let Some(conn) = self.conns.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        if ev.events & NETPOLL_WRITE != 0 && !conn.connected {
            if conn.stream.peer_addr().is_err() {
                // The connect itself failed: not the proxy's doing.
                let conn = self.conns[i].take().expect("checked");
                let _ = self.np.del(&conn.stream);
                self.report.attackers -= 1;
                self.report.errors += 1;
                self.open -= 1;
                self.free.push(i);
                return;
            }
            conn.connected = true;
        }
        if ev.events & (NETPOLL_READ | NETPOLL_HUP | NETPOLL_ERR) != 0 && self.read(i) {
            return self.cut(i, now);
        }
        if self.write(i) {
            self.cut(i, now);
        }
    }

    /// Reads what is there; true if the peer closed the connection.
    fn read(&mut self, i: usize) -> bool {
        loop {
            let Some(conn) = self.conns[i].as_mut() else {
                return false;
            };
            match (&conn.stream).read(&mut self.read_buf) {
                Ok(0) => return true,
                Ok(n) => {
                    let class = self.cfg.class;
                    let conn = self.conns[i].as_mut().expect("live");
                    if class.is_otc() {
                        conn.in_buf.extend_from_slice(&self.read_buf[..n]);
                        if otc_session_ended(&mut conn.in_buf) {
                            return true; // its session ended: cut off
                        }
                        continue;
                    }
                    if let Some(chan) = conn.chan.as_mut() {
                        let mut data = self.read_buf[..n].to_vec();
                        let mut frames = Frames::new(&mut conn.in_buf, &mut data, 1 << 16);
                        let mut opened = false;
                        while let Ok(Some(unit)) = frames.next(chan, &mut conn.out) {
                            opened |= matches!(unit, Unit::Opened);
                        }
                        drop(frames);
                        if opened && !conn.done {
                            conn.done = true;
                            after_handshake(class, chan, &mut conn.out);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// Writes what is queued; true if the connection is gone.
    fn write(&mut self, i: usize) -> bool {
        let Some(conn) = self.conns[i].as_mut() else {
            return false;
        };
        if !conn.connected {
            return false;
        }
        while !conn.out.is_empty() {
            match (&conn.stream).write(&conn.out) {
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Slowloris: the next byte of every trickling connection that is due.
    fn trickle(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let Some(conn) = self.conns[i].as_mut() else {
                continue;
            };
            if !conn.connected || conn.trickle.is_empty() || now < conn.next_trickle {
                continue;
            }
            let byte = conn.trickle.remove(0);
            conn.out.push(byte);
            conn.next_trickle = now + TRICKLE_EVERY;
            if self.write(i) {
                self.cut(i, now);
            }
        }
    }
}

/// What a class that finished the key exchange sends then.
fn after_handshake(class: Class, chan: &mut Channel, out: &mut Vec<u8>) {
    match class {
        Class::OversizedFrame => {
            out.extend_from_slice(&[0xFF, 0xFF]);
            out.extend_from_slice(&[0u8; 64]);
        }
        Class::BadMac => {
            let mut ping = Vec::new();
            ClientMsg::Ping { time: 1 }.encode(&mut ping);
            let mut frame = Vec::new();
            if chan.send(&mut frame, &ping).is_ok() && chan.seal(&mut frame).is_ok() {
                let last = frame.len() - 1;
                frame[last] ^= 0x01;
                out.extend_from_slice(&frame);
            }
        }
        Class::GuessedProof => {
            let mut token = [0u8; TOKEN_BYTES];
            random_bytes(&mut token);
            let mut proof = Vec::new();
            AuthProof {
                account_name: "bot0",
                shard_name: "shard-1",
                token: &token,
            }
            .encode(&mut proof);
            if chan.send(out, &proof).is_ok() {
                let _ = chan.seal(out);
            }
        }
        // Idle: the exchange done, nothing more.
        _ => {}
    }
}

/// Runs a connection-level class: `rate` new connections a second for
/// `duration` (at most `max_open` at once), then up to `linger` for the
/// proxy to cut off the rest.
pub(super) fn run(cfg: &AttackCfg) -> AttackReport {
    let mut flood = Flood {
        cfg,
        np: Netpoll::init(4096).expect("netpoll"),
        conns: Vec::new(),
        free: Vec::new(),
        open: 0,
        report: AttackReport::new(cfg.class),
        read_buf: vec![0; 64 * 1024],
        keys: Arc::new(KeyPair::generate()),
        next_ip: 0,
    };
    let start = Instant::now();
    let end = start + cfg.duration;
    let give_up = end + cfg.linger;
    let mut events = Vec::with_capacity(4096);
    loop {
        let now = Instant::now();
        if now >= give_up || (now >= end && flood.open == 0) {
            break;
        }
        if now < end {
            let due = (now.duration_since(start).as_secs_f64() * f64::from(cfg.rate)) as u64;
            while flood.report.attackers + flood.report.errors < due && flood.open < cfg.max_open {
                flood.open_one(now);
            }
        }
        if cfg.class == Class::Slowloris {
            flood.trickle(now);
        }
        if flood.np.wait(&mut events, 5).is_err() {
            break;
        }
        let now = Instant::now();
        for &ev in &events {
            flood.event(ev, now);
        }
    }
    flood.report.still_open = flood.open as u64;
    flood.report
}
