//! The `shards.cfg` reader (thesis §3.8.1: `shard = 127.0.0.1`), and the
//! `HOST[:PORT]` parsing it shares with `proxy.public_address`.
//!
//! One `shard = HOST[:PORT] [key=HEX]` line per shard, `#` comments and blank
//! lines. HOST is an IPv4 address, a bracketed IPv6 address or a DNS name,
//! resolved at every connect attempt; PORT defaults to
//! [`DEFAULT_SHARD_PORT`]; `key=` pins the shard's public key. Every bad line
//! is reported, each with its line number.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::{ConfigError, ConfigErrors, DEFAULT_SHARD_PORT};

/// One `shard = ...` line of `shards.cfg`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardEntry {
    /// Line number in `shards.cfg` (1-based), for messages.
    pub line: usize,
    /// IP address or DNS name.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The shard's public key, if pinned (`key=HEX` on the line): the proxy
    /// refuses a shard that presents another (port decision).
    pub key: Option<crate::cryptchan::PublicKey>,
}

impl ShardEntry {
    /// `HOST:PORT` (IPv6 in brackets), also used as the shard's name in logs.
    pub fn addr(&self) -> String {
        format_host_port(&self.host, self.port)
    }

    /// The same shard for a reload: the same address and the same pinned
    /// key (a new key on the same address is a shard replaced).
    pub fn same_shard(&self, other: &ShardEntry) -> bool {
        self.same_address(other) && self.key == other.key
    }

    /// The same port and host, comparing addresses as addresses (`::1` is
    /// `0:0:0:0:0:0:0:1`) and names without regard to case.
    fn same_address(&self, other: &ShardEntry) -> bool {
        self.port == other.port
            && match (self.host.parse::<IpAddr>(), other.host.parse::<IpAddr>()) {
                (Ok(a), Ok(b)) => a == b,
                _ => self.host.eq_ignore_ascii_case(&other.host),
            }
    }
}

/// Parses the text of a `shards.cfg`; `file` is only used in error messages.
/// The error holds one problem per bad line, in order; a file without a
/// shard is one too (see [`parse_shard_lines`] for one that may be empty).
pub fn parse_shards_cfg(file: &Path, text: &str) -> Result<Vec<ShardEntry>, ConfigErrors> {
    let shards = parse_shard_lines(file, text)?;
    if shards.is_empty() {
        return Err(ConfigError::new(file, None, NO_SHARDS.to_string()).into());
    }
    Ok(shards)
}

/// The problem of a `shards.cfg` without a shard when one is needed.
pub const NO_SHARDS: &str = "no shards: add a line `shard = HOST[:PORT]`";

/// Parses the text of a `shards.cfg` that may list no shard (a proxy that
/// serves only the `[otc]` front end).
pub fn parse_shard_lines(file: &Path, text: &str) -> Result<Vec<ShardEntry>, ConfigErrors> {
    let mut shards: Vec<ShardEntry> = Vec::new();
    let mut errors = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        match parse_line(line, raw, &shards) {
            Ok(Some(entry)) => shards.push(entry),
            Ok(None) => {}
            Err(message) => errors.push(ConfigError::new(file, Some(line), message)),
        }
    }
    if errors.is_empty() {
        Ok(shards)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// One line: a shard, nothing (blank or comment), or the first problem on it.
fn parse_line(
    line: usize,
    raw: &str,
    earlier: &[ShardEntry],
) -> Result<Option<ShardEntry>, String> {
    let content = raw.split('#').next().unwrap_or("").trim();
    if content.is_empty() {
        return Ok(None);
    }
    let Some((key, value)) = content.split_once('=') else {
        return Err(format!("expected `shard = HOST[:PORT]`, found `{content}`"));
    };
    let key = key.trim();
    if key != "shard" {
        return Err(format!("unknown key `{key}`; the only key is `shard`"));
    }
    let mut words = value.split_whitespace();
    let Some(address) = words.next() else {
        return Err("`shard =` needs an address: `shard = HOST[:PORT]`".to_string());
    };
    let mut key = None;
    for word in words {
        match word.strip_prefix("key=") {
            Some(hex) if key.is_none() => {
                key = Some(
                    crate::cryptchan::PublicKey::from_hex(hex)
                        .ok_or_else(|| format!("`{hex}` is not a public key (64 hex digits)"))?,
                );
            }
            _ => return Err(format!("unexpected `{word}` after the address")),
        }
    }
    let (host, port) = parse_host_port(address, Some(DEFAULT_SHARD_PORT))?;
    let entry = ShardEntry {
        line,
        host,
        port,
        key,
    };
    if let Some(first) = earlier.iter().find(|s| s.same_address(&entry)) {
        return Err(format!(
            "shard {} is already listed on line {}",
            entry.addr(),
            first.line
        ));
    }
    Ok(Some(entry))
}

/// Splits `HOST[:PORT]`: an IPv4 address or DNS name with an optional port, a
/// bare IPv6 address, or `[IPv6]` with an optional port. `default_port: None`
/// makes the port mandatory.
pub(super) fn parse_host_port(s: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("`{s}`: missing `]` after the IPv6 address"));
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`{host}` is not an IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("`{s}`: expected `:PORT` after `]`")),
            },
        }
    } else if s.matches(':').count() > 1 {
        // `::1:7000` could be an address or an address and a port: brackets
        // say which.
        return Err(format!(
            "`{s}`: write an IPv6 address in brackets, `[ADDRESS]` or `[ADDRESS]:PORT`"
        ));
    } else {
        match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    check_host(host)?;
    let port = match (port, default_port) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(port) if port > 0 && p.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => return Err(format!("`{p}` is not a port (1 to 65535)")),
        },
        (None, Some(port)) => port,
        (None, None) => return Err(format!("`{s}` needs a port: HOST:PORT")),
    };
    Ok((host.to_string(), port))
}

/// An IP address, or a DNS name (labels of letters, digits and `-`) whose last
/// label is not all digits, so a mistyped IPv4 address is not taken for a name.
fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let labels: Vec<&str> = host.strip_suffix('.').unwrap_or(host).split('.').collect();
    let last_is_numeric = labels
        .last()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    if host.is_empty()
        || host.len() > 253
        || !labels.iter().all(|l| valid_label(l))
        || last_is_numeric
    {
        if host.parse::<Ipv4Addr>().is_err() && last_is_numeric {
            return Err(format!("`{host}` is not an IPv4 address"));
        }
        return Err(format!("`{host}` is not an IP address or host name"));
    }
    Ok(())
}

/// `HOST:PORT`, with an IPv6 address in brackets.
pub(super) fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(text: &str) -> Result<Vec<ShardEntry>, ConfigErrors> {
        parse_shards_cfg(Path::new("shards.cfg"), text)
    }

    /// The one problem a text has.
    fn only_error(text: &str) -> ConfigError {
        let errors = shards(text).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{text:?}: {errors}");
        errors.0[0].clone()
    }

    #[test]
    fn shards_cfg_thesis_format() {
        let list = shards(
            "# shards this proxy serves\n\nshard = 127.0.0.1\nshard=10.0.0.2:9000   # second\n\
             shard = [::1]:7000\nshard = [::1]\n  shard = shard-3.example.org \
             key=00000000000000000000000000000000000000000000000000000000000000ff\n",
        )
        .unwrap();
        let addrs: Vec<String> = list.iter().map(ShardEntry::addr).collect();
        assert_eq!(
            addrs,
            [
                "127.0.0.1:7701",
                "10.0.0.2:9000",
                "[::1]:7000",
                "[::1]:7701",
                "shard-3.example.org:7701"
            ]
        );
        assert_eq!(
            list.iter().map(|s| s.line).collect::<Vec<_>>(),
            [3, 4, 5, 6, 7]
        );
        assert_eq!(list[0].key, None);
        assert_eq!(list[4].key.unwrap().0[31], 0xff);
    }

    #[test]
    fn shards_cfg_errors_name_the_line() {
        let cases = [
            (
                "shard = 127.0.0.1\nshard 127.0.0.2\n",
                2,
                "expected `shard = HOST[:PORT]`",
            ),
            (
                "shard = 127.0.0.1\nshrad = 127.0.0.2\n",
                2,
                "unknown key `shrad`",
            ),
            ("\nshard =\n", 2, "needs an address"),
            ("shard = 127.0.0.1:0\n", 1, "is not a port"),
            ("shard = 127.0.0.1:70000\n", 1, "is not a port"),
            ("shard = 127.0.0.300\n", 1, "is not an IPv4 address"),
            (
                "shard = bad_host!\n",
                1,
                "is not an IP address or host name",
            ),
            ("shard = [::1\n", 1, "missing `]`"),
            (
                "shard = 127.0.0.1 key=abc\n",
                1,
                "`abc` is not a public key",
            ),
            ("shard = 127.0.0.1 port=7\n", 1, "unexpected `port=7`"),
            ("shard = ::1:7000\n", 1, "in brackets"),
            ("shard = 127.0.0.1:+80\n", 1, "is not a port"),
            (
                "shard = example.org..\n",
                1,
                "is not an IP address or host name",
            ),
            (
                "shard = [::1]\nshard = [0:0:0:0:0:0:0:1]\n",
                2,
                "already listed on line 1",
            ),
            (
                "shard = Game.example.org\nshard = game.EXAMPLE.org\n",
                2,
                "already listed on line 1",
            ),
            (
                "shard = 127.0.0.1\nshard = 127.0.0.1:7701\n",
                2,
                "already listed on line 1",
            ),
        ];
        for (text, line, needle) in cases {
            let err = only_error(text);
            assert_eq!(err.line, Some(line), "{text:?}: {err}");
            assert!(
                err.to_string().starts_with(&format!("shards.cfg:{line}: ")),
                "{err}"
            );
            assert!(err.message.contains(needle), "{text:?}: {err}");
        }
        assert_eq!(
            shards("\u{feff}shard = 127.0.0.1\n").unwrap().len(),
            1,
            "a BOM is skipped"
        );
        let err = only_error("# nothing\n\n");
        assert_eq!(err.line, None);
        assert!(err.message.contains("no shards"));
    }

    #[test]
    fn every_bad_line_is_reported_in_order() {
        let errors = shards(
            "shard = 127.0.0.1\nshard = 127.0.0.1:notaport\n# fine\nshard = 10.0.0.1\n\
             shard 10.0.0.2\nshard = 10.0.0.1\n",
        )
        .unwrap_err();
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "shards.cfg:2: `notaport` is not a port (1 to 65535)",
                "shards.cfg:5: expected `shard = HOST[:PORT]`, found `shard 10.0.0.2`",
                "shards.cfg:6: shard 10.0.0.1:7701 is already listed on line 4",
            ]
        );
        assert_eq!(errors.to_string(), lines.join("\n"));
        // Only bad lines: their problems, not also "no shards".
        let errors = shards("shard =\nshard = [::1\n").unwrap_err();
        assert_eq!(
            errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
    }

    #[test]
    fn host_port() {
        assert_eq!(
            parse_host_port("[::1]:80", None),
            Ok(("::1".to_string(), 80))
        );
        assert!(
            parse_host_port("host", None)
                .unwrap_err()
                .contains("needs a port")
        );
        assert_eq!(format_host_port("::1", 80), "[::1]:80");
        assert_eq!(format_host_port("a.b", 80), "a.b:80");
    }
}
