//! Fuzz target: the `proxy.cfg` and `shards.cfg` parsers on arbitrary text.
//! Errors must name a line within the text, and nothing may panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use muta_proxy::config::{Config, parse_shards_cfg};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count().max(1);
    for result in [
        parse_shards_cfg(Path::new("f"), text).map(|_| ()),
        Config::parse(Path::new("f"), text).map(|_| ()),
    ] {
        if let Err(e) = result
            && let Some(line) = e.line
        {
            assert!(line >= 1 && line <= lines + 1, "line {line} of {lines}");
        }
    }
});
