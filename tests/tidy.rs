//! Repository rules checked on every test run (in the manner of
//! rust-analyzer's tidy tests): every Rust file opens with a `//!` doc; no
//! `unsafe` outside the libsodium wrapper; no `#[ignore]` without a reason;
//! every source file appears in `docs/thesis-map.md`; every configuration key
//! of `config::KEYS` is in the shipped `proxy.cfg` with its default and in
//! `docs/configuration.md` with its default, range and reload.

use std::path::{Path, PathBuf};

use muta_proxy::config::{Config, KEYS, Key, Reload, Secret};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("target") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_rust_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "fuzz"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 10, "found only {} Rust files", files.len());
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root()).unwrap().display().to_string()
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let missing: Vec<String> = all_rust_files()
        .iter()
        .filter(|p| !read(p).trim_start().starts_with("//!"))
        .map(|p| rel(p))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! doc: {missing:?}"
    );
}

/// The line with string literals and a trailing `//` comment removed (a
/// rough lexer: enough for this codebase's style).
fn code_of(line: &str) -> String {
    let mut code = String::new();
    let mut in_string = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_string => {
                chars.next();
            }
            '"' => in_string = !in_string,
            '/' if !in_string && chars.peek() == Some(&'/') => break,
            _ if !in_string => code.push(c),
            _ => {}
        }
    }
    code
}

/// True if `code` has `unsafe` as a whole word (not `unsafe_code`).
fn has_unsafe_keyword(code: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices("unsafe").any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + "unsafe".len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// The only `unsafe` allowed is in the libsodium wrapper, `src/cryptchan.rs`,
/// where clippy's `undocumented_unsafe_blocks` (denied in `Cargo.toml`) makes
/// every block carry a `// SAFETY:` comment.
#[test]
fn unsafe_code_only_in_the_libsodium_wrapper() {
    let mut offenders = Vec::new();
    let mut in_wrapper_count = 0;
    for path in all_rust_files() {
        let name = rel(&path);
        let in_wrapper = name == "src/cryptchan.rs";
        for (i, line) in read(&path).lines().enumerate() {
            if !has_unsafe_keyword(&code_of(line)) {
                continue;
            }
            if in_wrapper {
                in_wrapper_count += 1;
            } else {
                offenders.push(format!("{name}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "unsafe outside the libsodium wrapper:\n{}",
        offenders.join("\n")
    );
    assert!(
        in_wrapper_count > 0,
        "the check found no unsafe at all: it is broken"
    );
    assert!(has_unsafe_keyword("let x = unsafe { y };"));
    let sample = ["deny(unsafe_code); let s = ", "\"unsafe\"", "; // unsafe"].concat();
    assert!(!has_unsafe_keyword(&code_of(&sample)));
}

#[test]
fn no_ignore_without_a_reason() {
    let mut offenders = Vec::new();
    for path in all_rust_files() {
        for (i, line) in read(&path).lines().enumerate() {
            let t = line.trim();
            if t.starts_with("#[ignore]") {
                offenders.push(format!("{}:{}", rel(&path), i + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "#[ignore] without `= \"reason\"`: {offenders:?}"
    );
}

#[test]
fn every_source_file_is_in_the_thesis_map() {
    let map = read(&root().join("docs/thesis-map.md"));
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let missing: Vec<String> = files
        .iter()
        .map(|p| rel(p))
        .filter(|name| !map.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/thesis-map.md does not mention: {missing:?}"
    );
}

/// Every key `Config::parse` accepts: the table itself.
fn config_keys() -> &'static [Key] {
    assert!(KEYS.len() >= 20, "only {} keys in config::KEYS", KEYS.len());
    KEYS
}

/// The cells of the row of `docs/configuration.md`'s tables that documents
/// `key`: key, default, range, reload, meaning.
fn docs_row<'a>(docs: &'a str, key: &str) -> Option<Vec<&'a str>> {
    let row = docs
        .lines()
        .find(|l| l.starts_with(&format!("| `{key}` |")))?;
    Some(row.split('|').map(str::trim).skip(1).collect())
}

/// The default as the docs write it: TOML strings in backticks.
fn docs_default(key: &Key) -> String {
    match key.default_text() {
        None => "none: required".to_string(),
        Some(text) if text.starts_with('"') => format!("`{text}`"),
        Some(text) => text,
    }
}

#[test]
fn every_config_key_is_shipped_and_documented() {
    let shipped = read(&root().join("proxy.cfg"));
    let docs = read(&root().join("docs/configuration.md"));
    for key in config_keys() {
        let section_text = shipped
            .split(&format!("[{}]", key.section()))
            .nth(1)
            .unwrap_or_else(|| panic!("proxy.cfg has no [{}]", key.section()))
            .split("\n[")
            .next()
            .unwrap();
        let at_default = |l: &str| match key.default_text() {
            Some(default) => l == format!("{} = {default}", key.key()),
            // The one key without a default is set to a placeholder.
            None => l.starts_with(&format!("{} = ", key.key())),
        };
        assert!(
            section_text.lines().any(at_default),
            "proxy.cfg does not set {} to its default, {:?}",
            key.name,
            key.default_text()
        );
        let row = docs_row(&docs, key.name)
            .unwrap_or_else(|| panic!("docs/configuration.md does not document {}", key.name));
        assert!(row.len() >= 5, "{}: the row has too few columns", key.name);
        assert_eq!(row[1], docs_default(key), "docs: default of {}", key.name);
        assert_eq!(
            row[2].replace('`', ""),
            key.range_text(),
            "docs: range of {}",
            key.name
        );
        let reload = match key.reload {
            Reload::Live => "live",
            Reload::Restart => "restart",
        };
        assert_eq!(row[3], reload, "docs: reload of {}", key.name);
    }
    // And nothing documented that the table does not have.
    for line in docs.lines().filter(|l| l.starts_with("| `")) {
        let name = line.split('`').nth(1).unwrap_or("");
        if name.contains('.') && !name.contains(' ') {
            assert!(
                config_keys().iter().any(|k| k.name == name),
                "docs/configuration.md documents `{name}`, which config::KEYS does not have"
            );
        }
    }
}

#[test]
fn the_shipped_proxy_cfg_holds_the_defaults() {
    let path = root().join("proxy.cfg");
    let shipped = Config::parse(&path, &read(&path)).unwrap();
    let mut expected = Config::default();
    // The one key without a default.
    expected.shard.password = Secret::new("change-me");
    assert_eq!(
        shipped, expected,
        "proxy.cfg and the DEFAULT_* constants disagree"
    );
}

/// The proxy's rules and the pool they run on are a state machine: they get
/// the time from the loop and hand their output to it (ARCHITECTURE.md,
/// "a server touches no socket and reads no clock"), which is what lets the
/// harness drive them on a virtual clock.
#[test]
fn the_proxy_core_touches_no_socket_and_no_clock() {
    let core = [
        "src/proxy/cl.rs",
        "src/proxy/link.rs",
        "src/proxy/reservations.rs",
        "src/proxy/ops.rs",
        "src/proxy/metrics.rs",
        "src/conn/mod.rs",
        "src/shard.rs",
    ];
    let forbidden = [
        "Instant::now()",
        "SystemTime",
        "TcpStream",
        "TcpListener",
        "mio::",
        "std::thread",
    ];
    let mut offenders = Vec::new();
    for file in core {
        let text = read(&root().join(file));
        // Unit tests may use the clock.
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (i, line) in code.lines().enumerate() {
            let code = code_of(line);
            for word in forbidden {
                if code.contains(word) {
                    offenders.push(format!("{file}:{}: {}", i + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "I/O or the clock in the proxy's core:\n{}",
        offenders.join("\n")
    );
    assert!(
        code_of("let t = Instant::now();").contains("Instant::now()"),
        "the check cannot see what it looks for"
    );
}

/// `text` with comments, string and char literals blanked out (newlines
/// kept), so that braces can be counted.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, b: u8| out.push(if b == b'\n' { '\n' } else { ' ' });
    while i < bytes.len() {
        let b = bytes[i];
        if text[i..].starts_with("//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if b == b'"' || (b == b'r' && text[i..].starts_with("r#\"")) {
            let raw = b == b'r';
            let close = if raw { "\"#" } else { "\"" };
            i += if raw { 3 } else { 1 };
            while i < bytes.len() && !text[i..].starts_with(close) {
                let skip = if !raw && bytes[i] == b'\\' { 2 } else { 1 };
                for &c in &bytes[i..(i + skip).min(bytes.len())] {
                    blank(&mut out, c);
                }
                i += skip;
            }
            i += close.len();
        } else if b == b'\'' && text[i..].len() >= 3 && {
            let rest = &text[i + 1..];
            rest.starts_with("\\") || rest.chars().nth(1) == Some('\'')
        } {
            // A char literal ('x', '\n', '\''), not a lifetime.
            let end = text[i + 2..].find('\'').map_or(bytes.len(), |e| i + 3 + e);
            i = end;
        } else {
            out.push(b as char);
            i += 1;
        }
    }
    out
}

/// The functions of `text` longer than `max` lines without a `// Long:`
/// reason in the comments just above them: (first line, length).
fn long_functions(text: &str, max: usize) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let code = code_only(text);
    let code: Vec<&str> = code.lines().collect();
    let mut long = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let line = code[i].trim_start();
        let is_fn = line.contains("fn ")
            && !line.trim_end().ends_with(';')
            && line.split("fn ").next().is_some_and(|before| {
                let quals = ["pub", "pub(crate)", "pub(super)", "const", "unsafe"];
                before.split_whitespace().all(|w| quals.contains(&w))
            });
        if !is_fn {
            i += 1;
            continue;
        }
        let (start, mut depth, mut opened) = (i, 0i32, false);
        while i < code.len() {
            depth += code[i].matches('{').count() as i32 - code[i].matches('}').count() as i32;
            opened |= code[i].contains('{');
            if opened && depth <= 0 {
                break;
            }
            i += 1;
        }
        let n = i.min(code.len() - 1) - start + 1;
        let reason = lines[..start]
            .iter()
            .rev()
            .take_while(|l| {
                let l = l.trim_start();
                l.starts_with("//") || l.starts_with("#[")
            })
            .any(|l| l.trim_start().starts_with("// Long:"));
        if n > max && !reason {
            long.push((start + 1, n));
        }
        i += 1;
    }
    long
}

/// No function in `src/` is longer than 70 lines unless the comment above it
/// gives the reason (a line starting `// Long:`): long functions were what
/// made the old handlers hard to read.
#[test]
fn no_function_in_src_is_longer_than_seventy_lines() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let long: Vec<String> = files
        .iter()
        .flat_map(|path| {
            long_functions(&read(path), 70)
                .into_iter()
                .map(move |(line, n)| format!("{}:{line} ({n} lines)", rel(path)))
        })
        .collect();
    assert!(long.is_empty(), "functions over 70 lines: {long:?}");
    // The check sees what it looks for.
    assert_eq!(code_only("let s = \"{\"; // }\n'{'"), "let s =  ; \n");
    let body = "    x();\n".repeat(71);
    let sample =
        format!("/// Doc.\npub fn f() {{\n{body}}}\n// Long: a table.\nfn g() {{\n{body}}}\n");
    assert_eq!(long_functions(&sample, 70), [(2, 73)]);
}
