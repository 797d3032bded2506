//! Fuzz target: the `proxy.cfg` and `shards.cfg` parsers on arbitrary text.
//! Every reported problem must name a line within the text, problems come in
//! file order, an error is never empty, and nothing may panic.
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
        let Err(errors) = result else {
            continue;
        };
        assert!(!errors.0.is_empty(), "an error without a problem");
        let reported: Vec<usize> = errors.iter().filter_map(|e| e.line).collect();
        for &line in &reported {
            assert!(line >= 1 && line <= lines + 1, "line {line} of {lines}");
        }
        assert!(
            reported.windows(2).all(|w| w[0] <= w[1]),
            "not in file order: {reported:?}"
        );
    }
});
