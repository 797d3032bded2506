//! The OTClient multi-path front end (seed 002's world; no thesis section:
//! a port decision, `docs/otc.md`), on the main thread beside the MUTA
//! players, in the same pools and the same loop: an OTC connection (a
//! *path*, usually through a forwarder) is a slot of the client pool; each
//! session's connection to the game server is a slot of the shard pool,
//! opened by the shard thread like a shard link (the thesis model: I/O
//! threads read, the main thread owns the sessions and writes).
//!
//! ```text
//! client ── path A (forwarder 1) ──┐                       ┌─ game connection ─▶ TFS :7172
//!        ── path B (forwarder 2) ──┼─▶ OtcSession 0x1234 ──┘  (one per session)
//!        ── path C (spare, pinged) ┘   (attached: A, B)
//! ```
//!
//! A session is opened by a client's open frame (packet id 0) on a path:
//! the port must be on `otc.allowed_ports`; the session is bound to the
//! path's effective address (the PROXY header's), and an attach, a frame or
//! a detach for it from another address is refused. Every packet the client
//! sends comes on each attached path; [`session::Inbound`] delivers the
//! first copy in order. Every packet of the game server goes, framed, to
//! every attached path and stays in [`session::Unacked`] until the client
//! acknowledges it; a path that attaches gets all of it again. When the game
//! server closes, every attached path gets the session's end; a session
//! with no attached path is ended after `otc.detached_timeout_ms`. Each bound
//! of `[otc]` ends the session (a session bound) or refuses the frame's path
//! (a broken rule), with a log line and a count ([`Refusal`]).
//!
//! The session table ([`Otc`]) is the one owner of sessions. A path's slot
//! lists the sessions it is attached to ([`OtcPath`]) and a game
//! connection's slot names its session ([`GameConn`]), so either side's end
//! finds the other without a search.

pub mod session;
pub mod table;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, info};

use crate::com::ConnRef;
use crate::config::{Config, Networks};
use crate::conn::{DisconnectReason, Target};
use crate::proto::ProtoError;
use crate::proto::otc::{self, OtcFrame};

use super::cl::{ClError, Stage};
use super::limits::{AddrKey, Rate, TokenBucket};
use super::refusals::Refusal;
use super::{Outbound, Proxy};
use crate::shard::SLOTS_PER_LINK;
use session::{Arrival, Inbound, Unacked};
use table::Table;

/// A session's unacknowledged buffer keeps this much capacity when empty.
const UNACKED_KEEP: usize = 4 * 1024;
/// Most bytes of a Tibia packet from the game server, its length included.
const GAME_PACKET_MAX: usize = otc::PACKET_MAX;
/// Bytes of one slot of the session table, each allocated at start.
pub const SESSION_SLOT_BYTES: usize = std::mem::size_of::<Option<OtcSession>>();
// A slot stays small, as every one is allocated at start: at the default
// 4,096 sessions the slots are then at most 1 MiB of the RSS, the index
// another 144 KiB (ARCHITECTURE.md, "Bounds"). The build fails if a new
// field passes it.
const _: () = assert!(
    SESSION_SLOT_BYTES <= 256,
    "an OTC session slot passed 256 bytes"
);
/// The first bytes to the game server with `otc.ip_prefix`: `0xFFFE`
/// (little-endian, as TFS reads a length) and an IPv4 address.
pub const IP_PREFIX_MAGIC: u16 = 0xFFFE;

/// The `[otc]` settings the rules use.
#[derive(Clone, Debug)]
pub struct OtcSettings {
    /// Where each session's game connection goes.
    pub game_host: String,
    /// Ports a session may ask for.
    pub allowed_ports: Vec<u16>,
    /// Send the client's address first.
    pub ip_prefix: bool,
    /// Where PROXY headers to the OTC listener are taken from.
    pub trusted_forwarders: Networks,
    /// Most sessions.
    pub max_sessions: usize,
    /// Most sessions per address.
    pub sessions_per_addr_max: u32,
    /// New sessions per address.
    pub new_sessions: Rate,
    /// Most paths per session.
    pub paths_per_session_max: usize,
    /// Most sessions per path.
    pub sessions_per_path_max: usize,
    /// Packet ids ahead of the next one expected.
    pub reorder_window: u32,
    /// Bytes held out of order per session.
    pub reorder_bytes_max: usize,
    /// Bytes not acknowledged per session.
    pub unacked_bytes_max: usize,
    /// A detached session's life.
    pub detached_timeout: Duration,
    /// The game connect's deadline.
    pub connect_timeout: Duration,
    /// Output limit of a game connection.
    pub game_out_buf_size: usize,
    /// Each path's frames.
    pub path_frames: Rate,
    /// Each session's packets to the game server.
    pub session_msgs: Rate,
    /// Each session's bytes to the game server.
    pub session_bytes: Rate,
}

impl OtcSettings {
    /// From `proxy.cfg`.
    pub fn from_config(cfg: &Config) -> OtcSettings {
        let o = &cfg.otc;
        OtcSettings {
            game_host: o.game_host.clone(),
            allowed_ports: o.allowed_ports.clone(),
            ip_prefix: o.ip_prefix,
            trusted_forwarders: o.trusted_forwarders.clone(),
            max_sessions: o.max_sessions as usize,
            sessions_per_addr_max: o.sessions_per_addr_max,
            new_sessions: Rate {
                per_s: o.new_sessions_per_addr_per_s,
                burst: o.new_sessions_per_addr_burst,
            },
            paths_per_session_max: o.paths_per_session_max as usize,
            sessions_per_path_max: o.sessions_per_path_max as usize,
            reorder_window: o.reorder_window,
            reorder_bytes_max: o.reorder_bytes_max,
            unacked_bytes_max: o.unacked_bytes_max,
            detached_timeout: Duration::from_millis(o.detached_timeout_ms),
            connect_timeout: Duration::from_millis(o.connect_timeout_ms),
            game_out_buf_size: o.game_out_buf_size,
            path_frames: Rate {
                per_s: o.path_frames_per_s,
                burst: o.path_frames_burst,
            },
            session_msgs: Rate {
                per_s: o.session_msgs_per_s,
                burst: o.session_msgs_burst,
            },
            session_bytes: Rate {
                per_s: o.session_bytes_per_s,
                burst: o.session_bytes_burst,
            },
        }
    }
}

/// A path's part of its client-pool slot: the sessions attached to it, and
/// its budget of frames.
#[derive(Debug, Default)]
pub struct OtcPath {
    /// The sessions this path is attached to (at most
    /// `otc.sessions_per_path_max`).
    pub sessions: Vec<u32>,
    frames: Option<TokenBucket>,
}

/// One address's sessions.
#[derive(Debug)]
struct AddrSessions {
    live: u32,
    opens: TokenBucket,
}

/// A game connection's part of its shard-pool slot: whose it is.
#[derive(Debug)]
pub struct GameConn {
    /// The session.
    pub session: u32,
}

/// One session (the backend's `Session`): its owner, its game connection,
/// its paths and its two directions.
#[derive(Debug)]
struct OtcSession {
    /// The effective address that opened it; only it may use the session.
    owner: IpAddr,
    port: u16,
    game: ConnRef,
    /// Attached paths, at most `otc.paths_per_session_max`.
    paths: Vec<ConnRef>,
    /// Since when no path has been attached.
    detached_since: Option<Instant>,
    inbound: Inbound,
    unacked: Unacked,
    msgs: TokenBucket,
    bytes: TokenBucket,
}

/// Counters of the OTC front end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OtcStats {
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions ended (for any reason).
    pub sessions_ended: u64,
    /// Attaches of a path to a live session.
    pub attaches: u64,
    /// Packets delivered to game servers.
    pub packets_to_game: u64,
    /// Packets from game servers (each sent to every attached path).
    pub packets_to_clients: u64,
    /// Client packets dropped as duplicates (the copy of another path).
    pub duplicates: u64,
    /// Pings answered.
    pub pongs: u64,
    /// Data frames from a path of the session's owner not attached to it
    /// (one the proxy let go for a newer one): dropped.
    pub unattached_dropped: u64,
    /// Paths let go of by a session for a newer one
    /// (`otc.paths_per_session_max`).
    pub evicted: u64,
}

/// The session table: the one owner of every OTC session.
#[derive(Debug)]
pub struct Otc {
    settings: OtcSettings,
    /// Allocated whole at start (`otc.max_sessions`): see [`table`].
    sessions: Table<OtcSession>,
    /// By the address (IPv6: /64) that opened them: live sessions and the
    /// bucket of new ones. An entry lives while its address has a session
    /// or its bucket is refilling (pruned at the tick); an address needs an
    /// admitted path to open one, so the address table bounds them.
    per_addr: HashMap<AddrKey, AddrSessions>,
    /// Connections in the OTC path stage.
    n_paths: usize,
    stats: OtcStats,
    scratch: Vec<u32>,
}

/// How a path's frame is refused.
enum Refused {
    /// The path broke a rule: it is disconnected.
    Path(Refusal, String),
    /// A limit: the path is told the session's end and stays.
    Session(&'static str),
    /// The session passed a bound: it is ended.
    End(&'static str),
}

impl Otc {
    /// An empty table of `slots` sessions, allocated now.
    pub fn new(settings: OtcSettings, slots: usize) -> Otc {
        let sessions = Table::new(slots);
        if slots > 0 {
            info!(
                "otc: session table of {slots} slots ({} KiB with its index), allocated at start",
                sessions.reserved_bytes() / 1024
            );
        }
        Otc {
            sessions,
            settings,
            per_addr: HashMap::new(),
            n_paths: 0,
            stats: OtcStats::default(),
            scratch: Vec::new(),
        }
    }

    /// New settings (a reload); sessions keep their state.
    pub fn set_settings(&mut self, settings: OtcSettings) {
        self.settings = settings;
    }

    /// The ids of the live sessions.
    pub fn session_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.sessions.ids()
    }

    /// Live sessions.
    pub fn n_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Connections in the OTC path stage.
    pub fn n_paths(&self) -> usize {
        self.n_paths
    }

    /// Counters so far.
    pub fn stats(&self) -> OtcStats {
        self.stats
    }

    /// Where PROXY headers to the OTC listener are taken from.
    pub fn trusted_forwarders(&self) -> &Networks {
        &self.settings.trusted_forwarders
    }

    /// Bytes the sessions hold in their buffers (unacknowledged and held out
    /// of order), for the statistics line.
    pub fn buffered_bytes(&self) -> usize {
        self.sessions
            .iter()
            .map(|(_, s)| s.unacked.capacity() + s.inbound.held_bytes())
            .sum()
    }
}

/// The prefix the gesior TFS patch reads: `0xFFFE` and the client's IPv4
/// address in network order. An IPv4-mapped IPv6 address is its IPv4; any
/// other IPv6 address is sent as `0.0.0.0` (TFS keeps 32-bit addresses):
/// never the proxy's own loopback, which a game server may trust.
pub fn ip_prefix(addr: IpAddr) -> [u8; 6] {
    let v4 = match addr {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
    };
    let mut prefix = [0; 6];
    prefix[..2].copy_from_slice(&IP_PREFIX_MAGIC.to_le_bytes());
    prefix[2..].copy_from_slice(&v4.octets());
    prefix
}

/// The length of the OTC frame at the front of `bytes`, for the pool's
/// [`crate::conn::Pool::send_ahead`].
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]));
    let n = otc::LEN_BYTES + len;
    (bytes.len() >= n).then_some(n)
}

/// The pong: a session-0 frame of zeros.
const PONG: [u8; otc::LEN_BYTES + otc::HEADER_BYTES] = [12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

impl Proxy {
    /// A connection enters the OTC path stage: no deadline (it pings), its
    /// frame budget, and output the pool can put a pong ahead in.
    pub(super) fn otc_enter_path(&mut self, client: ConnRef, now: Instant) {
        let rate = self.otc.settings.path_frames;
        let Some(slot) = self.clients.get_mut(client) else {
            return;
        };
        slot.session.stage = Stage::OtcPath;
        slot.session.deadline = None;
        slot.session.otc.frames = Some(TokenBucket::full(rate, now));
        self.clients.set_units(client, frame_len);
        self.otc.n_paths += 1;
    }

    /// A path's bytes: whole frames handled from the read block, a frame
    /// split across reads gathered in `in_buf` (at most one frame, 65,537
    /// bytes).
    pub(super) fn otc_path_read(
        &mut self,
        path: ConnRef,
        in_buf: &mut Vec<u8>,
        mut data: &[u8],
        now: Instant,
    ) -> Result<(), ClError> {
        if !in_buf.is_empty() {
            if !otc::gather(in_buf, &mut data) {
                return Ok(());
            }
            if let Some((frame, _)) = OtcFrame::decode(in_buf).map_err(otc_refusal)? {
                self.otc_frame(path, frame, now)?;
            }
            in_buf.clear();
        }
        while !data.is_empty() {
            match OtcFrame::decode(data).map_err(otc_refusal)? {
                Some((frame, n)) => {
                    self.otc_frame(path, frame, now)?;
                    data = &data[n..];
                }
                None => {
                    in_buf.extend_from_slice(data);
                    break;
                }
            }
        }
        Ok(())
    }

    /// One frame of a path, after its budget.
    fn otc_frame(
        &mut self,
        path: ConnRef,
        frame: OtcFrame<'_>,
        now: Instant,
    ) -> Result<(), ClError> {
        let rate = self.otc.settings.path_frames;
        let Some(slot) = self.clients.get_mut(path) else {
            return Ok(());
        };
        let addr = slot.addr();
        if let Some(frames) = slot.session.otc.frames.as_mut()
            && !frames.take(1, rate, now)
        {
            return Err(ClError::Otc(
                Refusal::OtcPathBudget,
                "over otc.path_frames_per_s".to_string(),
            ));
        }
        let result = match frame {
            OtcFrame::Ping { .. } => {
                self.otc.stats.pongs += 1;
                self.clients.send_ahead(path, &PONG);
                Ok(())
            }
            OtcFrame::Open { session, port } => self.otc_open(path, addr, session, port, now),
            OtcFrame::End { session } => self.otc_detach_frame(path, addr, session, now),
            OtcFrame::Data {
                session,
                packet_id,
                ack,
                packet,
            } => self.otc_data(path, addr, session, (packet_id, ack), packet, now),
        };
        match result {
            Ok(()) => Ok(()),
            Err(Refused::Path(class, why)) => Err(ClError::Otc(class, why)),
            Err(Refused::Session(why)) => {
                let session = frame_session(&frame);
                debug!("otc session {session:#x} ({addr}): refused: {why}");
                self.stats.refusals.count(Refusal::OtcSessionLimit);
                self.otc_send_end(path, session);
                Ok(())
            }
            Err(Refused::End(why)) => {
                self.stats.refusals.count(Refusal::OtcSessionBound);
                self.otc_end_session(frame_session(&frame), why, now);
                Ok(())
            }
        }
    }

    /// An open (attach) frame: attaches the path to a live session of its
    /// address, or opens a new session.
    fn otc_open(
        &mut self,
        path: ConnRef,
        addr: SocketAddr,
        session: u32,
        port: u16,
        now: Instant,
    ) -> Result<(), Refused> {
        if let Some(s) = self.otc.sessions.get(session) {
            if s.owner != addr.ip() {
                return Err(foreign(session, addr));
            }
            if s.port != port {
                return Err(Refused::Path(
                    Refusal::OtcProtocol,
                    format!(
                        "attach to session {session:#x} for port {port}, opened for {}",
                        s.port
                    ),
                ));
            }
            return self.otc_attach(path, session);
        }
        if !self.otc.settings.allowed_ports.contains(&port) {
            return Err(Refused::Path(
                Refusal::OtcProtocol,
                format!("session {session:#x} asks for port {port}, not in otc.allowed_ports"),
            ));
        }
        self.otc_check_room(path, addr.ip(), now)?;
        self.otc_new_session(path, addr.ip(), session, port, now)
    }

    /// The limits a new session must pass, its address's bucket of new
    /// sessions last (only a session that can open pays).
    fn otc_check_room(&mut self, path: ConnRef, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        let o = &mut self.otc;
        if o.sessions.len() >= o.settings.max_sessions.min(o.sessions.capacity()) {
            return Err(Refused::Session("otc.max_sessions"));
        }
        // The shard pool's slots for the links' reconnects are never taken
        // by sessions (a closing game connection still holds its slot).
        if self.shards.n_free() <= self.links.len() * SLOTS_PER_LINK {
            return Err(Refused::Session(
                "the shard pool is full (otc.max_sessions)",
            ));
        }
        let on_path = self
            .clients
            .get(path)
            .map_or(0, |s| s.session.otc.sessions.len());
        if on_path >= o.settings.sessions_per_path_max {
            return Err(Refused::Session("otc.sessions_per_path_max"));
        }
        let rate = o.settings.new_sessions;
        let entry = o
            .per_addr
            .entry(AddrKey::of(ip))
            .or_insert_with(|| AddrSessions {
                live: 0,
                opens: TokenBucket::full(rate, now),
            });
        if entry.live >= o.settings.sessions_per_addr_max {
            return Err(Refused::Session("otc.sessions_per_addr_max"));
        }
        if !entry.opens.take(1, rate, now) {
            return Err(Refused::Session("otc.new_sessions_per_addr_per_s"));
        }
        Ok(())
    }

    /// A new session: its game connection (the prefix queued first; what
    /// the client sends waits in its output until it connects) and the
    /// path that opened it attached.
    fn otc_new_session(
        &mut self,
        path: ConnRef,
        owner: IpAddr,
        session: u32,
        port: u16,
        now: Instant,
    ) -> Result<(), Refused> {
        let settings = &self.otc.settings;
        let target = Target::new(&settings.game_host, port);
        let Some(game) = self
            .shards
            .connect_within(target, settings.connect_timeout, now)
        else {
            return Err(Refused::Session(
                "the shard pool is full (otc.max_sessions)",
            ));
        };
        self.shards.set_out_max(game, settings.game_out_buf_size);
        if let Some(slot) = self.shards.get_mut(game) {
            slot.session = Outbound::Game(GameConn { session });
        }
        if settings.ip_prefix {
            self.shards.send(game, &ip_prefix(owner));
        }
        let s = &self.otc.settings;
        let added = self.otc.sessions.insert(
            session,
            OtcSession {
                owner,
                port,
                game,
                paths: Vec::new(),
                detached_since: Some(now),
                inbound: Inbound::default(),
                unacked: Unacked::default(),
                msgs: TokenBucket::full(s.session_msgs, now),
                bytes: TokenBucket::full(s.session_bytes, now),
            },
        );
        if added.is_err() {
            // Not reached: `otc_open` saw the id free and `otc_check_room`
            // a free slot. Refused all the same, never a panic.
            self.shards.disconnect(
                game,
                DisconnectReason::Closed("its OTC session was refused"),
            );
            return Err(Refused::Session("otc.max_sessions"));
        }
        if let Some(entry) = self.otc.per_addr.get_mut(&AddrKey::of(owner)) {
            entry.live += 1; // made by `otc_check_room`
        }
        self.otc.stats.sessions_opened += 1;
        debug!("otc session {session:#x} ({owner}): opened towards port {port}");
        self.otc_attach(path, session)
    }

    /// Attaches a path to a session (again: nothing happens) and sends it
    /// every frame the client has not acknowledged. Past
    /// `otc.paths_per_session_max` the session lets its oldest path go (a
    /// path of a forwarder that died without a FIN stays attached until its
    /// idle timeout, and the client attaches a new one before detaching);
    /// a path with `otc.sessions_per_path_max` sessions is not attached.
    /// Neither is told: a session end would end the session on the client.
    fn otc_attach(&mut self, path: ConnRef, session: u32) -> Result<(), Refused> {
        let (per_session, per_path) = (
            self.otc.settings.paths_per_session_max,
            self.otc.settings.sessions_per_path_max,
        );
        let Some(s) = self.otc.sessions.get_mut(session) else {
            return Ok(());
        };
        if s.paths.contains(&path) {
            return Ok(());
        }
        let Some(slot) = self.clients.get_mut(path) else {
            return Ok(());
        };
        if slot.session.otc.sessions.len() >= per_path {
            debug!("otc session {session:#x}: not attached to {path}: otc.sessions_per_path_max");
            return Ok(());
        }
        slot.session.otc.sessions.push(session);
        if s.paths.len() >= per_session {
            let oldest = s.paths.remove(0);
            self.otc.stats.evicted += 1;
            if let Some(slot) = self.clients.get_mut(oldest) {
                slot.session.otc.sessions.retain(|&id| id != session);
            }
        }
        s.paths.push(path);
        s.detached_since = None;
        self.otc.stats.attaches += 1;
        if !s.unacked.pending().is_empty() {
            self.clients.send(path, s.unacked.pending());
        }
        Ok(())
    }

    /// The client's detach (an end frame on a path): the path leaves the
    /// session, which lives on until its game server closes or it stays
    /// detached too long.
    fn otc_detach_frame(
        &mut self,
        path: ConnRef,
        addr: SocketAddr,
        session: u32,
        now: Instant,
    ) -> Result<(), Refused> {
        match self.otc.sessions.get(session) {
            None => Ok(()), // already ended: the client learns it from our end
            Some(s) if s.owner != addr.ip() => Err(foreign(session, addr)),
            Some(_) => {
                self.otc_detach(path, session, now);
                if let Some(slot) = self.clients.get_mut(path) {
                    slot.session.otc.sessions.retain(|&id| id != session);
                }
                Ok(())
            }
        }
    }

    /// Takes `path` off `session`'s list (the path's own list is the
    /// caller's).
    fn otc_detach(&mut self, path: ConnRef, session: u32, now: Instant) {
        if let Some(s) = self.otc.sessions.get_mut(session) {
            s.paths.retain(|&p| p != path);
            if s.paths.is_empty() && s.detached_since.is_none() {
                s.detached_since = Some(now);
            }
        }
    }

    /// A data frame: from an attached path of the session's owner only;
    /// its acknowledgement lets frames go, and its packet goes to the game
    /// server in order, once.
    fn otc_data(
        &mut self,
        path: ConnRef,
        addr: SocketAddr,
        session: u32,
        (packet_id, ack): (u32, u32),
        packet: &[u8],
        now: Instant,
    ) -> Result<(), Refused> {
        let (window, held_max) = (
            self.otc.settings.reorder_window,
            self.otc.settings.reorder_bytes_max,
        );
        let Some(s) = self.otc.sessions.get_mut(session) else {
            // Ended (its end is on the way, or was lost with a path): told
            // again, as the backend it replaces does.
            self.otc_send_end(path, session);
            return Ok(());
        };
        if s.owner != addr.ip() {
            return Err(foreign(session, addr));
        }
        if !s.paths.contains(&path) {
            // The owner's path, not attached (or let go of for a newer one):
            // nothing of it is taken; its copies come on the attached ones.
            self.otc.stats.unattached_dropped += 1;
            return Ok(());
        }
        if s.unacked.ack(ack).is_err() {
            return Err(Refused::End("an acknowledgement of a packet never sent"));
        }
        if s.unacked.bytes() == 0 {
            s.unacked.shrink_idle(UNACKED_KEEP);
        }
        match s.inbound.arrive(packet_id, packet, window, held_max) {
            Arrival::Duplicate => {
                self.otc.stats.duplicates += 1;
                Ok(())
            }
            Arrival::Held => Ok(()),
            Arrival::TooFar => Err(Refused::End("a packet id past otc.reorder_window")),
            Arrival::TooManyBytes => Err(Refused::End("otc.reorder_bytes_max")),
            Arrival::Deliver => {
                self.otc_deliver(session, packet, now)?;
                while let Some(held) = self
                    .otc
                    .sessions
                    .get_mut(session)
                    .and_then(|s| s.inbound.take_ready())
                {
                    self.otc_deliver(session, &held, now)?;
                }
                Ok(())
            }
        }
    }

    /// One client packet, in order, to the session's game connection, paid
    /// for from the session's budgets.
    fn otc_deliver(&mut self, session: u32, packet: &[u8], now: Instant) -> Result<(), Refused> {
        let settings = &self.otc.settings;
        let Some(s) = self.otc.sessions.get_mut(session) else {
            return Ok(());
        };
        if !s.msgs.take(1, settings.session_msgs, now) {
            return Err(Refused::End("over otc.session_msgs_per_s"));
        }
        if !s
            .bytes
            .take(packet.len() as u64, settings.session_bytes, now)
        {
            return Err(Refused::End("over otc.session_bytes_per_s"));
        }
        let room = self.shards.out_room(s.game).unwrap_or(0);
        if room < packet.len() {
            return Err(Refused::End(
                "the game server does not read (otc.game_out_buf_size)",
            ));
        }
        self.shards.send(s.game, packet);
        self.otc.stats.packets_to_game += 1;
        Ok(())
    }

    /// Tells a path that a session is over (or was refused).
    fn otc_send_end(&mut self, path: ConnRef, session: u32) {
        let mut end = [0; otc::LEN_BYTES + otc::HEADER_BYTES];
        end[0] = otc::HEADER_BYTES as u8;
        end[2..6].copy_from_slice(&session.to_le_bytes());
        end[6..10].copy_from_slice(&otc::PACKET_ID_END.to_le_bytes());
        self.clients.send(path, &end);
    }

    /// Ends a session: every attached path is told, its game connection
    /// closed, its address's count given back. Once only: a session that
    /// is gone is not ended again.
    pub(super) fn otc_end_session(&mut self, session: u32, why: &str, _now: Instant) {
        let Some(s) = self.otc.sessions.remove(session) else {
            return;
        };
        if let Some(entry) = self.otc.per_addr.get_mut(&AddrKey::of(s.owner)) {
            entry.live = entry.live.saturating_sub(1); // pruned at the tick
        }
        self.otc.stats.sessions_ended += 1;
        debug!("otc session {session:#x} ({}): ended: {why}", s.owner);
        for &path in &s.paths {
            if let Some(slot) = self.clients.get_mut(path) {
                slot.session.otc.sessions.retain(|&id| id != session);
            }
            self.otc_send_end(path, session);
        }
        self.shards
            .disconnect(s.game, DisconnectReason::Closed("its OTC session ended"));
    }

    /// A session's game connection is open: what the client sent meanwhile
    /// is flushed with it.
    pub(super) fn otc_game_connected(&mut self, game: ConnRef, session: u32) {
        debug!("otc session {session:#x}: game connection {game} open");
    }

    /// Bytes from a game server: each whole Tibia packet becomes the
    /// session's next data frame, kept until acknowledged and sent to every
    /// attached path. A packet split across reads waits in `in_buf`.
    pub(super) fn otc_game_read(&mut self, game: ConnRef, session: u32, data: &[u8], now: Instant) {
        let Some(mut in_buf) = self.shards.begin_read(game, data.len(), now) else {
            return;
        };
        let result = self.otc_game_bytes(session, &mut in_buf, data);
        self.shards.end_read(game, in_buf);
        if let Err(why) = result {
            self.stats.refusals.count(Refusal::OtcSessionBound);
            self.otc_end_session(session, why, now);
        }
    }

    fn otc_game_bytes(
        &mut self,
        session: u32,
        in_buf: &mut Vec<u8>,
        mut data: &[u8],
    ) -> Result<(), &'static str> {
        if !in_buf.is_empty() {
            if !otc::gather(in_buf, &mut data) {
                return Ok(());
            }
            game_packet_len(in_buf)?;
            self.otc_to_clients(session, in_buf)?;
            in_buf.clear();
        }
        while !data.is_empty() {
            match game_packet_len(data)? {
                Some(n) if n <= data.len() => {
                    self.otc_to_clients(session, &data[..n])?;
                    data = &data[n..];
                }
                _ => {
                    in_buf.extend_from_slice(data);
                    break;
                }
            }
        }
        Ok(())
    }

    /// One game packet to the session's attached paths (kept until
    /// acknowledged, so a path attaching later gets it too).
    fn otc_to_clients(&mut self, session: u32, packet: &[u8]) -> Result<(), &'static str> {
        let max = self.otc.settings.unacked_bytes_max;
        let Some(s) = self.otc.sessions.get_mut(session) else {
            return Ok(());
        };
        if s.unacked.bytes() + packet.len() + session::DATA_FRAME_OVERHEAD > max {
            return Err("the client does not acknowledge (otc.unacked_bytes_max)");
        }
        let ack = s.inbound.last_in_order();
        let frame = s.unacked.push(session, ack, packet);
        for &path in &s.paths {
            // A path that cannot take it is cut (a slow reader); the others
            // carry it, and the client acknowledges through them.
            self.clients.send(path, frame);
        }
        self.otc.stats.packets_to_clients += 1;
        Ok(())
    }

    /// A game connection went (closed, refused, timed out, dropped): its
    /// session ends.
    pub(super) fn otc_game_gone(
        &mut self,
        game: ConnRef,
        session: u32,
        reason: &DisconnectReason,
        now: Instant,
    ) {
        let ours = self
            .otc
            .sessions
            .get(session)
            .is_some_and(|s| s.game == game);
        if ours {
            let why = format!("the game server connection ended ({reason})");
            self.otc_end_session(session, &why, now);
        }
    }

    /// A path went: it leaves every session it was attached to.
    pub(super) fn otc_path_gone(&mut self, path: ConnRef, state: OtcPath, now: Instant) {
        self.otc.n_paths -= 1;
        for session in state.sessions {
            self.otc_detach(path, session, now);
        }
    }

    /// Once a second: sessions detached for `otc.detached_timeout_ms` end.
    pub(super) fn otc_tick(&mut self, now: Instant) {
        let timeout = self.otc.settings.detached_timeout;
        let mut expired = std::mem::take(&mut self.otc.scratch);
        expired.extend(self.otc.sessions.iter().filter_map(|(id, s)| {
            s.detached_since
                .is_some_and(|since| now.duration_since(since) >= timeout)
                .then_some(id)
        }));
        for &session in &expired {
            self.otc_end_session(session, "no path attached (otc.detached_timeout_ms)", now);
        }
        expired.clear();
        self.otc.scratch = expired;
        let rate = self.otc.settings.new_sessions;
        self.otc
            .per_addr
            .retain(|_, entry| entry.live > 0 || !entry.opens.is_full(rate, now));
        // A flood of sessions grows the tables; once it is over they give
        // the room back (a map keeps its capacity otherwise).
        shrink_map(&mut self.otc.per_addr);
    }

    /// The statistics line of the OTC front end.
    pub(super) fn otc_log_stats(&self) {
        let s = self.otc.stats;
        info!(
            "otc stats: {} paths, {} sessions ({} bytes buffered); totals: {} opened, {} ended, \
             {} attaches, {} packets to game servers, {} to clients, {} duplicates dropped",
            self.otc.n_paths,
            self.otc.sessions.len(),
            self.otc.buffered_bytes(),
            s.sessions_opened,
            s.sessions_ended,
            s.attaches,
            s.packets_to_game,
            s.packets_to_clients,
            s.duplicates,
        );
    }
}

/// Shrinks a map holding under a quarter of its capacity to twice its
/// entries (at least 64): cheap once a second, and the capacity a burst
/// left does not stay.
fn shrink_map<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    let want = (2 * map.len()).max(64);
    if map.capacity() > 2 * want {
        map.shrink_to(want);
    }
}

/// The length of the Tibia packet at the front of `bytes` (its own u16
/// length included) once that length is there.
fn game_packet_len(bytes: &[u8]) -> Result<Option<usize>, &'static str> {
    if bytes.len() < 2 {
        return Ok(None);
    }
    let n = usize::from(u16::from_le_bytes([bytes[0], bytes[1]]));
    if n == 0 || 2 + n > GAME_PACKET_MAX {
        return Err("the game server sent a packet of length 0 or over what a frame carries");
    }
    Ok(Some(2 + n))
}

/// The session a frame names (0 for a ping).
fn frame_session(frame: &OtcFrame<'_>) -> u32 {
    match *frame {
        OtcFrame::Ping { .. } => otc::SESSION_CONTROL,
        OtcFrame::Open { session, .. }
        | OtcFrame::End { session }
        | OtcFrame::Data { session, .. } => session,
    }
}

fn foreign(session: u32, addr: SocketAddr) -> Refused {
    Refused::Path(
        Refusal::OtcForeignSession,
        format!(
            "session {session:#x} belongs to another address than {}",
            addr.ip()
        ),
    )
}

fn otc_refusal(e: ProtoError) -> ClError {
    ClError::Otc(Refusal::OtcProtocol, format!("bad OTC frame: {e}"))
}
