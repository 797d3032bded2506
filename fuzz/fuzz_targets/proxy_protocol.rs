//! Fuzz target: the PROXY protocol decoder (v1 and v2; port decision,
//! `docs/protocol.md` §8). No input may panic it; a header it accepts lies
//! within the bound, decodes the same alone, and its proper prefixes ask for
//! more bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muta_proxy::proto::proxy_protocol::{HEADER_MAX, decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((header, used))) = decode(data) {
        assert!(used <= data.len() && used <= HEADER_MAX);
        assert_eq!(decode(&data[..used]), Ok(Some((header, used))));
        assert_eq!(decode(&data[..used - 1]), Ok(None));
    }
});
