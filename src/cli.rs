//! Command-line flags shared by the programs (`muta-proxy`, `muta-shard`,
//! `muta-login`, `muta-bot`): `--flag VALUE` and `--flag=VALUE`, with errors
//! that name the flag. No dependency: the programs take few flags.

use std::ffi::OsString;
use std::fmt::Display;
use std::str::FromStr;

/// `PROGRAM VERSION (git REV)`: what `--version` and `-V` print, the
/// revision when built from a git checkout (`build.rs`).
pub fn version_line(program: &str) -> String {
    let rev = env!("MUTA_GIT_REV");
    let version = env!("CARGO_PKG_VERSION");
    if rev.is_empty() {
        format!("{program} {version}")
    } else {
        format!("{program} {version} (git {rev})")
    }
}

/// For a binary's `main`: if the arguments ask for the version (`--version`
/// or `-V`), prints it and returns true.
pub fn print_version_if_asked(program: &str, args: &[OsString]) -> bool {
    let asked = args.iter().any(|a| a == "--version" || a == "-V");
    if asked {
        println!("{}", version_line(program));
    }
    asked
}

/// The arguments after the program name, read flag by flag.
#[derive(Debug)]
pub struct FlagArgs {
    args: std::vec::IntoIter<String>,
    /// The value of a `--flag=value` just read, not yet taken.
    inline: Option<String>,
}

impl FlagArgs {
    /// Takes the arguments; every one must be UTF-8.
    pub fn new<I: IntoIterator<Item = OsString>>(args: I) -> Result<FlagArgs, String> {
        let args = args
            .into_iter()
            .map(|a| {
                a.into_string()
                    .map_err(|a| format!("argument {a:?} is not UTF-8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FlagArgs {
            args: args.into_iter(),
            inline: None,
        })
    }

    /// The next flag, or `None` at the end. A `--flag=value` value left
    /// untaken by the previous flag is an error.
    pub fn next_flag(&mut self) -> Result<Option<String>, String> {
        if let Some(value) = self.inline.take() {
            return Err(format!("unexpected value `{value}`"));
        }
        let Some(arg) = self.args.next() else {
            return Ok(None);
        };
        match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                self.inline = Some(value.to_string());
                Ok(Some(flag.to_string()))
            }
            _ => Ok(Some(arg)),
        }
    }

    /// The value of `flag`: after `=`, or the next argument.
    pub fn value(&mut self, flag: &str) -> Result<String, String> {
        self.inline
            .take()
            .or_else(|| self.args.next())
            .ok_or_else(|| format!("{flag} needs a value"))
    }

    /// The value of `flag`, parsed.
    pub fn parse<T>(&mut self, flag: &str) -> Result<T, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        let text = self.value(flag)?;
        text.parse().map_err(|e| format!("{flag} {text}: {e}"))
    }
}

/// `FIRST-LAST`, an inclusive range of IPv4 addresses (at most 65,536), or
/// one address: the local addresses of `muta-bot --bind-ips` and
/// `muta-attack --bind-ips`.
pub fn parse_ip_range(flag: &str, text: &str) -> Result<Vec<std::net::IpAddr>, String> {
    use std::net::{IpAddr, Ipv4Addr};
    let bad = || format!("{flag}: expected FIRST-LAST (IPv4), found `{text}`");
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let first: Ipv4Addr = first.parse().map_err(|_| bad())?;
    let last: Ipv4Addr = last.parse().map_err(|_| bad())?;
    let (a, b) = (u32::from(first), u32::from(last));
    if b < a || b - a >= 65_536 {
        return Err(bad());
    }
    Ok((a..=b).map(|n| IpAddr::from(Ipv4Addr::from(n))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> FlagArgs {
        FlagArgs::new(list.iter().map(OsString::from)).unwrap()
    }

    #[test]
    fn both_forms_and_their_errors() {
        let mut a = args(&["--n", "5", "--name=x", "--flag"]);
        assert_eq!(a.next_flag().unwrap().as_deref(), Some("--n"));
        assert_eq!(a.parse::<u32>("--n").unwrap(), 5);
        assert_eq!(a.next_flag().unwrap().as_deref(), Some("--name"));
        assert_eq!(a.value("--name").unwrap(), "x");
        assert_eq!(a.next_flag().unwrap().as_deref(), Some("--flag"));
        assert!(a.value("--flag").unwrap_err().contains("needs a value"));
        assert_eq!(a.next_flag().unwrap(), None);
        let mut a = args(&["--switch=oops", "--x"]);
        a.next_flag().unwrap();
        assert!(
            a.next_flag()
                .unwrap_err()
                .contains("unexpected value `oops`")
        );
        let mut a = args(&["--n", "many"]);
        a.next_flag().unwrap();
        assert!(a.parse::<u32>("--n").unwrap_err().starts_with("--n many: "));
    }

    #[test]
    fn ip_ranges() {
        let r = parse_ip_range("--bind-ips", "127.0.0.2-127.0.1.1").unwrap();
        assert_eq!(r.len(), 256);
        assert_eq!(r[0].to_string(), "127.0.0.2");
        assert_eq!(r[255].to_string(), "127.0.1.1");
        assert_eq!(parse_ip_range("--x", "10.0.0.1").unwrap().len(), 1);
        for bad in [
            "127.0.0.5-127.0.0.1",
            "x-y",
            "127.0.0.0-127.1.0.0",
            "::1-::2",
        ] {
            assert!(parse_ip_range("--x", bad).is_err(), "{bad}");
        }
    }
}
