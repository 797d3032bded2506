//! The `proxy.cfg` reader (thesis §3.8.1): walks the TOML document with its
//! spans (toml's `DeTable`), looks every key up in [`KEYS`](super::KEYS),
//! range-checks and stores it, then runs [`Config::validate`].
//!
//! It does not stop at the first problem: an unknown section or key, a value
//! of the wrong type or out of range, and every cross-key problem are all
//! collected, each with its line, and reported in file order. A TOML syntax
//! error ends the reading, so it is reported alone.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::schema::{self, Key, SECTIONS, Value};
use super::{Config, ConfigError, ConfigErrors, KeyValues};

/// Parses and validates the text of a `proxy.cfg`.
pub(super) fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    parse_values(file, text).map(|(cfg, _)| cfg)
}

/// As [`parse`], also giving each key the file sets with its value's text as
/// written (what a reload compares).
pub(super) fn parse_values(file: &Path, text: &str) -> Result<(Config, KeyValues), ConfigErrors> {
    let doc = Doc { file, text };
    let mut values = KeyValues::new();
    let root = DeTable::parse(text).map_err(|err| {
        let line = err.span().map(|span| doc.line_of(span.start));
        ConfigError::new(file, line, err.message().trim_end().to_string())
    })?;
    let mut cfg = Config::default();
    let mut errors = Vec::new();
    // Where each key was set, so a cross-key problem can point at it.
    let mut lines: HashMap<&'static str, usize> = HashMap::new();
    // Keys whose value was refused: they keep their default, and a cross-key
    // problem about that default would only mislead.
    let mut refused: HashSet<&'static str> = HashSet::new();
    for (section, value) in in_file_order(root.get_ref()) {
        let table = match check_section(&doc, section, value) {
            Ok(table) => table,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        let section = section.get_ref().as_ref();
        for (key, value) in in_file_order(table) {
            let Some(entry) = schema::find(section, key.get_ref()) else {
                errors.push(doc.error(
                    key.span(),
                    format!("unknown key `{}` in [{section}]", key.get_ref()),
                ));
                continue;
            };
            match store(&mut cfg, entry, value, text) {
                Ok(()) => {
                    values.insert(entry.name, text[value.span()].trim().to_string());
                    lines.insert(entry.name, doc.line_of(key.span().start));
                }
                Err(message) => {
                    refused.insert(entry.name);
                    errors.push(doc.error(value.span(), message));
                }
            }
        }
    }
    if let Err(problems) = cfg.validate() {
        for (key, message) in problems {
            if !refused.contains(key) {
                errors.push(ConfigError::new(file, lines.get(key).copied(), message));
            }
        }
    }
    if errors.is_empty() {
        return Ok((cfg, values));
    }
    // File order; a problem with no line (a required key left out) last.
    errors.sort_by_key(|e| (e.line.is_none(), e.line));
    Err(ConfigErrors(errors))
}

/// The table of a top-level entry that is one of the known sections.
fn check_section<'t, 'i>(
    doc: &Doc<'_>,
    section: &Spanned<DeString<'i>>,
    value: &'t Spanned<DeValue<'i>>,
) -> Result<&'t DeTable<'i>, ConfigError> {
    let name = section.get_ref();
    let DeValue::Table(table) = value.get_ref() else {
        return Err(doc.error(
            section.span(),
            format!(
                "`{name}` is not a section; every key belongs in [proxy], [client], [shard], [runtime], [otc] or [admin]"
            ),
        ));
    };
    if !SECTIONS.contains(&name.as_ref()) {
        return Err(doc.error(
            section.span(),
            format!(
                "unknown section [{name}]; expected [proxy], [client], [shard], [runtime], [otc] or [admin]"
            ),
        ));
    }
    Ok(table)
}

/// Reads `value` as `key`'s entry says, checks its range and stores it; the
/// problem otherwise, starting with the key's name.
fn store(
    cfg: &mut Config,
    key: &Key,
    value: &Spanned<DeValue<'_>>,
    text: &str,
) -> Result<(), String> {
    let name = key.name;
    let found = kind(value.get_ref());
    match key.value {
        Value::Int {
            min, max, store, ..
        } => {
            let expected = format!("{name}: expected an integer from {min} to {max}");
            let DeValue::Integer(int) = value.get_ref() else {
                return Err(format!("{expected}, found {found}"));
            };
            match u64::from_str_radix(int.as_str(), int.radix()) {
                Ok(n) if (min..=max).contains(&n) => {
                    store(cfg, n);
                    Ok(())
                }
                _ => Err(format!(
                    "{expected}, found {}",
                    text.get(value.span()).unwrap_or(found)
                )),
            }
        }
        Value::Bool { store, .. } => match value.get_ref() {
            DeValue::Boolean(b) => {
                store(cfg, *b);
                Ok(())
            }
            _ => Err(format!("{name}: expected true or false, found {found}")),
        },
        Value::Text { store, .. } => match value.get_ref() {
            DeValue::String(s) => store(cfg, s).map_err(|problem| format!("{name}: {problem}")),
            _ => Err(format!("{name}: expected a string, found {found}")),
        },
        Value::List { store, .. } => {
            let expected = format!("{name}: expected an array of strings");
            let DeValue::Array(items) = value.get_ref() else {
                return Err(format!("{expected}, found {found}"));
            };
            let mut texts = Vec::with_capacity(items.len());
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::String(s) => texts.push(s.as_ref()),
                    other => return Err(format!("{expected}, found {} in it", kind(other))),
                }
            }
            store(cfg, &texts).map_err(|problem| format!("{name}: {problem}"))
        }
        Value::IntList {
            min, max, store, ..
        } => {
            let ints = int_list(name, value, text, (min, max))?;
            store(cfg, &ints);
            Ok(())
        }
    }
}

/// An array of integers, each from `min` to `max`.
fn int_list(
    name: &str,
    value: &Spanned<DeValue<'_>>,
    text: &str,
    (min, max): (u64, u64),
) -> Result<Vec<u64>, String> {
    let expected = format!("{name}: expected an array of integers from {min} to {max}");
    let DeValue::Array(items) = value.get_ref() else {
        return Err(format!("{expected}, found {}", kind(value.get_ref())));
    };
    let mut ints = Vec::with_capacity(items.len());
    for item in items.iter() {
        let n = match item.get_ref() {
            DeValue::Integer(int) => u64::from_str_radix(int.as_str(), int.radix()).ok(),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => ints.push(n),
            _ => {
                let what = text.get(item.span()).unwrap_or(kind(item.get_ref()));
                return Err(format!("{expected}, found {what} in it"));
            }
        }
    }
    Ok(ints)
}

/// A value's type, as an error message names it.
fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The text of the file, for turning byte offsets into line numbers.
struct Doc<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Doc<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(&self, span: Range<usize>, message: String) -> ConfigError {
        ConfigError::new(self.file, Some(self.line_of(span.start)), message)
    }
}

/// A table's entries sorted by where they appear, so problems are found in
/// file order.
fn in_file_order<'t, 'i>(
    table: &'t DeTable<'i>,
) -> Vec<(&'t Spanned<DeString<'i>>, &'t Spanned<DeValue<'i>>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

#[cfg(test)]
mod tests {
    use log::LevelFilter;

    use super::*;
    use crate::config::Secret;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("proxy.cfg"), text)
    }

    const PASSWORD: &str = "[shard]\npassword = \"pw\"\n";

    #[test]
    fn defaults_fill_every_missing_key() {
        let cfg = parse(PASSWORD).unwrap();
        let mut expected = Config::default();
        expected.shard.password = Secret::new("pw");
        assert_eq!(cfg, expected);
        assert!(expected.runtime.secpool_bytes_max >= expected.secpool_bytes_needed());
    }

    /// A file that sets every key of the table to the table's default reads
    /// as `Config::default()`: the table and the `DEFAULT_*` constants agree.
    #[test]
    fn the_table_defaults_are_the_config_defaults() {
        let mut text = String::new();
        for key in super::super::KEYS {
            let value = key.default_text().unwrap_or_else(|| "\"pw\"".to_string());
            text += &format!("{}.{} = {value}\n", key.section(), key.key());
        }
        let mut expected = Config::default();
        expected.shard.password = Secret::new("pw");
        assert_eq!(parse(&text).unwrap(), expected);
    }

    #[test]
    fn keys_are_read_from_their_sections() {
        let cfg = parse(
            "[proxy]\nlisten = \"127.0.0.1:0\"\npublic_address = \"game.example.org:7702\"\n\
             log_level = \"debug\"\n[client]\nmax_clients = 10_000\nidle_timeout_ms = 0x1000\n\
             [shard]\npassword = \"secret\"\nconnect_retry_ms = 500\n",
        )
        .unwrap();
        assert_eq!(cfg.proxy.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(cfg.proxy.public_address, "game.example.org:7702");
        assert_eq!(cfg.proxy.log_level, LevelFilter::Debug);
        assert_eq!(cfg.client.max_clients, 10_000);
        assert_eq!(cfg.client.idle_timeout_ms, 4096);
        assert_eq!(cfg.shard.connect_retry_ms, 500);
        assert_eq!(format!("{:?}", cfg.shard.password), "Secret(***)");
    }

    /// Texts with one problem each (and, when they set no password, the
    /// missing password), the problem's line and what its message says.
    const ONE_PROBLEM: &[(&str, usize, &str)] = &[
        (
            "[client]\nmax_clients = 10\nmax_client = 3\n",
            3,
            "unknown key `max_client` in [client]",
        ),
        (
            "[shard]\npassword = \"x\"\n[clients]\nmax_clients = 1\n",
            3,
            "unknown section [clients]",
        ),
        (
            "[client]\n\nmax_clients = 0\n",
            3,
            "expected an integer from 1 to 1000000, found 0",
        ),
        ("[client]\nmax_clients = \"many\"\n", 2, "found a string"),
        ("[proxy]\nlisten = \"localhost\"\n", 2, "expected IP:PORT"),
        (
            "[proxy]\npublic_address = \"0.0.0.0:7702\"\n",
            2,
            "not an address a client",
        ),
        ("[proxy]\npublic_address = \"host\"\n", 2, "needs a port"),
        ("[proxy]\nlog_level = \"loud\"\n", 2, "expected one of off"),
        ("max_clients = 3\n", 1, "is not a section"),
        ("[client]\nmax_clients = \n", 2, ""),
        (
            "[shard]\npassword = \"x\"\n\n[limits]\n",
            4,
            "unknown section [limits]",
        ),
        (
            "[shard]\npassword = \"x\"\nreads_per_wakeup = true\n",
            3,
            "shard.reads_per_wakeup: expected an integer from 1 to 1024, found a boolean",
        ),
        (
            "[client]\nrequire_announced_ip = 1\n",
            2,
            "client.require_announced_ip: expected true or false, found an integer",
        ),
        (
            "[shard]\npassword = -1\n",
            2,
            "shard.password: expected a string, found an integer",
        ),
        (
            "[client]\nmax_clients = -5\n",
            2,
            "expected an integer from 1 to 1000000, found -5",
        ),
    ];

    #[test]
    fn errors_name_file_line_and_problem() {
        for &(text, line, needle) in ONE_PROBLEM {
            let errors = parse(text).unwrap_err();
            // The problem the text was written for comes first; a file
            // without a password also gets "shard.password is empty", last.
            let err = &errors.0[0];
            assert_eq!(err.line, Some(line), "{text:?}: {errors}");
            assert!(
                errors
                    .to_string()
                    .starts_with(&format!("proxy.cfg:{line}: ")),
                "{errors}"
            );
            assert!(err.message.contains(needle), "{text:?}: {errors}");
            let rest: Vec<_> = errors.0[1..]
                .iter()
                .filter(|e| !e.message.contains("shard.password is empty"))
                .collect();
            assert!(rest.is_empty(), "{text:?}: {errors}");
        }
    }

    #[test]
    fn cross_key_checks_point_at_the_key_to_change() {
        let errors = parse("[client]\nmax_clients = 5\n").unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        let err = &errors.0[0];
        assert_eq!(err.line, None);
        assert!(err.message.contains("shard.password is empty"), "{err}");

        let errors = parse(&format!(
            "{PASSWORD}[runtime]\n\nsecpool_bytes_max = 1048576\n"
        ))
        .unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        let err = &errors.0[0];
        assert_eq!(err.line, Some(5), "{err}");
        assert!(err.message.contains("is below"), "{err}");

        let errors = parse("[shard]\npassword = \"\"\nin_buf_size = 2048\n").unwrap_err();
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{errors}");
        assert!(lines[0].starts_with("proxy.cfg:2: shard.password is empty"));
        assert!(lines[1].starts_with("proxy.cfg:3: shard.in_buf_size = 2048 cannot hold"));
    }

    #[test]
    fn three_bad_keys_on_three_lines_are_all_reported_in_order() {
        let errors = parse(
            "[client]\nmax_clients = 0\nidle_timeout_ms = \"soon\"\n[shard]\npassword = \"pw\"\n\
             retry_ms = 5\n",
        )
        .unwrap_err();
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "proxy.cfg:2: client.max_clients: expected an integer from 1 to 1000000, found 0",
                "proxy.cfg:3: client.idle_timeout_ms: expected an integer from 1000 to 86400000, \
                 found a string",
                "proxy.cfg:6: unknown key `retry_ms` in [shard]",
            ]
        );
        assert_eq!(errors.to_string(), lines.join("\n"));
    }

    #[test]
    fn every_kind_of_problem_is_collected() {
        // Sections in another order than the file's lines would sort them:
        // the report is still in file order, the missing password last.
        let errors = parse(
            "stray = 1\n[runtime]\nsecpool_bytes_max = 65536\nio_batch_max = 0\n\
             [proxy]\nlisten = \"nowhere\"\n[limits]\nx = 1\n",
        )
        .unwrap_err();
        let found: Vec<(Option<usize>, &str)> = errors
            .iter()
            .map(|e| (e.line, e.message.split(';').next().unwrap_or("")))
            .collect();
        assert_eq!(found.len(), 6, "{errors}");
        assert_eq!(found[0], (Some(1), "`stray` is not a section"));
        assert_eq!(found[1].0, Some(3));
        assert!(found[1].1.contains("is below"), "{errors}");
        assert_eq!(found[2].0, Some(4));
        assert!(found[2].1.starts_with("runtime.io_batch_max: expected"));
        assert_eq!(found[3].0, Some(6));
        assert!(found[3].1.starts_with("proxy.listen: expected IP:PORT"));
        assert_eq!(found[4], (Some(7), "unknown section [limits]"));
        assert_eq!(found[5], (None, "shard.password is empty"));
    }

    #[test]
    fn a_refused_value_raises_no_cross_key_problem() {
        // secpool_bytes_max out of range keeps its default; the bound is not
        // checked against that default a second time.
        let errors = parse(&format!(
            "{PASSWORD}[runtime]\nsecpool_bytes_max = 1\nevent_buffer_capacity = 1048576\n"
        ))
        .unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert!(
            errors.0[0]
                .message
                .contains("expected an integer from 65536")
        );
    }

    #[test]
    fn a_password_longer_than_the_protocol_carries_is_refused() {
        let long = "x".repeat(65);
        let errors = parse(&format!("[shard]\npassword = \"{long}\"\n")).unwrap_err();
        assert_eq!(
            errors.to_string(),
            "proxy.cfg:2: shard.password: at most 64 bytes, found 65 bytes"
        );
        let ok = "x".repeat(64);
        let cfg = parse(&format!("[shard]\npassword = \"{ok}\"\n")).unwrap();
        assert_eq!(cfg.shard.password.expose(), ok);
    }

    #[test]
    fn a_syntax_error_is_reported_once() {
        let errors = parse("[client]\nmax_clients = 0\n[shard\n").unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].line, Some(3), "{errors}");
    }
}
