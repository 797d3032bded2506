//! The whole MUTA system in one test process: shards, login servers and
//! proxies, each on its own threads as in production, on 127.0.0.1 with
//! kernel-chosen ports (or a free port where an address must be known before
//! binding: a proxy's public address). Each node stops when dropped, through
//! its event buffer, as a signal would stop it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use muta_proxy::bot::client::{self, ClientError, Ticket};
use muta_proxy::com::{ComEventBuf, Event};
use muta_proxy::config::{Config, ShardEntry};
use muta_proxy::cryptchan::{PublicKey, PwhashCost};
use muta_proxy::login_server::LoginServerCfg;
use muta_proxy::proxy;
use muta_proxy::shard_server::{self, ShardServerCfg};

use super::{free_port, init_logger, loopback, test_config};

/// A node's main loop running on its own thread.
pub struct Running {
    evbuf: Arc<ComEventBuf>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    pub fn spawn(
        name: &str,
        evbuf: Arc<ComEventBuf>,
        body: impl FnOnce() + Send + 'static,
    ) -> Running {
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(body)
            .unwrap();
        Running {
            evbuf,
            thread: Some(thread),
        }
    }

    /// Stops the node as two SIGTERMs would (the first begins a proxy's
    /// drain, the second stops it at once), and waits for it.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let term = || Event::Signal { signal: 15 };
            let _ = self.evbuf.event_push([term(), term()]);
            thread.join().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `muta-shard`.
pub struct ShardNode {
    pub name: String,
    pub proxy_addr: SocketAddr,
    pub login_addr: SocketAddr,
    /// The direct-player listener, if the shard has one.
    pub direct_addr: Option<SocketAddr>,
    pub key: PublicKey,
    pub run: Running,
}

/// The shard's login password in every test.
pub const LOGIN_PASSWORD: &str = "test-login-password";

/// Starts a shard; ports 0 let the kernel choose.
pub fn start_shard(name: &str, proxy_listen: SocketAddr, login_listen: SocketAddr) -> ShardNode {
    start_shard_with(name, proxy_listen, login_listen, |_| {})
}

/// As [`start_shard`], with `tweak` adjusting the configuration.
pub fn start_shard_with(
    name: &str,
    proxy_listen: SocketAddr,
    login_listen: SocketAddr,
    tweak: impl FnOnce(&mut ShardServerCfg),
) -> ShardNode {
    init_logger();
    let mut cfg = ShardServerCfg {
        name: name.to_string(),
        proxy_listen,
        login_listen,
        password: test_config().shard.password,
        login_password: muta_proxy::config::Secret::new(LOGIN_PASSWORD),
        key_seed: None,
        ..ShardServerCfg::default()
    };
    tweak(&mut cfg);
    let node = shard_server::start(cfg, Vec::new()).unwrap();
    let server = &node.server;
    let (proxy_addr, login_addr, direct_addr, key) = (
        server.proxy_addr(),
        server.login_addr(),
        server.direct_addr(),
        server.public_key(),
    );
    let run = Running::spawn("main", node.event_buf(), move || {
        let mut node = node;
        node.main_loop();
        node.shutdown();
    });
    ShardNode {
        name: name.to_string(),
        proxy_addr,
        login_addr,
        direct_addr,
        key,
        run,
    }
}

/// A running proxy.
pub struct ProxyNode {
    pub addr: SocketAddr,
    pub key: PublicKey,
    pub run: Running,
}

/// Starts a proxy serving `shards`, listening on `port` (0: a free port),
/// which is also its public address; `tweak` adjusts the configuration.
pub fn start_proxy(shards: &[SocketAddr], port: u16, tweak: impl FnOnce(&mut Config)) -> ProxyNode {
    init_logger();
    let port = if port == 0 { free_port() } else { port };
    let mut cfg = test_config();
    cfg.proxy.listen = loopback(port);
    cfg.proxy.public_address = loopback(port).to_string();
    cfg.shard.connect_retry_ms = 500;
    tweak(&mut cfg);
    let entries: Vec<ShardEntry> = shards
        .iter()
        .enumerate()
        .map(|(i, addr)| ShardEntry {
            line: i + 1,
            host: addr.ip().to_string(),
            port: addr.port(),
            key: None,
        })
        .collect();
    let node = proxy::start(cfg, &entries, Vec::new()).unwrap();
    let (addr, key) = (node.local_addr(0), node.server.public_key());
    let run = Running::spawn("main", node.event_buf(), move || {
        let mut node = node;
        node.main_loop();
        node.shutdown();
    });
    ProxyNode { addr, key, run }
}

/// A running login server (accounts created at first login, cheap hashes).
pub struct LoginNode {
    pub addr: SocketAddr,
    pub run: Running,
}

/// Starts a login server for the shards' login listeners.
pub fn start_login(shards: &[SocketAddr]) -> LoginNode {
    start_login_with(shards, |_| {})
}

/// Starts a login server, with `tweak` applied to its settings.
pub fn start_login_with(
    shards: &[SocketAddr],
    tweak: impl FnOnce(&mut LoginServerCfg),
) -> LoginNode {
    init_logger();
    let mut cfg = LoginServerCfg {
        listen: loopback(0),
        shards: shards
            .iter()
            .enumerate()
            .map(|(i, addr)| ShardEntry {
                line: i + 1,
                host: addr.ip().to_string(),
                port: addr.port(),
                key: None,
            })
            .collect(),
        shard_password: muta_proxy::config::Secret::new(LOGIN_PASSWORD),
        create_accounts: true,
        pwhash_cost: PwhashCost::Min,
        ..LoginServerCfg::default()
    };
    tweak(&mut cfg);
    let node = muta_proxy::login_server::start(cfg, Vec::new()).unwrap();
    let addr = node.local_addr(0);
    let run = Running::spawn("main", node.event_buf(), move || {
        let mut node = node;
        node.main_loop();
        node.shutdown();
    });
    LoginNode { addr, run }
}

/// Logs in, retrying while the system is still coming up (no shard link or
/// no proxy logged in yet), for up to `timeout`.
pub fn login_until(
    login: SocketAddr,
    account: &str,
    shard: &str,
    timeout: Duration,
) -> Result<Ticket, ClientError> {
    login_until_from(None, login, account, shard, timeout)
}

/// As [`login_until`], from the local address `from` when given (the
/// address the login server announces to the shard).
pub fn login_until_from(
    from: Option<IpAddr>,
    login: SocketAddr,
    account: &str,
    shard: &str,
    timeout: Duration,
) -> Result<Ticket, ClientError> {
    let deadline = Instant::now() + timeout;
    let who = client::Account {
        name: account,
        password: account,
        shard,
    };
    loop {
        match client::login_from(from, &login.to_string(), None, &who, Duration::from_secs(5)) {
            Ok(ticket) => return Ok(ticket),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One shard, one login server, `n_proxies` proxies, all up and linked.
pub struct System {
    pub shard: ShardNode,
    pub login: LoginNode,
    pub proxies: Vec<ProxyNode>,
}

impl System {
    pub fn start(n_proxies: usize) -> System {
        let shard = start_shard("shard-1", loopback(0), loopback(0));
        let proxies = (0..n_proxies)
            .map(|_| start_proxy(&[shard.proxy_addr], 0, |_| {}))
            .collect();
        let login = start_login(&[shard.login_addr]);
        System {
            shard,
            login,
            proxies,
        }
    }

    /// A logged-in player's ticket (waits for the system to come up).
    pub fn ticket(&self, account: &str) -> Ticket {
        login_until(
            self.login.addr,
            account,
            &self.shard.name,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("login of {account}: {e}"))
    }
}
