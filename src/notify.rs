//! systemd's readiness protocol (`sd_notify`; no thesis section: a port
//! decision for running as a `Type=notify` service, `dist/*.service`): one
//! datagram per state change to the socket systemd names in
//! `NOTIFY_SOCKET`. Without that variable (not started by systemd) every
//! call does nothing.
//!
//! The messages used: `READY=1` once the listeners are bound and the threads
//! run, `RELOADING=1` (with `MONOTONIC_USEC`, as systemd asks) when a SIGHUP
//! reload begins and `READY=1` again when it is done, `STOPPING=1` when the
//! drain begins, and `STATUS=` lines systemctl shows. std's Unix datagram
//! socket is enough: no crate, no `unsafe`.

use std::os::unix::net::UnixDatagram;
use std::time::Instant;

use log::debug;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd, if the
/// process was started with `NOTIFY_SOCKET`. Errors are logged at `debug`
/// and otherwise ignored: the service manager's absence is not ours to fix.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        // The main thread sends these: never wait on systemd.
        socket.set_nonblocking(true)?;
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket: `@name` stands for a leading NUL.
            Some(name) => send_abstract(&socket, name, state),
            None => socket.send_to(state.as_bytes(), &path).map(|_| ()),
        }
    });
    if let Err(err) = result {
        debug!("sd_notify {state:?}: {err}");
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &[u8], state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &str) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// `RELOADING=1` with the `CLOCK_MONOTONIC` time systemd asks of
/// `Type=notify-reload` services (harmless for `Type=notify`).
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
        monotonic_usec()
    ));
}

/// `STOPPING=1` with a status line.
pub fn stopping(status: &str) {
    notify(&format!("STOPPING=1\nSTATUS={status}"));
}

/// Microseconds of `CLOCK_MONOTONIC`, without `unsafe`: std's `Instant` is
/// that clock on Linux, and its `Debug` form shows the `timespec`
/// (`Instant { tv_sec: .., tv_nsec: .. }`). Should that form change, 0 is
/// sent, which systemd takes as "now" for a `Type=notify` service.
fn monotonic_usec() -> u64 {
    let text = format!("{:?}", Instant::now());
    let field = |name: &str| -> Option<u64> {
        let rest = &text[text.find(name)? + name.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (field("tv_sec: "), field("tv_nsec: ")) {
        (Some(secs), Some(nanos)) => secs * 1_000_000 + nanos / 1_000,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_the_socket_systemd_names() {
        let dir = std::env::temp_dir().join(format!("muta-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let socket = UnixDatagram::unbound().unwrap();
        // `notify` reads the environment, which tests share: send the way it
        // does, to the path, and check the bytes.
        socket.send_to(b"READY=1\nSTATUS=x", &path).unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");
        assert!(monotonic_usec() > 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
