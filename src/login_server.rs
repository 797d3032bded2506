//! The reference login server, `muta-login` (thesis §2.3 "The New Server
//! Architecture", §3.8.3 "Forming connections with player clients"; the
//! thesis does not describe its own login server, so its protocol is a port
//! decision, `docs/protocol.md`).
//!
//! Players connect here first, over the same encrypted channel as
//! everywhere (`cryptchan`), log in with an account name and password
//! (checked against Argon2id hashes, `crypto_pwhash_str_verify`), and choose
//! a shard. The login server makes a 64-byte random token, tells the shard
//! (`TSHARD_MSG_PLAYER`: account, session, the player's IP, the token), and
//! waits for the shard to answer with the proxy it picked. The player then
//! gets the proxy's public address, its public key and the token
//! (`FLOGIN_MSG_SHARD_RESULT`), disconnects, and connects to the proxy.
//!
//! It runs the thesis runtime twice over: a client thread and pool for
//! players, and the shard module (a connection per shard, reconnected every
//! 2 s) for its links to the shards' login listeners. Accounts come from a
//! file (`NAME ID HASH` per line) and, with `--create-accounts`, are created
//! on their first login (for load tests), up to `--max-accounts` in memory.
//!
//! A limit of the reference program, not of the proxy: password hashes are
//! checked on the main thread, so one `crypto_pwhash` (tens of milliseconds
//! at the interactive cost) holds up every other player of this login server
//! meanwhile. A production login server would hash on a worker pool; the
//! thesis does not describe its own, and the proxy never hashes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::UnixStream;

use crate::client::{Clients, ClientsCfg, DisconnectReason, Disconnected, Session, cl_start};
use crate::com::{ClientRef, ComEventBuf, Event, ShardRef};
use crate::config::{Secret, ShardEntry};
use crate::cryptchan::{self, KeyPair, PublicKey, PwhashCost, TOKEN_BYTES};
use crate::event_buf::EventBuf;
use crate::netpoll;
use crate::proto::ProtoError;
use crate::proto::frame::{Channel, ChannelError, FeedError, PeerError, Step, feed};
use crate::proto::login::{
    FromLogin, FromShard, ProxyTicket, RESULT_BAD_CREDENTIALS, RESULT_NO_SHARD, RESULT_OK,
    RESULT_REFUSED, ToLogin, ToShard,
};
use crate::secpool::{PoolBuf, Secpool, SecpoolConfig};
use crate::shard::{ShardDisconnected, Shards, ShardsCfg, shard_start};

/// `muta-login`'s settings (flags).
#[derive(Clone, Debug)]
pub struct LoginServerCfg {
    /// Where players connect.
    pub listen: SocketAddr,
    /// The shards' login listeners.
    pub shards: Vec<ShardEntry>,
    /// The shards' login password.
    pub shard_password: Secret,
    /// The accounts file, if any.
    pub accounts: Option<PathBuf>,
    /// Create an unknown account on its first login, with that password.
    pub create_accounts: bool,
    /// Cost of hashes made for created accounts.
    pub pwhash_cost: PwhashCost,
    /// Most accounts held in memory (loaded and created); a login that would
    /// create one more is refused.
    pub max_accounts: usize,
    /// Seed of the login server's key pair, so players can pin it.
    pub key_seed: Option<[u8; 32]>,
    /// Most players connected at once.
    pub max_clients: u32,
}

impl Default for LoginServerCfg {
    fn default() -> LoginServerCfg {
        LoginServerCfg {
            listen: "127.0.0.1:7700".parse().expect("literal"),
            shards: Vec::new(),
            shard_password: Secret::new("change-me-too"),
            accounts: None,
            create_accounts: false,
            pwhash_cost: PwhashCost::Interactive,
            max_accounts: 100_000,
            key_seed: None,
            max_clients: 16_384,
        }
    }
}

/// One account.
#[derive(Debug)]
struct Account {
    id: u64,
    hash: String,
}

/// Reads an accounts file: `NAME ID HASH` per line, `#` comments.
pub fn load_accounts(path: &Path) -> Result<HashMap<String, (u64, String)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut accounts = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let [name, id, hash] = words[..] else {
            return Err(format!(
                "{}:{}: expected `NAME ID HASH`",
                path.display(),
                i + 1
            ));
        };
        let id = id
            .parse()
            .map_err(|_| format!("{}:{}: `{id}` is not an account id", path.display(), i + 1))?;
        if name.len() > crate::proto::ACCOUNT_NAME_MAX {
            return Err(format!(
                "{}:{}: account name longer than 32 bytes",
                path.display(),
                i + 1
            ));
        }
        accounts.insert(name.to_string(), (id, hash.to_string()));
    }
    Ok(accounts)
}

/// Lines of an accounts file for `bot0`..`bot{n-1}`, each with its own name
/// as password (what `muta-bot` uses).
pub fn make_bot_accounts(n: u32, cost: PwhashCost) -> Result<String, String> {
    let mut out =
        String::from("# NAME ID HASH (Argon2id); made by `muta-login --make-bot-accounts`\n");
    for i in 0..n {
        let name = format!("bot{i}");
        let hash = cryptchan::pwhash_str(&name, cost).map_err(|e| e.to_string())?;
        out += &format!("{name} {} {hash}\n", i + 1);
    }
    Ok(out)
}

/// Where a player connection is.
#[derive(Debug, Default)]
pub enum PlayerState {
    /// Key exchange not finished (or a fresh slot).
    #[default]
    Handshake,
    /// Waiting for `TLOGIN_MSG_LOGIN`.
    AwaitLogin,
    /// Logged in; waiting for `TLOGIN_MSG_SELECT_SHARD`.
    LoggedIn {
        /// The account.
        account_id: u64,
        /// Its name.
        account_name: String,
    },
    /// Waiting for the shard's answer to request `request_id`.
    AwaitShard {
        /// The request.
        request_id: u32,
    },
    /// Answered; the player disconnects.
    Done,
}

/// A player's connection.
#[derive(Debug, Default)]
pub struct PlayerConn {
    chan: Option<Channel>,
    state: PlayerState,
}

impl Session for PlayerConn {
    fn before_flush(&mut self, out: &mut Vec<u8>) {
        if let Some(chan) = &mut self.chan {
            chan.seal(out).ok();
        }
    }
}

/// Where a shard link is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShardLinkState {
    /// Key exchange not finished.
    #[default]
    Handshake,
    /// `TSHARD_MSG_LOGIN` sent.
    LoggingIn,
    /// Logged in.
    Ready,
}

/// A link to one shard.
#[derive(Debug, Default)]
pub struct ShardLink {
    chan: Option<Channel>,
    state: ShardLinkState,
    name: String,
}

impl Session for ShardLink {
    fn before_flush(&mut self, out: &mut Vec<u8>) {
        if let Some(chan) = &mut self.chan {
            chan.seal(out).ok();
        }
    }
}

/// A player's request waiting for a shard's answer.
struct Pending {
    client: ClientRef,
    shard: ShardRef,
    account_id: u64,
    login_session_id: u32,
    token: [u8; TOKEN_BYTES],
}

impl Drop for Pending {
    fn drop(&mut self) {
        cryptchan::memzero(&mut self.token);
    }
}

/// The login server's main-thread state.
pub struct LoginServer {
    clients: Clients<PlayerConn>,
    shards: Shards<ShardLink>,
    keys: Arc<KeyPair>,
    cfg: LoginServerCfg,
    accounts: HashMap<String, Account>,
    next_account_id: u64,
    pending: HashMap<u32, Pending>,
    next_request_id: u32,
    next_session_id: u32,
    evbuf: Arc<ComEventBuf>,
    running: bool,
    addr: SocketAddr,
}

impl std::fmt::Debug for LoginServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl LoginServer {
    /// Loads the accounts, binds the listener and starts both I/O threads.
    pub fn start(cfg: LoginServerCfg, signals: Vec<(i32, UnixStream)>) -> io::Result<LoginServer> {
        cryptchan::init().map_err(|e| io::Error::other(e.to_string()))?;
        let mut accounts = HashMap::new();
        if let Some(path) = &cfg.accounts {
            for (name, (id, hash)) in load_accounts(path).map_err(io::Error::other)? {
                accounts.insert(name, Account { id, hash });
            }
            if accounts.len() > cfg.max_accounts {
                return Err(io::Error::other(format!(
                    "{}: {} accounts, more than --max-accounts {}",
                    path.display(),
                    accounts.len(),
                    cfg.max_accounts
                )));
            }
        }
        let next_account_id = accounts.values().map(|a| a.id).max().unwrap_or(0) + 1;
        let keys = Arc::new(match &cfg.key_seed {
            Some(seed) => KeyPair::from_seed(seed),
            None => KeyPair::generate(),
        });
        let pool = Secpool::new(SecpoolConfig {
            bytes_max: 64 << 20,
            block_size_max: 16 * 1024,
            free_blocks_max: 256,
        })
        .leak();
        let evbuf: Arc<ComEventBuf> = Arc::new(EventBuf::new(1024));
        let clients_cfg = ClientsCfg {
            max_clients: cfg.max_clients,
            out_buf_size: 16 * 1024,
            read_size: 4096,
            reads_per_wakeup: 4,
            accepts_per_wakeup: 64,
            idle_timeout_ms: 30_000,
            netpoll_events_max: 256,
            io_batch_max: 64,
        };
        let listener = netpoll::listen(cfg.listen, 1024).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot listen on {}: {err}", cfg.listen),
            )
        })?;
        let client_io = cl_start(vec![listener], signals, &clients_cfg, evbuf.clone(), pool)?;
        let addr = client_io.local_addr(0);
        let shards_cfg = ShardsCfg {
            connect_retry_ms: 2000,
            connect_timeout_ms: 2000,
            in_buf_size: 70 * 1024,
            out_buf_size: 4 << 20,
            read_size: 16 * 1024,
            reads_per_wakeup: 16,
            netpoll_events_max: 64,
            io_batch_max: 64,
        };
        let shard_io = shard_start(&cfg.shards, &shards_cfg, evbuf.clone(), pool)?;
        info!(
            "login server on {addr}, {} accounts, {} shard(s), key {}",
            accounts.len(),
            cfg.shards.len(),
            keys.public()
        );
        Ok(LoginServer {
            clients: Clients::new(&clients_cfg, client_io),
            shards: Shards::new(&shards_cfg, &cfg.shards, shard_io),
            keys,
            cfg,
            accounts,
            next_account_id,
            pending: HashMap::new(),
            next_request_id: 1,
            next_session_id: 1,
            evbuf,
            running: true,
            addr,
        })
    }

    /// Where players connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The login server's public key.
    pub fn public_key(&self) -> PublicKey {
        self.keys.public()
    }

    /// The event buffer; pushing `Event::Signal` stops the loop.
    pub fn event_buf(&self) -> Arc<ComEventBuf> {
        self.evbuf.clone()
    }

    /// The main loop.
    pub fn main_loop(&mut self) {
        let mut list = Vec::with_capacity(256);
        let mut next_tick = Instant::now() + Duration::from_secs(1);
        while self.running {
            let timeout_ms = next_tick
                .saturating_duration_since(Instant::now())
                .as_millis() as i32;
            if self.evbuf.event_wait(&mut list, 256, timeout_ms).is_err() {
                break;
            }
            let now = Instant::now();
            for ev in list.drain(..) {
                self.handle_event(ev, now);
            }
            if now >= next_tick {
                self.clients.cl_tick(now);
                next_tick = now + Duration::from_secs(1);
            }
            self.settle();
            self.clients.cl_flush();
            self.shards.shard_flush();
            self.clients.io().wake_if_pending();
            self.shards.io().wake_if_pending();
        }
    }

    fn handle_event(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::AcceptClient {
                listener,
                stream,
                addr,
            } => {
                if let Some(client) = self.clients.cl_accept(listener, stream, addr, now) {
                    self.clients.get_mut(client).expect("accepted").session = PlayerConn {
                        chan: Some(Channel::acceptor(self.keys.clone())),
                        state: PlayerState::Handshake,
                    };
                }
            }
            Event::ReadClient { client, data } => self.player_read(client, data, now),
            Event::ClientWritable { client } => self.clients.cl_writable(client),
            Event::ClientHup { client, reason } => self.clients.cl_hup(client, reason),
            Event::ClientClosed { client } => self.clients.cl_closed(client),
            Event::ShardConnected { shard, stream } => {
                if let Some(s) = self.shards.shard_connected(shard, stream) {
                    let pinned = s.entry.key;
                    let (link, _, out) = s.parts();
                    link.chan = Some(Channel::initiator(self.keys.clone(), pinned, out));
                    self.shards.shard_wrote(shard.index);
                }
            }
            Event::ReadShard { shard, data } => self.shard_read(shard, data),
            Event::ShardWritable { shard } => self.shards.shard_writable(shard),
            Event::ShardHup { shard, reason } => {
                self.shards.shard_hup(shard, reason);
            }
            Event::Signal { signal } => {
                info!(
                    "{} received, shutting down",
                    crate::daemon::signal_name(signal)
                );
                self.running = false;
            }
        }
    }

    /// Handles a player's bytes: handshake, login, shard choice.
    fn player_read(&mut self, client: ClientRef, mut data: PoolBuf, now: Instant) {
        let LoginServer {
            clients,
            shards,
            accounts,
            cfg,
            next_account_id,
            pending,
            next_request_id,
            next_session_id,
            ..
        } = self;
        let Some(slot) = clients.cl_read(client, data.len(), now) else {
            return;
        };
        let ip = slot.addr.ip().to_canonical();
        let (session, in_buf, out) = slot.parts();
        let out_before = out.len();
        let PlayerConn { chan, state } = session;
        let Some(chan) = chan.as_mut() else {
            return;
        };
        let result = feed(in_buf, data.as_mut_slice(), 4096, chan, |chan, buf| {
            let mut pos = 0;
            loop {
                match chan.next(&mut buf[pos..], out)? {
                    Step::NeedMore => return Ok(pos),
                    Step::Handshake { consumed } => pos += consumed,
                    Step::Opened { consumed } => {
                        pos += consumed;
                        *state = PlayerState::AwaitLogin;
                    }
                    Step::Frame {
                        consumed,
                        plaintext,
                    } => {
                        pos += consumed;
                        let (msg, len) = ToLogin::decode(plaintext)
                            .map_err(PeerError::Proto)?
                            .ok_or(PeerError::Proto(ProtoError::Truncated("login message")))?;
                        if len != plaintext.len() {
                            return Err(PeerError::Proto(ProtoError::TrailingBytes));
                        }
                        match (msg, &*state) {
                            (
                                ToLogin::Login {
                                    account_name,
                                    password,
                                },
                                PlayerState::AwaitLogin,
                            ) => {
                                let password = std::str::from_utf8(password).unwrap_or("");
                                let account_id = match accounts.get(account_name) {
                                    Some(a) if cryptchan::pwhash_str_verify(&a.hash, password) => {
                                        Some(a.id)
                                    }
                                    Some(_) => None,
                                    None if cfg.create_accounts
                                        && !password.is_empty()
                                        && accounts.len() < cfg.max_accounts =>
                                    {
                                        let hash = cryptchan::pwhash_str(password, cfg.pwhash_cost)
                                            .map_err(|_| PeerError::Refused("cannot hash"))?;
                                        let id = *next_account_id;
                                        *next_account_id += 1;
                                        accounts
                                            .insert(account_name.to_string(), Account { id, hash });
                                        Some(id)
                                    }
                                    None => {
                                        if cfg.create_accounts && !password.is_empty() {
                                            warn!(
                                                "not creating account `{account_name}`: \
                                                 --max-accounts {} reached",
                                                cfg.max_accounts
                                            );
                                        }
                                        None
                                    }
                                };
                                chan.room(out, FromLogin::MAX)?;
                                match account_id {
                                    Some(account_id) => {
                                        FromLogin::LoginResult {
                                            result: RESULT_OK,
                                            account_id,
                                        }
                                        .encode(out);
                                        *state = PlayerState::LoggedIn {
                                            account_id,
                                            account_name: account_name.to_string(),
                                        };
                                    }
                                    None => {
                                        FromLogin::LoginResult {
                                            result: RESULT_BAD_CREDENTIALS,
                                            account_id: 0,
                                        }
                                        .encode(out);
                                        return Err(PeerError::Refused(
                                            "wrong account name or password",
                                        ));
                                    }
                                }
                            }
                            (
                                ToLogin::SelectShard { shard_name },
                                PlayerState::LoggedIn {
                                    account_id,
                                    account_name,
                                },
                            ) => {
                                let shard = (0..shards.all().len() as u32).find_map(|i| {
                                    let s = &shards.all()[i as usize];
                                    (s.session.state == ShardLinkState::Ready
                                        && s.session.name == shard_name)
                                        .then(|| shards.current(i))
                                        .flatten()
                                });
                                let Some(shard) = shard else {
                                    chan.room(out, FromLogin::MAX)?;
                                    FromLogin::ShardResult {
                                        result: RESULT_NO_SHARD,
                                        ticket: None,
                                    }
                                    .encode(out);
                                    *state = PlayerState::Done;
                                    continue;
                                };
                                let mut token = [0u8; TOKEN_BYTES];
                                cryptchan::random_bytes(&mut token);
                                let request_id = *next_request_id;
                                *next_request_id = next_request_id.wrapping_add(1);
                                let login_session_id = *next_session_id;
                                *next_session_id = next_session_id.wrapping_add(1);
                                let account_id = *account_id;
                                let sent = shards.shard_write(shard.index, |link, out| {
                                    let chan = link.chan.as_mut().ok_or(ChannelError::NotOpen)?;
                                    chan.room(out, ToShard::MAX)?;
                                    ToShard::Player {
                                        request_id,
                                        account_id,
                                        login_session_id,
                                        ip,
                                        account_name,
                                        token: &token,
                                    }
                                    .encode(out);
                                    Ok::<(), ChannelError>(())
                                });
                                if !matches!(sent, Some(Ok(()))) {
                                    return Err(PeerError::Refused("the shard link failed"));
                                }
                                pending.insert(
                                    request_id,
                                    Pending {
                                        client,
                                        shard,
                                        account_id,
                                        login_session_id,
                                        token,
                                    },
                                );
                                cryptchan::memzero(&mut token);
                                *state = PlayerState::AwaitShard { request_id };
                            }
                            _ => return Err(PeerError::Refused("message out of order")),
                        }
                    }
                }
            }
        });
        let wrote = out.len() != out_before;
        match result {
            Ok(()) => {
                if wrote {
                    clients.cl_wrote(client);
                }
            }
            Err(err) => {
                let why = match err {
                    FeedError::TooLarge => "frame too large".to_string(),
                    FeedError::Process(e) => e.to_string(),
                };
                clients.cl_disconnect(client, DisconnectReason::Protocol(why));
            }
        }
    }

    /// Handles a shard's bytes: handshake, login result, player results.
    fn shard_read(&mut self, shard: ShardRef, mut data: PoolBuf) {
        let LoginServer {
            clients,
            shards,
            cfg,
            pending,
            ..
        } = self;
        let Some(s) = shards.shard_read(shard) else {
            return;
        };
        let shard_addr = s.entry.addr();
        let (link, in_buf, out) = s.parts();
        let out_before = out.len();
        let ShardLink { chan, state, name } = link;
        let Some(chan) = chan.as_mut() else {
            return;
        };
        let result = feed(in_buf, data.as_mut_slice(), 70 * 1024, chan, |chan, buf| {
            let mut pos = 0;
            loop {
                match chan.next(&mut buf[pos..], out)? {
                    Step::NeedMore => return Ok(pos),
                    Step::Handshake { consumed } => pos += consumed,
                    Step::Opened { consumed } => {
                        pos += consumed;
                        chan.room(out, ToShard::MAX)?;
                        ToShard::Login {
                            password: cfg.shard_password.expose().as_bytes(),
                        }
                        .encode(out);
                        *state = ShardLinkState::LoggingIn;
                    }
                    Step::Frame {
                        consumed,
                        plaintext,
                    } => {
                        pos += consumed;
                        let mut at = 0;
                        while at < plaintext.len() {
                            let (msg, len) = FromShard::decode(&plaintext[at..])
                                .map_err(PeerError::Proto)?
                                .ok_or(PeerError::Proto(ProtoError::Truncated("shard message")))?;
                            at += len;
                            match (msg, *state) {
                                (
                                    FromShard::LoginResult { result, shard_name },
                                    ShardLinkState::LoggingIn,
                                ) => {
                                    if result != RESULT_OK {
                                        return Err(PeerError::Refused(
                                            "the shard refused the login password",
                                        ));
                                    }
                                    *name = shard_name.to_string();
                                    *state = ShardLinkState::Ready;
                                    info!("shard {shard_addr}: logged in as {shard_name:?}");
                                }
                                (
                                    FromShard::PlayerResult {
                                        request_id,
                                        result,
                                        ticket,
                                    },
                                    ShardLinkState::Ready,
                                ) => {
                                    let Some(p) = pending.remove(&request_id) else {
                                        continue; // the player left
                                    };
                                    answer_player(clients, &p, result, ticket.as_ref());
                                }
                                _ => return Err(PeerError::Refused("message out of order")),
                            }
                        }
                    }
                }
            }
        });
        let wrote = out.len() != out_before;
        match result {
            Ok(()) => {
                if wrote {
                    shards.shard_wrote(shard.index);
                }
            }
            Err(err) => {
                let why = match err {
                    FeedError::TooLarge => "frame too large".to_string(),
                    FeedError::Process(e) => e.to_string(),
                };
                warn!("shard {shard_addr}: {why}");
                shards.shard_disconnect(shard, &why);
            }
        }
    }

    /// Players who left while waiting make their shard forget them
    /// (`TSHARD_MSG_CANCEL`); a lost shard fails its waiting players.
    fn settle(&mut self) {
        let LoginServer {
            clients,
            shards,
            pending,
            ..
        } = self;
        for ShardDisconnected { shard, .. } in shards.take_disconnected() {
            let lost: Vec<u32> = pending
                .iter()
                .filter(|(_, p)| p.shard == shard)
                .map(|(&id, _)| id)
                .collect();
            for id in lost {
                if let Some(p) = pending.remove(&id) {
                    answer_player(clients, &p, RESULT_NO_SHARD, None);
                }
            }
        }
        for gone in clients.take_disconnected() {
            let Disconnected { session, .. } = gone;
            if let PlayerState::AwaitShard { request_id } = session.state
                && let Some(p) = pending.remove(&request_id)
            {
                debug!("player left before its shard answered; cancelling");
                shards.shard_write(p.shard.index, |link, out| {
                    if let Some(chan) = link.chan.as_mut()
                        && chan.room(out, ToShard::MAX).is_ok()
                    {
                        ToShard::Cancel {
                            account_id: p.account_id,
                            login_session_id: p.login_session_id,
                        }
                        .encode(out);
                    }
                });
            }
        }
    }

    /// Stops both I/O threads.
    pub fn shutdown(mut self) {
        self.clients.cl_disconnect_all(DisconnectReason::Shutdown);
        self.evbuf.close();
        self.clients.io().stop_and_join();
        self.shards.io().stop_and_join();
        info!("login server stopped");
    }
}

/// Sends a waiting player the shard's answer: where to connect, or why not.
fn answer_player(
    clients: &mut Clients<PlayerConn>,
    p: &Pending,
    result: u8,
    ticket: Option<&ProxyTicket<'_>>,
) {
    clients.cl_write(p.client, |session, out| {
        let Some(chan) = session.chan.as_mut() else {
            return;
        };
        if chan.room(out, FromLogin::MAX).is_err() {
            return;
        }
        let msg = match ticket {
            Some(ticket) if result == RESULT_OK => FromLogin::ShardResult {
                result: RESULT_OK,
                ticket: Some((ticket.clone(), &p.token)),
            },
            _ => FromLogin::ShardResult {
                result: if result == RESULT_OK {
                    RESULT_REFUSED
                } else {
                    result
                },
                ticket: None,
            },
        };
        msg.encode(out);
        session.state = PlayerState::Done;
    });
}

/// `muta-login`'s usage text.
pub const USAGE: &str = "\
muta-login: the reference MUTA login server

Usage: muta-login [OPTIONS]
       muta-login --make-bot-accounts N [--pwhash-cost min|interactive] > accounts.txt

Options:
  --listen ADDR              where players connect [default: 127.0.0.1:7700]
  --shard HOST:PORT          a shard's login listener (repeat for more shards)
  --shard-password PW        the shards' login password [default: change-me-too]
  --accounts FILE            accounts, `NAME ID HASH` per line
  --create-accounts          create an unknown account at its first login
  --max-accounts N           accounts held in memory, loaded or created [default: 100000]
  --pwhash-cost COST         min (load tests only) or interactive [default: interactive]
  --key-seed HEX             64 hex digits: a fixed key pair players can pin
  --max-clients N            players connected at once [default: 16384]
  --make-bot-accounts N      print an accounts file for bot0..bot{N-1} and exit
  -h, --help                 print this help
";

/// `muta-login`'s `main`.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    let mut cfg = LoginServerCfg::default();
    let mut make_bots: Option<u32> = None;
    let parsed = (|| -> Result<bool, String> {
        let mut args = crate::cli::FlagArgs::new(args)?;
        while let Some(flag) = args.next_flag()? {
            match flag.as_str() {
                "--listen" => cfg.listen = args.parse(&flag)?,
                "--shard" => {
                    let text = args.value(&flag)?;
                    let line = format!("shard = {text}");
                    let mut entries = crate::config::parse_shards_cfg(Path::new("--shard"), &line)
                        .map_err(|e| e.messages())?;
                    cfg.shards.append(&mut entries);
                }
                "--shard-password" => cfg.shard_password = Secret::new(args.value(&flag)?),
                "--accounts" => cfg.accounts = Some(args.value(&flag)?.into()),
                "--create-accounts" => cfg.create_accounts = true,
                "--max-accounts" => cfg.max_accounts = args.parse(&flag)?,
                "--pwhash-cost" => {
                    cfg.pwhash_cost = match args.value(&flag)?.as_str() {
                        "min" => PwhashCost::Min,
                        "interactive" => PwhashCost::Interactive,
                        other => {
                            return Err(format!(
                                "--pwhash-cost: `{other}` is not min or interactive"
                            ));
                        }
                    }
                }
                "--key-seed" => {
                    let key = PublicKey::from_hex(&args.value(&flag)?)
                        .ok_or("--key-seed needs 64 hex digits")?;
                    cfg.key_seed = Some(key.0);
                }
                "--max-clients" => cfg.max_clients = args.parse(&flag)?,
                "--make-bot-accounts" => make_bots = Some(args.parse(&flag)?),
                "-h" | "--help" => return Ok(false),
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        Ok(true)
    })();
    match parsed {
        Ok(true) => {}
        Ok(false) => {
            print!("{USAGE}");
            return 0;
        }
        Err(msg) => {
            eprintln!("muta-login: {msg}\n\n{USAGE}");
            return 2;
        }
    }
    if let Some(n) = make_bots {
        return match make_bot_accounts(n, cfg.pwhash_cost) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("muta-login: {e}");
                1
            }
        };
    }
    crate::daemon::init_logger(log::LevelFilter::Info);
    crate::daemon::install_panic_abort_hook();
    let signals = match crate::daemon::signal_pipes(&[
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("muta-login: cannot install signal handlers: {err}");
            return 1;
        }
    };
    let mut server = match LoginServer::start(cfg, signals) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("muta-login: {err}");
            return 1;
        }
    };
    server.main_loop();
    server.shutdown();
    0
}
