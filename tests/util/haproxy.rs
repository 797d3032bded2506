//! A real HAProxy (Debian's, which `make test` installs if missing) in TCP
//! mode in front of a proxy, as seed 002 deploys one: the forwarder players
//! connect to, which names each player's address to the proxy in a PROXY
//! protocol header (`send-proxy-v2` or `send-proxy`).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, loopback, wait_until};

/// A running `haproxy -db`, killed when dropped.
pub struct Haproxy {
    /// Where players connect.
    pub front: SocketAddr,
    child: Child,
    cfg_path: PathBuf,
}

/// The `haproxy` binary, or a panic that says how to get it.
fn haproxy_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
        .expect(
            "haproxy is not installed: `make test` installs Debian's package \
             (or: apt-get install haproxy)",
        )
}

impl Haproxy {
    /// Starts HAProxy forwarding a free loopback port to `backend`, with
    /// `send` (`send-proxy-v2` or `send-proxy`) on the server line.
    pub fn start(backend: SocketAddr, send: &str) -> Haproxy {
        Haproxy::start_at(loopback(free_port()), backend, send)
    }

    /// As [`Haproxy::start`], listening on `front` (a port picked before, for
    /// a configuration that must name it first).
    pub fn start_at(front: SocketAddr, backend: SocketAddr, send: &str) -> Haproxy {
        let cfg = format!(
            "global\n  maxconn 1000\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend players\n  bind {front}\n  default_backend proxy\n\
             backend proxy\n  server muta {backend} {send}\n"
        );
        let cfg_path = std::env::temp_dir().join(format!(
            "muta-test-haproxy-{}-{}.cfg",
            std::process::id(),
            front.port()
        ));
        std::fs::File::create(&cfg_path)
            .and_then(|mut f| f.write_all(cfg.as_bytes()))
            .unwrap();
        let child = Command::new(haproxy_bin())
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy starts");
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&front, Duration::from_millis(100)).is_ok()
        });
        assert!(up, "HAProxy did not listen on {front}");
        Haproxy {
            front,
            child,
            cfg_path,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.cfg_path);
    }
}
