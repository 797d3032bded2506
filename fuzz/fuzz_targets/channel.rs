//! Fuzz target: a cryptchan `Channel` (acceptor and initiator) fed arbitrary
//! bytes: the handshake parser and the frame reader must fail cleanly.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use muta_proxy::cryptchan::KeyPair;
use muta_proxy::proto::frame::{Channel, Step};

fn keys() -> Arc<KeyPair> {
    static KEYS: OnceLock<Arc<KeyPair>> = OnceLock::new();
    KEYS.get_or_init(|| Arc::new(KeyPair::from_seed(&[7; 32]))).clone()
}

fuzz_target!(|data: &[u8]| {
    for initiator in [false, true] {
        let mut out = Vec::new();
        let mut chan = if initiator {
            Channel::initiator(keys(), None, &mut out)
        } else {
            Channel::acceptor(keys())
        };
        let mut input = data.to_vec();
        let mut pos = 0;
        while pos < input.len() {
            match chan.next(&mut input[pos..], &mut out) {
                Ok(Step::Handshake { consumed } | Step::Opened { consumed } | Step::Frame { consumed, .. }) => {
                    assert!(consumed > 0);
                    pos += consumed;
                }
                Ok(Step::NeedMore) | Err(_) => break,
            }
        }
    }
});
