//! The `muta-proxy` binary as an operator runs it: `--check-config` on the
//! shipped and on broken files, the command line, running with no shard
//! listening (a connect attempt about every 2 s), SIGTERM and SIGINT ending it
//! with exit code 0 within a second, its threads' names and where they sleep
//! when idle, and a panicking thread aborting the process.

mod util;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::daemon::{Daemon, check_config, manifest_dir, run, scratch_dir, write_configs};
use util::{free_port, wait_until};

#[test]
fn check_config_accepts_the_shipped_files() {
    let dir = manifest_dir();
    let (status, stdout, stderr) = run(&[
        "--check-config",
        "--config",
        dir.join("proxy.cfg").to_str().unwrap(),
        "--shards",
        dir.join("shards.cfg").to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(stdout.contains("are valid"), "{stdout}");
    // The shipped files are for a demo on one host: both warnings apply.
    assert!(stderr.contains("warning: proxy.public_address = \"127.0.0.1:7702\" is a loopback"));
    assert!(stderr.contains("warning: shard.password is the shipped \"change-me\""));
}

#[test]
fn check_config_is_quiet_for_a_public_address_and_a_password_of_ones_own() {
    let dir = scratch_dir("check_config_no_warnings");
    let (config, shards) = write_configs(&dir, 7701, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "public_address = \"127.0.0.1:7702\"",
            "public_address = \"play.example.org:7702\"",
        )
        .replace("password = \"change-me\"", "password = \"s3cret-of-ours\"")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:7702\"");
    std::fs::write(&config, text).unwrap();
    let (status, _, stderr) = check_config(&config, &shards);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn check_config_accepts_an_otc_only_proxy_with_an_empty_shards_file() {
    let dir = scratch_dir("check_config_otc_only");
    let (config, shards) = (dir.join("proxy.cfg"), dir.join("shards.cfg"));
    std::fs::write(&config, "[otc]\nlisten = \"127.0.0.1:7162\"\n").unwrap();
    std::fs::write(&shards, "# an OTC-only proxy: no shard\n").unwrap();
    let args = |c: &std::path::Path| {
        [
            "--check-config".to_string(),
            "--config".to_string(),
            c.to_str().unwrap().to_string(),
            "--shards".to_string(),
            shards.to_str().unwrap().to_string(),
        ]
    };
    let a = args(&config);
    let (status, stdout, stderr) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stdout.contains("0 shard(s), the MUTA listener is not opened; OTC on 127.0.0.1:7162"),
        "{stdout}"
    );
    // Without [otc], the same empty shards file is refused.
    std::fs::write(&config, "[shard]\npassword = \"pw\"\n").unwrap();
    let (status, _, stderr) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("no shards"), "{stderr}");
}

#[test]
fn check_config_names_line_2_of_a_broken_shards_file() {
    let dir = scratch_dir("check_config_line_2");
    let (config, shards) = write_configs(&dir, 7701, "");
    std::fs::write(
        &shards,
        "shard = 127.0.0.1\nshard = 127.0.0.1:notaport\nshard = 10.0.0.1\n",
    )
    .unwrap();
    let (status, _, stderr) = check_config(&config, &shards);
    assert_eq!(status.code(), Some(1));
    let expected = format!("{}:2: ", shards.display());
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in: {stderr}"
    );
    assert!(stderr.contains("`notaport` is not a port"), "{stderr}");
}

#[test]
fn check_config_names_the_line_of_a_bad_proxy_cfg_key() {
    let dir = scratch_dir("check_config_bad_key");
    let (config, shards) = write_configs(&dir, 7701, "");
    let text = std::fs::read_to_string(&config).unwrap();
    let broken = text.replace("max_clients = 1024", "max_clients = 1024\nmax_client = 5");
    std::fs::write(&config, &broken).unwrap();
    let line = broken.lines().position(|l| l == "max_client = 5").unwrap() + 1;
    let (status, _, stderr) = check_config(&config, &shards);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains(&format!(
            "proxy.cfg:{line}: unknown key `max_client` in [client]"
        )),
        "{stderr}"
    );
    // A missing file is reported the same way.
    let (status, _, stderr) = run(&["--check-config", "--config", "/nonexistent/proxy.cfg"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("/nonexistent/proxy.cfg: cannot read"),
        "{stderr}"
    );
}

#[test]
fn check_config_reports_every_problem_one_line_each() {
    let dir = scratch_dir("check_config_two_problems");
    let (config, shards) = write_configs(&dir, 7701, "");
    let text = std::fs::read_to_string(&config).unwrap();
    let broken = text
        .replace("max_clients = 1024", "max_clients = 0")
        .replace("connect_retry_ms = 2000", "connect_retry_ms = \"often\"");
    std::fs::write(&config, &broken).unwrap();
    let line_of = |needle: &str| broken.lines().position(|l| l == needle).unwrap() + 1;
    let expected = [
        format!(
            "muta-proxy: {}:{}: client.max_clients: expected an integer from 1 to 1000000, found 0",
            config.display(),
            line_of("max_clients = 0")
        ),
        format!(
            "muta-proxy: {}:{}: shard.connect_retry_ms: expected an integer from 100 to 3600000, \
             found a string",
            config.display(),
            line_of("connect_retry_ms = \"often\"")
        ),
    ];
    let check = |shards: &Path| check_config(&config, shards);
    let (status, stdout, stderr) = check(&shards);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().collect::<Vec<_>>(), expected, "{stderr}");

    // A broken shards.cfg as well: its problems follow proxy.cfg's.
    std::fs::write(&shards, "shard = 127.0.0.1:0\nshard = 10.0.0.1\nshard =\n").unwrap();
    let (status, _, stderr) = check(&shards);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert_eq!(lines[..2], expected, "{stderr}");
    assert!(
        lines[2].starts_with(&format!("muta-proxy: {}:1: ", shards.display())),
        "{stderr}"
    );
    assert!(
        lines[3].starts_with(&format!("muta-proxy: {}:3: ", shards.display())),
        "{stderr}"
    );
}

#[test]
fn help_version_and_bad_usage() {
    let (status, stdout, _) = run(&["--help"]);
    assert_eq!(status.code(), Some(0));
    for flag in ["--config FILE", "--shards FILE", "--check-config", "--help"] {
        assert!(stdout.contains(flag), "--help does not mention {flag}");
    }
    let (status, stdout, _) = run(&["--version"]);
    assert_eq!(status.code(), Some(0));
    assert!(stdout.starts_with("muta-proxy "));
    let (status, _, stderr) = run(&["--frobnicate"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("unknown argument `--frobnicate`"));
}

#[test]
fn every_binary_prints_its_version_with_dash_v_and_dash_dash_version() {
    let bins = [
        ("muta-proxy", env!("CARGO_BIN_EXE_muta-proxy")),
        ("muta-shard", env!("CARGO_BIN_EXE_muta-shard")),
        ("muta-login", env!("CARGO_BIN_EXE_muta-login")),
        ("muta-bot", env!("CARGO_BIN_EXE_muta-bot")),
        ("muta-otserv", env!("CARGO_BIN_EXE_muta-otserv")),
        ("muta-attack", env!("CARGO_BIN_EXE_muta-attack")),
    ];
    // Built from a git checkout (as here and in CI): the revision is shown.
    let in_git = manifest_dir().join(".git").exists();
    for (name, bin) in bins {
        for flag in ["-V", "--version"] {
            let out = Command::new(bin).arg(flag).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{name} {flag}");
            let want = format!("{name} {}", env!("CARGO_PKG_VERSION"));
            assert!(text.starts_with(&want), "{name} {flag}: {text}");
            assert_eq!(text.contains(" (git "), in_git, "{name} {flag}: {text}");
        }
        let help = Command::new(bin).arg("--help").output().unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("-V, --version"),
            "{name}"
        );
    }
}

#[test]
fn under_journald_lines_carry_a_priority_and_no_timestamp_of_their_own() {
    let dir = scratch_dir("journal_stream");
    // No shard listens: the first failed attempt is a warning.
    let (config, shards) = write_configs(&dir, free_port(), "");
    let mut daemon = Daemon::start_env(&config, &shards, &[("JOURNAL_STREAM", "8:12345")]);
    let info = daemon.wait_for_line("listening for clients on", Duration::from_secs(10));
    assert!(info.starts_with("<6>INFO  [main] "), "{info}");
    let warn = daemon.wait_for_line("cannot connect", Duration::from_secs(10));
    assert!(warn.starts_with("<4>WARN  [main] "), "{warn}");
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(5)).unwrap().code(),
        Some(0)
    );
}

#[test]
fn with_no_shard_listening_it_retries_every_two_seconds_and_exits_0_on_sigterm() {
    let dir = scratch_dir("no_shard_sigterm");
    let (config, shards) = write_configs(&dir, free_port(), "");
    // Each attempt is a debug line of the shard module's.
    let filter = "info,muta_proxy::shard=debug";
    let mut daemon = Daemon::start_logging(&config, &shards, filter);
    // A client connected when the signal comes sees a clean close.
    let client = TcpStream::connect(daemon.client_addr()).unwrap();
    assert!(
        wait_until(Duration::from_secs(8), || daemon
            .lines_matching("connecting (attempt")
            .len()
            >= 3),
        "fewer than 3 connect attempts in 8 s:\n{}",
        daemon.log()
    );
    // The first failure is a warning, the next ones are not.
    let warnings = daemon.lines_matching("cannot connect");
    assert_eq!(warnings.len(), 1, "{}", daemon.log());
    assert!(warnings[0].1.contains("WARN"), "{}", daemon.log());
    let attempts = daemon.lines_matching("connecting (attempt");
    for pair in attempts.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            (Duration::from_millis(1500)..=Duration::from_millis(3000)).contains(&gap),
            "attempts {gap:?} apart:\n{}",
            daemon.log()
        );
    }
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon exited on its own"
    );

    let sent = Instant::now();
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("no exit within 5 s of SIGTERM");
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    assert!(!daemon.lines_matching("SIGTERM received").is_empty());
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!((&client).read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let dir = scratch_dir("sigint");
    let (config, shards) = write_configs(&dir, free_port(), "");
    let mut daemon = Daemon::start(&config, &shards);
    daemon.client_addr();
    daemon.signal("INT");
    let status = daemon
        .wait_exit(Duration::from_secs(5))
        .expect("no exit after SIGINT");
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log());
    assert!(!daemon.lines_matching("SIGINT received").is_empty());
}

/// System calls an idle thread may sleep in, by architecture.
#[cfg(target_arch = "x86_64")]
const EPOLL_WAIT: &[&str] = &["232", "281", "441"]; // epoll_wait, epoll_pwait, epoll_pwait2
#[cfg(target_arch = "x86_64")]
const FUTEX: &[&str] = &["202"];
#[cfg(target_arch = "aarch64")]
const EPOLL_WAIT: &[&str] = &["22", "441"];
#[cfg(target_arch = "aarch64")]
const FUTEX: &[&str] = &["98"];

#[test]
fn threads_are_named_and_idle_ones_sleep_where_they_should() {
    let dir = scratch_dir("thread_names");
    let (config, shards) = write_configs(&dir, free_port(), "");
    let mut daemon = Daemon::start(&config, &shards);
    daemon.client_addr();
    thread::sleep(Duration::from_millis(300));
    let names: Vec<String> = daemon.threads().into_iter().map(|(n, _)| n).collect();
    for role in ["main", "client", "shard"] {
        assert!(
            names.iter().any(|n| n == role),
            "no thread named {role}: {names:?}"
        );
    }
    // Idle (no clients, the shard down), the I/O threads wait in netpoll and
    // the main thread in event_wait. Sampled repeatedly: a thread that spins
    // shows "running" instead of a system call.
    for _ in 0..20 {
        for (name, syscall) in daemon.threads() {
            match name.as_str() {
                "client" | "shard" => assert!(
                    EPOLL_WAIT.contains(&syscall.as_str()),
                    "{name} is in syscall {syscall}, not netpoll_wait"
                ),
                "main" => assert!(
                    FUTEX.contains(&syscall.as_str()),
                    "main is in syscall {syscall}, not event_wait"
                ),
                _ => {}
            }
        }
        thread::sleep(Duration::from_millis(25));
    }
    daemon.signal("TERM");
    assert_eq!(
        daemon
            .wait_exit(Duration::from_secs(5))
            .and_then(|s| s.code()),
        Some(0)
    );
}

/// Re-runs this test binary as a child that installs the daemon's panic hook
/// and panics on a thread named `client` while its main thread waits forever:
/// the process must abort instead of hanging.
#[test]
fn a_panicking_thread_aborts_the_process() {
    if std::env::var_os("MUTA_PANIC_CHILD").is_some() {
        muta_proxy::process::install_panic_abort_hook();
        thread::Builder::new()
            .name("client".to_string())
            .spawn(|| panic!("deliberate panic on the client thread"))
            .unwrap();
        loop {
            thread::sleep(Duration::from_secs(1));
        }
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_panicking_thread_aborts_the_process",
            "--nocapture",
        ])
        .env("MUTA_PANIC_CHILD", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the process hung after a thread panicked");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(6),
        "not SIGABRT: {status:?}\n{stderr}"
    );
    assert!(stderr.contains("deliberate panic"), "{stderr}");
}
