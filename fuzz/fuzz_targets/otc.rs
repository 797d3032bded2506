//! Fuzz target: the OTClient multi-path proxy frame decoder (seed 002;
//! `docs/protocol.md` §9). No input may panic it; a frame it accepts
//! re-encodes to the bytes it took, and its proper prefixes ask for more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muta_proxy::proto::otc::OtcFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((frame, used))) = OtcFrame::decode(data) {
        let mut again = Vec::new();
        frame.encode(&mut again);
        assert_eq!(&again[..], &data[..used]);
        assert_eq!(OtcFrame::decode(&data[..used - 1]), Ok(None));
    }
});
