//! The proxy's rules without sockets (thesis §3.8), in the manner of quinn's
//! `tests/util.rs` `Pair`: the real [`Proxy`], fake shards and fake players
//! that speak cryptchan in memory, and a virtual clock.
//!
//! The harness plays the runtime: it calls the same [`Server`] methods the
//! main loop does (accept, read, connected, tick, timers, settle), flushes
//! the pools into the fake peers instead of sockets, and answers the pools'
//! commands as the I/O threads would: a connect to a listening fake shard
//! succeeds, to a refusing one fails at once, to a silent one times out at
//! its deadline; a close is confirmed one step later, after the next
//! timers, as the I/O thread's confirmation comes after the next loop turn.
//! [`Harness::drive`] runs until nothing moves; [`Harness::advance`] moves the
//! clock, running the tick once a simulated second and the timers when due.
//! The same rules are checked through real sockets in `tests/proxy_rules.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Proxy;
use crate::com::{ConnRef, HupReason, PoolId};
use crate::config::{Config, Secret, ShardEntry};
use crate::conn::{AnyPool, PoolCmd, Target};
use crate::cryptchan::{KeyPair, PublicKey, PushStream, TOKEN_BYTES, random_bytes};
use crate::proto::frame::{Channel, Frames, Unit, seal_with};
use crate::proto::proxy_shard::{FProxyMsg, LOGIN_RESULT_OK, OPENED_SOCKET_OK, TProxyMsg};
use crate::proto::{client::AuthProof, messages};
use crate::runtime::{MAIN_TICK, Server};

/// The address the fake shards listen on: `10.0.0.1:7701`, `:7702`, ...
pub fn shard_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 7701 + i as u16))
}

/// An address players connect from.
pub fn player_addr(last: u8) -> SocketAddr {
    SocketAddr::from(([192, 168, 0, last], 40_000))
}

/// The far end of one connection.
#[derive(Debug)]
enum Far {
    /// A fake shard's end of a link: what the proxy sent, message by message.
    Shard {
        chan: Channel,
        msgs: VecDeque<Vec<u8>>,
    },
    /// A fake player's end: the frames the shard (through the proxy) sent.
    Player {
        chan: Channel,
        frames: VecDeque<Vec<u8>>,
    },
}

#[derive(Debug)]
struct Peer {
    far: Far,
    in_buf: Vec<u8>,
    /// The proxy closed the connection.
    closed: bool,
    /// Bytes the far end wrote, not yet read by the proxy.
    to_proxy: Vec<u8>,
}

/// What a fake shard does with a connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// Accepts it.
    Listening,
    /// Refuses it at once (nothing listens).
    Refusing,
    /// Never answers (a host that drops the handshake): the connect times out.
    Silent,
}

/// The proxy between fake peers, on a virtual clock.
pub struct Harness {
    pub proxy: Proxy,
    pub now: Instant,
    next_tick: Instant,
    keys: Arc<KeyPair>,
    /// The fake shards' keys and what each does with a connect.
    shard_keys: Vec<Arc<KeyPair>>,
    pub shard_state: Vec<ShardState>,
    /// Every connect the proxy made: which shard, when.
    pub connects: Vec<(usize, Instant)>,
    /// Connects to silent shards, given up at their deadline.
    unanswered: Vec<(ConnRef, Instant)>,
    peers: HashMap<ConnRef, Peer>,
    /// Close confirmations for the next step.
    closing: Vec<ConnRef>,
    /// Connections whose far end reads nothing (a stalled shard): writes to
    /// them would block.
    stalled: HashSet<ConnRef>,
    /// Connections waiting for a writable event (`PoolCmd::WantWrite`).
    want_write: Vec<ConnRef>,
    next_socket_id: u32,
}

/// The configuration the harness starts from: defaults, a test password.
pub fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.shard.password = Secret::new("test-password");
    cfg
}

impl Harness {
    /// A proxy serving `n_shards` fake shards (all listening), the config
    /// tweaked by `tweak`, pinning keys as `pin` says.
    pub fn with(
        n_shards: usize,
        tweak: impl FnOnce(&mut Config),
        pin: Option<PublicKey>,
    ) -> Harness {
        crate::cryptchan::init().expect("libsodium");
        let mut cfg = test_config();
        tweak(&mut cfg);
        let entries: Vec<ShardEntry> = (0..n_shards)
            .map(|i| ShardEntry {
                line: i + 1,
                host: shard_addr(i).ip().to_string(),
                port: shard_addr(i).port(),
                key: pin,
            })
            .collect();
        let keys = Arc::new(KeyPair::generate());
        let now = Instant::now();
        Harness {
            proxy: Proxy::from_config(&cfg, &entries, keys.clone(), now),
            now,
            next_tick: now + MAIN_TICK,
            keys,
            shard_keys: (0..n_shards)
                .map(|_| Arc::new(KeyPair::generate()))
                .collect(),
            shard_state: vec![ShardState::Listening; n_shards],
            connects: Vec::new(),
            unanswered: Vec::new(),
            peers: HashMap::new(),
            closing: Vec::new(),
            stalled: HashSet::new(),
            want_write: Vec::new(),
            next_socket_id: 100,
        }
    }

    /// One shard, default configuration but for `tweak`, logged in as
    /// `shard-x`.
    pub fn new(tweak: impl FnOnce(&mut Config)) -> Harness {
        let mut h = Harness::with(1, tweak, None);
        h.drive();
        h.log_in(0, "shard-x");
        h
    }

    /// The proxy's public key.
    pub fn proxy_key(&self) -> PublicKey {
        self.keys.public()
    }

    /// Runs the proxy's timers, settles, flushes and delivers, until nothing
    /// moves (bounded: a loop would be a bug).
    pub fn drive(&mut self) {
        for _ in 0..1000 {
            self.proxy.on_timers(self.now);
            // Closes asked for in the step before, confirmed only now: after
            // the timers, as a real confirmation comes after the next turn.
            let confirmed = self.confirm_closes();
            self.time_out_connects();
            self.proxy.settle(self.now);
            self.proxy.before_flush(self.now);
            self.proxy.settle(self.now);
            let moved = self.flush_pool(PoolId::Shard) | self.flush_pool(PoolId::Client);
            let moved = moved | confirmed | self.deliver_to_proxy();
            if !moved && self.closing.is_empty() {
                return;
            }
        }
        panic!("the harness never came to rest");
    }

    /// The I/O thread giving up connects past their deadline.
    fn time_out_connects(&mut self) {
        let now = self.now;
        let (due, waiting): (Vec<_>, Vec<_>) =
            self.unanswered.drain(..).partition(|&(_, at)| now >= at);
        self.unanswered = waiting;
        for (conn, _) in due {
            self.pool(conn.pool).hup(conn, HupReason::ConnectTimeout);
        }
    }

    /// Moves the clock by `d`: the tick once a simulated second, the timers
    /// when due, and [`Harness::drive`] after each step.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            let mut step = end.min(self.next_tick);
            let deadline = self.unanswered.iter().map(|&(_, at)| at).min();
            if let Some(timer) = self.proxy.next_timer().into_iter().chain(deadline).min() {
                step = step.min(timer.max(self.now + Duration::from_millis(1)));
            }
            self.now = step;
            if self.now >= self.next_tick {
                let (clients, shards) = self.proxy.pools();
                clients.tick(self.now);
                shards.expect("a shard pool").tick(self.now);
                self.proxy.on_tick(self.now);
                self.next_tick = self.now + MAIN_TICK;
            }
            self.drive();
        }
    }

    fn pool(&mut self, id: PoolId) -> &mut dyn AnyPool {
        match (id, self.proxy.pools()) {
            (PoolId::Client, (clients, _)) => clients,
            (PoolId::Shard, (_, shards)) => shards.expect("a shard pool"),
        }
    }

    /// The pool's output into the far ends, then its commands.
    fn flush_pool(&mut self, id: PoolId) -> bool {
        let mut wrote: Vec<(ConnRef, Vec<u8>)> = Vec::new();
        let mut commands = Vec::new();
        let stalled = self.stalled.clone();
        {
            let pool = self.pool(id);
            pool.flush_to(&mut |conn, bytes| {
                if stalled.contains(&conn) {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                wrote.push((conn, bytes.to_vec()));
                Ok::<usize, io::Error>(bytes.len())
            });
            commands.extend(pool.take_commands());
        }
        let moved = !wrote.is_empty() || !commands.is_empty();
        for (conn, bytes) in wrote {
            self.deliver_to_far(conn, bytes);
        }
        for cmd in commands {
            self.command(cmd);
        }
        moved
    }

    /// What an I/O thread would do with a pool's command.
    fn command(&mut self, cmd: PoolCmd) {
        match cmd {
            PoolCmd::Connect {
                conn,
                target,
                deadline,
            } => {
                let Target::Addr(addr) = target else {
                    panic!("the harness resolves no names");
                };
                let shard = (0..self.shard_keys.len()).find(|&i| shard_addr(i) == addr);
                if let Some(i) = shard {
                    self.connects.push((i, self.now));
                }
                match shard.map(|i| (i, self.shard_state[i])) {
                    Some((i, ShardState::Listening)) => self.shard_accepts(conn, i, addr),
                    Some((_, ShardState::Silent)) => self.unanswered.push((conn, deadline)),
                    _ => {
                        let refused = HupReason::ConnectFailed(io::ErrorKind::ConnectionRefused);
                        self.pool(conn.pool).hup(conn, refused);
                    }
                }
            }
            PoolCmd::WantWrite { conn } => self.want_write.push(conn),
            PoolCmd::Close { conn } => {
                if let Some(peer) = self.peers.get_mut(&conn) {
                    peer.closed = true;
                }
                self.closing.push(conn);
            }
        }
    }

    fn shard_accepts(&mut self, conn: ConnRef, i: usize, addr: SocketAddr) {
        let peer = Peer {
            far: Far::Shard {
                chan: Channel::acceptor(self.shard_keys[i].clone()),
                msgs: VecDeque::new(),
            },
            in_buf: Vec::new(),
            closed: false,
            to_proxy: Vec::new(),
        };
        self.peers.insert(conn, peer);
        let now = self.now;
        if self.pool(conn.pool).connected(conn, addr, now) {
            self.proxy.on_connected(conn, now);
        }
    }

    fn confirm_closes(&mut self) -> bool {
        let closing = std::mem::take(&mut self.closing);
        for &conn in &closing {
            self.pool(conn.pool).closed(conn);
        }
        !closing.is_empty()
    }

    /// Bytes from the proxy to a far end, which answers handshakes and keeps
    /// frames and messages.
    fn deliver_to_far(&mut self, conn: ConnRef, mut bytes: Vec<u8>) {
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        let Peer {
            far,
            in_buf,
            to_proxy,
            ..
        } = peer;
        let chan = match far {
            Far::Shard { chan, .. } | Far::Player { chan, .. } => chan,
        };
        let mut frames = Frames::new(in_buf, &mut bytes, 1 << 20);
        let mut units = Vec::new();
        while let Some(unit) = frames
            .next(chan, to_proxy)
            .expect("the proxy speaks cryptchan")
        {
            if let Unit::Frame(frame) = unit {
                units.push(frame.to_vec());
            }
        }
        drop(frames);
        for frame in units {
            match far {
                Far::Shard { msgs, chan } => {
                    for msg in messages::<FProxyMsg<'_>>(&frame) {
                        let msg = msg.expect("the proxy's messages decode");
                        // A heartbeat is answered as a shard answers it,
                        // not kept for the test.
                        if let FProxyMsg::Ping { seq } = msg {
                            let mut pong = Vec::new();
                            TProxyMsg::Pong { seq }.encode(&mut pong);
                            chan.send(to_proxy, &pong).unwrap();
                            chan.seal(to_proxy).unwrap();
                            continue;
                        }
                        let mut bytes = Vec::new();
                        msg.encode(&mut bytes);
                        msgs.push_back(bytes);
                    }
                }
                Far::Player { frames, .. } => frames.push_back(frame),
            }
        }
    }

    /// What the far ends wrote, read by the proxy.
    fn deliver_to_proxy(&mut self) -> bool {
        let mut moved = false;
        let conns: Vec<ConnRef> = self.peers.keys().copied().collect();
        for conn in conns {
            let peer = self.peers.get_mut(&conn).expect("listed");
            if peer.to_proxy.is_empty() || peer.closed {
                continue;
            }
            let mut bytes = std::mem::take(&mut peer.to_proxy);
            self.proxy.on_read(conn, &mut bytes, self.now);
            moved = true;
        }
        moved
    }

    /// Shard `i` stops reading its link (`true`), or reads again (`false`):
    /// what waited is written then.
    pub fn stall_shard(&mut self, i: usize, stalled: bool) {
        let link = self.link(i).expect("shard link up");
        if stalled {
            self.stalled.insert(link);
            return;
        }
        self.stalled.remove(&link);
        for conn in std::mem::take(&mut self.want_write) {
            self.pool(conn.pool).writable(conn);
        }
        self.drive();
    }

    /// The link to shard `i`, if one is up.
    pub fn link(&self, i: usize) -> Option<ConnRef> {
        let addr = shard_addr(i);
        self.proxy.links.up().find(|&c| {
            self.proxy
                .links
                .entry(c)
                .is_some_and(|e| e.host == addr.ip().to_string() && e.port == addr.port())
        })
    }

    /// The next message the proxy sent shard `i`'s link, decoded by the
    /// caller: `FProxyMsg::decode(&bytes)`.
    pub fn shard_recv(&mut self, i: usize) -> Vec<u8> {
        self.drive();
        let link = self.link(i).expect("shard link up");
        match &mut self.peers.get_mut(&link).expect("a peer").far {
            Far::Shard { msgs, .. } => msgs.pop_front().expect("a message from the proxy"),
            Far::Player { .. } => unreachable!(),
        }
    }

    /// True if the proxy sent shard `i`'s link nothing more.
    pub fn shard_quiet(&mut self, i: usize) -> bool {
        self.drive();
        let Some(link) = self.link(i) else {
            return true;
        };
        matches!(&self.peers[&link].far, Far::Shard { msgs, .. } if msgs.is_empty())
    }

    /// Shard `i` sends one message on its link.
    pub fn shard_send(&mut self, i: usize, msg: &TProxyMsg<'_>) {
        let link = self.link(i).expect("shard link up");
        let mut plain = Vec::new();
        msg.encode(&mut plain);
        let peer = self.peers.get_mut(&link).expect("a peer");
        let Far::Shard { chan, .. } = &mut peer.far else {
            unreachable!()
        };
        chan.send(&mut peer.to_proxy, &plain).unwrap();
        chan.seal(&mut peer.to_proxy).unwrap();
        self.drive();
    }

    /// Completes shard `i`'s login: checks `FPROXY_MSG_LOGIN`, answers OK.
    pub fn log_in(&mut self, i: usize, name: &str) {
        let login = self.shard_recv(i);
        match FProxyMsg::decode(&login).unwrap().unwrap().0 {
            FProxyMsg::Login { password, .. } => assert_eq!(password, b"test-password"),
            other => panic!("expected FPROXY_MSG_LOGIN, got {other:?}"),
        }
        self.shard_send(
            i,
            &TProxyMsg::LoginResult {
                result: LOGIN_RESULT_OK,
                shard_name: name,
            },
        );
    }

    /// Shard 0 reserves a slot for `account` from `from`: the socket id and
    /// the token (the proxy's answer is checked to be OK).
    pub fn reserve(&mut self, account: &str, from: SocketAddr) -> (u32, [u8; TOKEN_BYTES]) {
        let socket_id = self.next_socket_id;
        self.next_socket_id += 1;
        let mut token = [0u8; TOKEN_BYTES];
        random_bytes(&mut token);
        self.shard_send(
            0,
            &TProxyMsg::OpenedSocket {
                socket_id,
                account_id: u64::from(socket_id),
                login_session_id: 1,
                ip: from.ip(),
                account_name: account,
                token: &token,
            },
        );
        let reply = self.shard_recv(0);
        assert_eq!(
            FProxyMsg::decode(&reply).unwrap().unwrap().0,
            FProxyMsg::OpenedSocketResult {
                socket_id,
                result: OPENED_SOCKET_OK
            }
        );
        (socket_id, token)
    }

    /// A player connects from `from`: `None` if the proxy refused it at
    /// accept. Its handshake runs at once.
    pub fn connect(&mut self, from: SocketAddr) -> Option<ConnRef> {
        self.connect_with(from, &[])
    }

    /// A connection from `from` (a forwarder) that first writes `pieces`
    /// (a PROXY protocol header, whole or in parts), each read by the proxy
    /// on its own; then the player's handshake.
    pub fn connect_with(&mut self, from: SocketAddr, pieces: &[&[u8]]) -> Option<ConnRef> {
        self.open(from, pieces, true)
    }

    /// As [`Harness::connect_with`], with no handshake after the pieces
    /// (a connection that stops sending).
    pub fn connect_silent(&mut self, from: SocketAddr, pieces: &[&[u8]]) -> Option<ConnRef> {
        self.open(from, pieces, false)
    }

    fn open(&mut self, from: SocketAddr, pieces: &[&[u8]], handshake: bool) -> Option<ConnRef> {
        let conn = self.proxy.on_accept(0, from, self.now)?;
        for piece in pieces {
            self.proxy.on_read(conn, &mut piece.to_vec(), self.now);
            self.drive();
        }
        let mut hello = Vec::new();
        let chan = Channel::initiator(
            Arc::new(KeyPair::generate()),
            Some(self.proxy_key()),
            &mut hello,
        );
        if !handshake {
            hello.clear();
        }
        self.peers.insert(
            conn,
            Peer {
                far: Far::Player {
                    chan,
                    frames: VecDeque::new(),
                },
                in_buf: Vec::new(),
                // Closed already if a piece broke a rule.
                closed: self.proxy.clients.get(conn).is_none(),
                to_proxy: hello,
            },
        );
        self.drive();
        Some(conn)
    }

    /// The player sends one frame holding `plaintext`.
    pub fn send_frame(&mut self, conn: ConnRef, plaintext: &[u8]) {
        let peer = self.peers.get_mut(&conn).expect("a player");
        let Far::Player { chan, .. } = &mut peer.far else {
            unreachable!()
        };
        chan.send(&mut peer.to_proxy, plaintext).unwrap();
        chan.seal(&mut peer.to_proxy).unwrap();
        self.drive();
    }

    /// The player sends raw bytes (a tampered frame, an oversized length).
    pub fn send_raw(&mut self, conn: ConnRef, bytes: &[u8]) {
        let peer = self.peers.get_mut(&conn).expect("a player");
        peer.to_proxy.extend_from_slice(bytes);
        self.drive();
    }

    /// A frame the player's channel would send, sealed but not sent.
    pub fn seal_frame(&mut self, conn: ConnRef, plaintext: &[u8]) -> Vec<u8> {
        let peer = self.peers.get_mut(&conn).expect("a player");
        let Far::Player { chan, .. } = &mut peer.far else {
            unreachable!()
        };
        let mut frame = Vec::new();
        chan.send(&mut frame, plaintext).unwrap();
        chan.seal(&mut frame).unwrap();
        frame
    }

    /// The next frame the player received.
    pub fn player_recv(&mut self, conn: ConnRef) -> Option<Vec<u8>> {
        self.drive();
        match &mut self.peers.get_mut(&conn)?.far {
            Far::Player { frames, .. } => frames.pop_front(),
            Far::Shard { .. } => unreachable!(),
        }
    }

    /// True once the proxy has closed the connection.
    pub fn is_closed(&mut self, conn: ConnRef) -> bool {
        self.drive();
        self.peers.get(&conn).is_none_or(|p| p.closed)
    }

    /// The far end hangs up (the I/O thread's EOF).
    pub fn hang_up(&mut self, conn: ConnRef) {
        self.pool(conn.pool).hup(conn, HupReason::Eof);
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.closed = true;
        }
        self.drive();
    }

    /// A player reserved, connected and authenticated as `account`: its
    /// connection, its socket id, and the stream its shard writes to it with.
    pub fn player(&mut self, account: &str, from: SocketAddr) -> (ConnRef, u32, PushStream) {
        let (socket_id, token) = self.reserve(account, from);
        let conn = self.connect(from).expect("admitted");
        let mut proof = Vec::new();
        AuthProof {
            account_name: account,
            shard_name: "shard-x",
            token: &token,
        }
        .encode(&mut proof);
        self.send_frame(conn, &proof);
        let msg = self.shard_recv(0);
        let Ok(Some((
            FProxyMsg::PlayerCryptchan {
                socket_id: s,
                addr,
                state,
            },
            _,
        ))) = FProxyMsg::decode(&msg)
        else {
            panic!("expected FPROXY_MSG_PLAYER_CRYPTCHAN");
        };
        assert_eq!(s, socket_id);
        assert_eq!(addr, from, "the shard is told the player's address");
        (conn, socket_id, PushStream::import_state(state))
    }

    /// A frame for a player, sealed with its stream as its shard would.
    pub fn shard_frame(push: &mut PushStream, plaintext: &[u8]) -> Vec<u8> {
        let mut frame = vec![0, 0, 0];
        frame.extend_from_slice(plaintext);
        seal_with(push, &mut frame, 0).unwrap();
        frame
    }
}

/// A message of the proxy to a shard, decoded.
pub fn msg(bytes: &[u8]) -> FProxyMsg<'_> {
    FProxyMsg::decode(bytes).unwrap().unwrap().0
}

mod attacks;
mod forwarders;
mod tests;
