//! The `muta-proxy` daemon operated as operators do (issue "Run it as
//! operators do"): SIGHUP reloads both files under load, a live limit takes
//! effect, a restart-only key is kept and named, a removed shard's players
//! are disconnected while the others play on, an added shard is connected,
//! and a broken file keeps the running configuration; SIGTERM drains (no new
//! connection, the players closed after their output, exit 0) and a second
//! SIGTERM stops at once. Shards, the login server and the game-server
//! stand-in run in this process; the proxy and the bots are the real binaries.

mod util;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use util::daemon::{Daemon, manifest_dir, scratch_dir};
use util::otc::{RawPath, start_otserv};
use util::system::{start_login, start_shard};
use util::{free_port, loopback, wait_until};

const BOT: &str = env!("CARGO_BIN_EXE_muta-bot");

/// The shipped proxy.cfg with `edits` applied: each `(section, key, value)`
/// replaces that key's line in its section.
fn proxy_cfg(edits: &[(&str, &str, &str)]) -> String {
    let shipped = std::fs::read_to_string(manifest_dir().join("proxy.cfg")).unwrap();
    let mut lines: Vec<String> = shipped.lines().map(str::to_string).collect();
    for (section, key, value) in edits {
        let header = format!("[{section}]");
        let start = lines.iter().position(|l| *l == header).expect("a section");
        let at = lines[start..]
            .iter()
            .position(|l| l.starts_with(&format!("{key} = ")))
            .map(|i| start + i)
            .unwrap_or_else(|| panic!("no {section}.{key} in proxy.cfg"));
        lines[at] = format!("{key} = {value}");
    }
    lines.join("\n") + "\n"
}

/// A MUTA proxy's configuration for the in-process shards: its own port
/// as listener and public address, the tests' password, per-address limits
/// that let every bot share 127.0.0.1, and `more` edits.
fn muta_cfg(port: u16, more: &[(&str, &str, &str)]) -> String {
    let listen = format!("\"127.0.0.1:{port}\"");
    let mut edits = vec![
        ("proxy", "listen", listen.as_str()),
        ("proxy", "public_address", listen.as_str()),
        ("shard", "password", "\"test-password\""),
        ("client", "max_conns_per_addr", "100000"),
        ("client", "new_conns_per_addr_per_s", "100000"),
        ("client", "new_conns_per_addr_burst", "100000"),
    ];
    edits.extend_from_slice(more);
    proxy_cfg(&edits)
}

fn shards_cfg(shards: &[SocketAddr]) -> String {
    shards.iter().map(|a| format!("shard = {a}\n")).collect()
}

/// A `muta-bot` run, its stderr lines (progress) and stdout report kept.
struct Bots {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Bots {
    fn start(login: SocketAddr, shard: &str, clients: u32, first: u32, secs: u32) -> Bots {
        let (clients, first, secs) = (clients.to_string(), first.to_string(), secs.to_string());
        Bots::spawn(&[
            "--login",
            &login.to_string(),
            "--shard",
            shard,
            "--clients",
            &clients,
            "--first-account",
            &first,
            "--rate",
            "10",
            "--duration",
            &secs,
            "--ramp",
            "1",
            "--drain",
            "3",
        ])
    }

    /// `muta-bot` with `args`, `--json` and `--progress`.
    fn spawn(args: &[&str]) -> Bots {
        let mut child = Command::new(BOT)
            .args(args)
            .args(["--json", "--progress"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Bots { child, lines }
    }

    /// The last progress line's `authenticated`.
    fn authenticated(&self) -> u64 {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .rev()
            .find(|l| l.contains("\"progress\""))
            .and_then(|l| json_u64(l, "authenticated"))
            .unwrap_or(0)
    }

    /// Waits for the run to end; its report line and whether it exited 0.
    fn report(mut self, timeout: Duration) -> (String, bool) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "muta-bot did not finish");
            thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        (out.trim().to_string(), status.success())
    }
}

impl Drop for Bots {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `"key":N` in a JSON line.
fn json_u64(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(&format!("\"{key}\":"))? + key.len() + 3..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// How long the proxy takes to close a connection that sends nothing (the
/// handshake deadline, checked at the once-a-second tick).
fn silent_conn_closed_after(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 256];
    // The proxy's key comes first; then the end of the stream.
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    started.elapsed()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn sighup_under_load_changes_a_live_limit_drains_a_removed_shard_and_keeps_a_broken_file_out() {
    let shard1 = start_shard("shard-1", loopback(0), loopback(0));
    let shard2 = start_shard("shard-2", loopback(0), loopback(0));
    let login = start_login(&[shard1.login_addr, shard2.login_addr]);
    let dir = scratch_dir("ops-reload");
    let (config, shards) = (dir.join("proxy.cfg"), dir.join("shards.cfg"));
    let port = free_port();
    let addr = loopback(port);
    write(&config, &muta_cfg(port, &[]));
    write(
        &shards,
        &shards_cfg(&[shard1.proxy_addr, shard2.proxy_addr]),
    );
    let daemon = Daemon::start(&config, &shards);
    daemon.wait_for_line("logged in as \"shard-2\"", Duration::from_secs(10));
    daemon.wait_for_line("logged in as \"shard-1\"", Duration::from_secs(10));
    let players = Bots::start(login.addr, "shard-1", 100, 0, 14);
    let leaving = Bots::start(login.addr, "shard-2", 10, 1000, 14);
    assert!(
        wait_until(Duration::from_secs(20), || players.authenticated() == 100
            && leaving.authenticated() == 10),
        "the bots did not all log in; proxy log:\n{}",
        daemon.log()
    );

    // 1. A live limit changes; a restart-only key is kept and named.
    write(
        &config,
        &muta_cfg(
            port,
            &[
                ("client", "handshake_timeout_ms", "1000"),
                ("client", "max_clients", "2048"),
            ],
        ),
    );
    daemon.signal("HUP");
    daemon.wait_for_line("reload 1 applied", Duration::from_secs(5));
    assert!(
        daemon
            .log()
            .contains("client.max_clients changed, but it takes a restart"),
        "{}",
        daemon.log()
    );
    let closed = silent_conn_closed_after(addr);
    assert!(
        closed < Duration::from_millis(3000),
        "the 1 s handshake deadline did not apply: closed after {closed:?}"
    );

    // 2. shard-2 leaves shards.cfg: its players go, shard-1's play on.
    write(&shards, &shards_cfg(&[shard1.proxy_addr]));
    daemon.signal("HUP");
    daemon.wait_for_line("reload 2 applied", Duration::from_secs(5));
    daemon.wait_for_line("closing its 10 player(s)", Duration::from_secs(5));
    daemon.wait_for_line(
        "connection ended; removed from shards.cfg",
        Duration::from_secs(15),
    );

    // 3. A broken file: refused, with its line; the running one stays.
    let broken = muta_cfg(port, &[("client", "handshake_timeout_ms", "1000")])
        .replace("[client]\n", "[client]\nno_such_key = 1\n");
    write(&config, &broken);
    daemon.signal("HUP");
    let refused = daemon.wait_for_line("reload refused: ", Duration::from_secs(5));
    let path = config.display().to_string();
    assert!(
        refused.contains(&format!("{path}:")) && refused.contains("no_such_key"),
        "{refused}"
    );
    daemon.wait_for_line("the running configuration is kept", Duration::from_secs(5));
    let closed = silent_conn_closed_after(addr);
    assert!(
        closed < Duration::from_millis(3000),
        "closed after {closed:?}"
    );

    // 4. shard-2 comes back.
    write(
        &config,
        &muta_cfg(port, &[("client", "handshake_timeout_ms", "1000")]),
    );
    write(
        &shards,
        &shards_cfg(&[shard1.proxy_addr, shard2.proxy_addr]),
    );
    daemon.signal("HUP");
    daemon.wait_for_line("reload 3 applied", Duration::from_secs(5));
    daemon.wait_for_line("added to shards.cfg; connecting", Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(10), || daemon
            .lines_matching("logged in as \"shard-2\"")
            .len()
            == 2),
        "shard-2 was not connected again:\n{}",
        daemon.log()
    );

    let (report, ok) = players.report(Duration::from_secs(40));
    let (sent, received) = (json_u64(&report, "sent"), json_u64(&report, "received"));
    assert!(
        ok && json_u64(&report, "errors") == Some(0) && sent == received && sent > Some(0),
        "shard-1's players lost something across the reloads: {report}\n{}",
        daemon.log()
    );
    let (report, _) = leaving.report(Duration::from_secs(40));
    assert_eq!(
        json_u64(&report, "errors"),
        Some(10),
        "every player of the removed shard is disconnected: {report}"
    );
}

#[test]
fn sigterm_drains_the_players_and_exits_0() {
    let shard = start_shard("shard-1", loopback(0), loopback(0));
    let login = start_login(&[shard.login_addr]);
    let dir = scratch_dir("ops-drain");
    let (config, shards) = (dir.join("proxy.cfg"), dir.join("shards.cfg"));
    let port = free_port();
    write(&config, &muta_cfg(port, &[]));
    write(&shards, &shards_cfg(&[shard.proxy_addr]));
    let mut daemon = Daemon::start(&config, &shards);
    daemon.wait_for_line("logged in as \"shard-1\"", Duration::from_secs(10));
    let players = Bots::start(login.addr, "shard-1", 20, 0, 30);
    assert!(wait_until(Duration::from_secs(20), || players
        .authenticated()
        == 20));
    let started = Instant::now();
    daemon.signal("TERM");
    daemon.wait_for_line("draining", Duration::from_secs(5));
    daemon.wait_for_line("drain: 20 connection(s) closing", Duration::from_secs(5));
    let status = daemon.wait_exit(Duration::from_secs(8)).expect("exited");
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(
        daemon.log().contains("drained; shutting down"),
        "{}",
        daemon.log()
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    // The listener was closed first: nothing accepts on the port now.
    assert!(TcpStream::connect(loopback(port)).is_err());
}

#[test]
fn a_drain_waits_for_a_client_that_does_not_read_and_a_second_sigterm_stops_at_once() {
    let otserv = start_otserv();
    let dir = scratch_dir("ops-drain-stuck");
    let (config, shards) = (dir.join("proxy.cfg"), dir.join("shards.cfg"));
    let front = loopback(free_port());
    let game_port = otserv.addr.port().to_string();
    let listen = format!("\"{front}\"");
    let ports = format!("[{game_port}]");
    write(
        &config,
        &proxy_cfg(&[
            ("proxy", "drain_timeout_ms", "60000"),
            ("otc", "listen", &listen),
            ("otc", "allowed_ports", &ports),
        ]),
    );
    write(&shards, "");
    let mut daemon = Daemon::start(&config, &shards);
    daemon.wait_for_line("listening for OTC clients", Duration::from_secs(10));
    // A path that never reads, with a small receive buffer: what the game
    // server echoes piles up in the proxy's output for it. 200 KB: more than
    // the kernel's buffers between the two hold, within every [otc] budget
    // (so the session stays), and given 2 s to come back.
    let mut path = RawPath::connect("127.0.0.1".parse().unwrap(), front, Some(4096));
    assert!(path.open(0x77, otserv.addr.port()));
    let body = vec![7u8; 1000];
    for id in 1..=200 {
        assert!(path.data(0x77, id, 0, &body), "the proxy cut the path");
    }
    thread::sleep(Duration::from_secs(2));
    daemon.signal("TERM");
    daemon.wait_for_line("draining", Duration::from_secs(5));
    assert!(
        daemon.wait_exit(Duration::from_millis(1500)).is_none(),
        "the drain did not wait for the queued output:\n{}",
        daemon.log()
    );
    let second = Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(3)).expect("stopped");
    assert_eq!(status.code(), Some(0));
    assert!(second.elapsed() < Duration::from_secs(2));
    assert!(
        daemon.log().contains("received again: stopping now"),
        "{}",
        daemon.log()
    );
    drop(path);
}

#[test]
fn systemd_is_told_ready_reloading_and_stopping_over_notify_socket() {
    let shard = start_shard("shard-1", loopback(0), loopback(0));
    let dir = scratch_dir("ops-notify");
    let (config, shards) = (dir.join("proxy.cfg"), dir.join("shards.cfg"));
    let socket_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notify datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    write(&config, &muta_cfg(free_port(), &[]));
    write(&shards, &shards_cfg(&[shard.proxy_addr]));
    let socket = socket_path.to_str().unwrap();
    let mut daemon = Daemon::start_env(&config, &shards, &[("NOTIFY_SOCKET", socket)]);
    assert!(recv().starts_with("READY=1\n"), "{}", daemon.log());
    daemon.signal("HUP");
    let reloading = recv();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let usec: u64 = reloading.lines().nth(1).unwrap()["MONOTONIC_USEC=".len()..]
        .parse()
        .unwrap();
    assert!(usec > 0, "{reloading}");
    assert!(recv().starts_with("READY=1\nSTATUS=running; configuration 1"));
    daemon.signal("TERM");
    assert!(recv().starts_with("STOPPING=1\n"));
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(5)).unwrap().code(),
        Some(0)
    );
}

/// One HTTP GET to the admin endpoint: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    use std::io::Write as _;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: muta\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// A sample's value in Prometheus text: the line that starts with `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn the_metrics_answer_under_load_and_count_what_the_bots_count() {
    let shard = start_shard("shard-1", loopback(0), loopback(0));
    let login = start_login(&[shard.login_addr]);
    let dir = scratch_dir("ops-metrics");
    let (config, shards) = (dir.join("proxy.cfg"), dir.join("shards.cfg"));
    let admin = loopback(free_port());
    let admin_listen = format!("\"{admin}\"");
    write(
        &config,
        &muta_cfg(free_port(), &[("admin", "listen", &admin_listen)]),
    );
    write(&shards, &shards_cfg(&[shard.proxy_addr]));
    let daemon = Daemon::start(&config, &shards);
    daemon.wait_for_line("logged in as \"shard-1\"", Duration::from_secs(10));
    let players = Bots::start(login.addr, "shard-1", 100, 0, 6);
    assert!(wait_until(Duration::from_secs(20), || players
        .authenticated()
        == 100));
    // Under load: every scrape is answered, and sees the 100 players.
    let mut seen_players = Vec::new();
    for _ in 0..4 {
        let (code, text) = http_get(admin, "/metrics");
        assert_eq!(code, 200, "{text}");
        seen_players.push(metric(&text, "muta_proxy_players").unwrap());
        thread::sleep(Duration::from_millis(600));
    }
    assert!(seen_players.contains(&100.0), "{seen_players:?}");
    let (code, status) = http_get(admin, "/status");
    assert_eq!(code, 200);
    assert!(
        status.contains("\"addresses\":[{\"address\":\"127.0.0.1\",\"connections\":100}]"),
        "{status}"
    );
    assert_eq!(http_get(admin, "/healthz").0, 200);
    assert_eq!(http_get(admin, "/nope").0, 404);
    let (report, ok) = players.report(Duration::from_secs(30));
    assert!(ok, "{report}");
    // Once the snapshot after the run is out: the proxy's counts are the
    // bots' (each echo is one message to the shard and one back; each
    // player also got its welcome).
    let sent = json_u64(&report, "sent").unwrap() as f64;
    let received = json_u64(&report, "received").unwrap() as f64;
    thread::sleep(Duration::from_millis(2500));
    let (_, text) = http_get(admin, "/metrics");
    let to_shards = metric(&text, "muta_proxy_messages_total{direction=\"to_shards\"}").unwrap();
    let to_clients = metric(&text, "muta_proxy_messages_total{direction=\"to_clients\"}").unwrap();
    assert_eq!(metric(&text, "muta_proxy_authenticated_total"), Some(100.0));
    let series = format!(
        "muta_proxy_shard_link_rtt_seconds{{shard=\"{}\"}}",
        shard.proxy_addr
    );
    let rtt = metric(&text, &series).expect("a heartbeat round trip");
    assert!(rtt > 0.0 && rtt < 1.0, "{rtt}");
    assert!(
        to_shards == sent && to_clients == received + 100.0,
        "proxy: {to_shards} to shards, {to_clients} to clients; bots: {sent} sent, {received} received"
    );
}

#[test]
fn rejoining_bots_come_back_after_their_shard_restarts_and_lose_nothing() {
    // The shard on ports known in advance, so its restart binds them again.
    let (proxy_listen, login_listen) = (loopback(free_port()), loopback(free_port()));
    let shard = start_shard("shard-1", proxy_listen, login_listen);
    let login = start_login(&[shard.login_addr]);
    let _proxy = util::system::start_proxy(&[shard.proxy_addr], 0, |_| {});
    let login_addr = login.addr.to_string();
    let bots = Bots::spawn(&[
        "--login",
        &login_addr,
        "--clients",
        "20",
        "--rate",
        "10",
        "--duration",
        "9",
        "--ramp",
        "1",
        "--drain",
        "3",
        "--rejoin",
        "--churn",
        "0.1",
    ]);
    assert!(wait_until(Duration::from_secs(15), || bots.authenticated() == 20));
    thread::sleep(Duration::from_secs(1));
    // Every player is cut: the shard goes, and comes back a moment later.
    drop(shard);
    let _shard = start_shard("shard-1", proxy_listen, login_listen);
    let (report, ok) = bots.report(Duration::from_secs(40));
    let rejoin = &report[report.find("\"rejoin\"").expect("the rejoin counts")..];
    assert!(ok, "{report}");
    assert!(json_u64(rejoin, "cuts").unwrap() >= 15, "{report}");
    assert!(json_u64(rejoin, "rejoins").unwrap() >= 15, "{report}");
    assert!(json_u64(rejoin, "churns").unwrap() > 0, "{report}");
    for key in ["not_back", "duplicated", "reordered"] {
        assert_eq!(json_u64(rejoin, key), Some(0), "{key}: {report}");
    }
    assert_eq!(json_u64(&report, "lost"), Some(0), "{report}");
}
