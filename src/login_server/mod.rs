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
//! It is a [`Server`] on the same runtime as the proxy: a client thread and
//! pool for players (`players.rs`), and a shard thread and pool for its links
//! to the shards' login listeners (`links.rs`), kept up by the shard module
//! ([`ShardLinks`], a connect attempt every 2 s while a shard is down).
//! Accounts come from a file (`NAME ID HASH` per line) and, with
//! `--create-accounts`, are created on their first login (for load tests),
//! up to `--max-accounts` in memory.
//!
//! A limit of the reference program, not of the proxy: password hashes are
//! checked on the main thread, so one `crypto_pwhash` (tens of milliseconds
//! at the interactive cost) holds up every other player of this login server
//! meanwhile. A production login server would hash on a worker pool; the
//! thesis does not describe its own, and the proxy never hashes.

mod links;
mod players;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;
use mio::net::UnixStream;

use crate::com::{ConnRef, PoolId};
use crate::config::{Secret, ShardEntry};
use crate::conn::thread::IoCfg;
use crate::conn::{AnyPool, Disconnected, Pool, PoolCfg};
use crate::cryptchan::{self, KeyPair, PublicKey, PwhashCost, TOKEN_BYTES};
use crate::netpoll;
use crate::runtime::{Node, Runtime, RuntimeCfg, Server};
use crate::secpool::SecpoolConfig;
use crate::shard::{SLOTS_PER_LINK, ShardLinks};
pub use links::{ShardLink, ShardLinkState};
pub use players::{PlayerConn, PlayerState};

/// The most bytes of one player frame (a login or a shard choice).
const PLAYER_IN_BUF_SIZE: usize = 4096;
/// The most bytes of one shard frame, with its length.
const SHARD_IN_BUF_SIZE: usize = 70 * 1024;

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
        let at = |what: String| format!("{}:{}: {what}", path.display(), i + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        let [name, id, hash] = words[..] else {
            return Err(at("expected `NAME ID HASH`".to_string()));
        };
        let id = id
            .parse()
            .map_err(|_| at(format!("`{id}` is not an account id")))?;
        if name.len() > crate::proto::ACCOUNT_NAME_MAX {
            return Err(at("account name longer than 32 bytes".to_string()));
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

/// A player's request waiting for a shard's answer.
struct Pending {
    client: ConnRef,
    shard: ConnRef,
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
    clients: Pool<PlayerConn>,
    shards: Pool<ShardLink>,
    links: ShardLinks,
    keys: Arc<KeyPair>,
    cfg: LoginServerCfg,
    accounts: HashMap<String, Account>,
    next_account_id: u64,
    /// Requests waiting for their shard's answer, by request id.
    pending: HashMap<u32, Pending>,
    next_request_id: u32,
    next_session_id: u32,
    /// Reused by `settle`.
    gone_clients: Vec<Disconnected<PlayerConn>>,
    gone_shards: Vec<Disconnected<ShardLink>>,
}

impl std::fmt::Debug for LoginServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginServer")
            .field("players", &self.clients.in_use())
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// The runtime `muta-login` runs on: players on the client thread, shard
/// links on the shard thread.
fn runtime_cfg(cfg: &LoginServerCfg) -> RuntimeCfg {
    RuntimeCfg {
        secpool: SecpoolConfig {
            bytes_max: 64 << 20,
            block_size_max: 16 * 1024,
            free_blocks_max: 256,
        },
        event_buffer_capacity: 1024,
        event_wait_max: 256,
        client: IoCfg {
            pool: PoolId::Client,
            max_conns: cfg.max_clients,
            read_size: 4096,
            reads_per_wakeup: 4,
            accepts_per_wakeup: 64,
            netpoll_events_max: 256,
            io_batch_max: 64,
            // Players, who send two small messages each: a few reads in
            // flight per connection are plenty.
            read_ahead_max: 16 * 1024,
            send_buffer: 0,
            user_timeout_ms: 0,
        },
        shard: Some(IoCfg {
            pool: PoolId::Shard,
            max_conns: (cfg.shards.len() * SLOTS_PER_LINK) as u32,
            read_size: 16 * 1024,
            reads_per_wakeup: 16,
            accepts_per_wakeup: 0,
            netpoll_events_max: 64,
            io_batch_max: 64,
            // The shards' links: few, trusted, busy; not bounded.
            read_ahead_max: 0,
            send_buffer: 0,
            user_timeout_ms: 0,
        }),
    }
}

/// Loads the accounts, binds the listener and starts the login server on
/// its runtime.
pub fn start(
    cfg: LoginServerCfg,
    signals: Vec<(i32, UnixStream)>,
) -> io::Result<Node<LoginServer>> {
    cryptchan::init().map_err(|e| io::Error::other(e.to_string()))?;
    let accounts = read_accounts(&cfg)?;
    let listener = netpoll::listen(cfg.listen, 1024).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot listen on {}: {err}", cfg.listen),
        )
    })?;
    let runtime = Runtime::start(&runtime_cfg(&cfg), vec![listener], signals)?;
    let keys = Arc::new(match &cfg.key_seed {
        Some(seed) => KeyPair::from_seed(seed),
        None => KeyPair::generate(),
    });
    info!(
        "login server on {}, {} accounts, {} shard(s), key {}",
        runtime.local_addr(0),
        accounts.len(),
        cfg.shards.len(),
        keys.public()
    );
    let server = LoginServer::new(cfg, accounts, keys, Instant::now());
    Ok(Node { server, runtime })
}

/// The accounts of `--accounts`, within `--max-accounts`.
fn read_accounts(cfg: &LoginServerCfg) -> io::Result<HashMap<String, Account>> {
    let mut accounts = HashMap::new();
    let Some(path) = &cfg.accounts else {
        return Ok(accounts);
    };
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
    Ok(accounts)
}

impl LoginServer {
    fn new(
        cfg: LoginServerCfg,
        accounts: HashMap<String, Account>,
        keys: Arc<KeyPair>,
        now: Instant,
    ) -> LoginServer {
        let connect = Duration::from_secs(2);
        let clients = PoolCfg {
            max_conns: cfg.max_clients,
            out_buf_size: 16 * 1024,
            idle_timeout: Some(Duration::from_secs(30)),
            connect_timeout: connect,
        };
        let shards = PoolCfg {
            max_conns: (cfg.shards.len() * SLOTS_PER_LINK) as u32,
            out_buf_size: 4 << 20,
            idle_timeout: None,
            connect_timeout: connect,
        };
        LoginServer {
            clients: Pool::new(PoolId::Client, &clients, now),
            shards: Pool::new(PoolId::Shard, &shards, now),
            links: ShardLinks::new(&cfg.shards, connect, now),
            keys,
            next_account_id: accounts.values().map(|a| a.id).max().unwrap_or(0) + 1,
            accounts,
            cfg,
            pending: HashMap::new(),
            next_request_id: 1,
            next_session_id: 1,
            gone_clients: Vec::new(),
            gone_shards: Vec::new(),
        }
    }

    /// The login server's public key.
    pub fn public_key(&self) -> PublicKey {
        self.keys.public()
    }
}

impl Server for LoginServer {
    fn pools(&mut self) -> (&mut dyn AnyPool, Option<&mut dyn AnyPool>) {
        (&mut self.clients, Some(&mut self.shards))
    }

    fn on_accept(&mut self, listener: u32, peer: SocketAddr, now: Instant) -> Option<ConnRef> {
        self.player_accept(listener, peer, now)
    }

    fn on_connected(&mut self, conn: ConnRef, _now: Instant) {
        self.shard_connected(conn);
    }

    fn on_read(&mut self, conn: ConnRef, data: &mut [u8], now: Instant) {
        match conn.pool {
            PoolId::Client => self.player_read(conn, data, now),
            PoolId::Shard => self.shard_read(conn, data, now),
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.links.next_timer()
    }

    fn on_timers(&mut self, now: Instant) {
        self.links.connect_due(&mut self.shards, now);
    }

    /// Players who left while waiting make their shard forget them
    /// (`TSHARD_MSG_CANCEL`); a lost shard fails its waiting players.
    fn settle(&mut self, now: Instant) {
        // Two rounds at most: a lost shard's answers can drop players, whose
        // departure ends in the second.
        for _ in 0..2 {
            let mut shards = std::mem::take(&mut self.gone_shards);
            shards.extend(self.shards.take_disconnected());
            for gone in shards.drain(..) {
                self.shard_gone(gone, now);
            }
            self.gone_shards = shards;
            let mut clients = std::mem::take(&mut self.gone_clients);
            clients.extend(self.clients.take_disconnected());
            for gone in clients.drain(..) {
                self.player_gone(gone);
            }
            self.gone_clients = clients;
        }
    }
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
  -V, --version              print the version (and the git revision) and exit
";

/// What the command line asks for.
enum Command {
    Run(LoginServerCfg),
    MakeBots(u32, PwhashCost),
    Help,
}

/// Parses `muta-login`'s flags.
fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, String> {
    let mut cfg = LoginServerCfg::default();
    let mut make_bots: Option<u32> = None;
    let mut args = crate::cli::FlagArgs::new(args)?;
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--listen" => cfg.listen = args.parse(&flag)?,
            "--shard" => {
                let line = format!("shard = {}", args.value(&flag)?);
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
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(match make_bots {
        Some(n) => Command::MakeBots(n, cfg.pwhash_cost),
        None => Command::Run(cfg),
    })
}

/// `muta-login`'s `main`.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    match parse_args(args) {
        Ok(Command::Run(cfg)) => {
            crate::process::run_node("muta-login", log::LevelFilter::Info, move |signals| {
                start(cfg, signals)
            })
        }
        Ok(Command::MakeBots(n, cost)) => match make_bot_accounts(n, cost) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("muta-login: {e}");
                1
            }
        },
        Ok(Command::Help) => {
            print!("{USAGE}");
            0
        }
        Err(msg) => {
            eprintln!("muta-login: {msg}\n\n{USAGE}");
            2
        }
    }
}
