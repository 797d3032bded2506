//! Fuzz target: the proxy–shard decoders (thesis §3.8.2). No input may panic
//! them, and whatever they accept must re-encode to the bytes consumed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muta_proxy::proto::proxy_shard::{FProxyMsg, TProxyMsg};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((msg, used))) = TProxyMsg::decode(data) {
        let mut again = Vec::new();
        msg.encode(&mut again);
        assert_eq!(&again[..], &data[..used]);
    }
    if let Ok(Some((msg, used))) = FProxyMsg::decode(data) {
        let mut again = Vec::new();
        msg.encode(&mut again);
        assert_eq!(&again[..], &data[..used]);
    }
});
