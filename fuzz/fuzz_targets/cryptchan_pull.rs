//! Fuzz target: `PullStream::pull_in_place` on arbitrary ciphertext. Nothing
//! but what the matching push stream made may authenticate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muta_proxy::cryptchan::{KeyPair, PullStream, kx_client, kx_server};

fuzz_target!(|data: &[u8]| {
    let a = KeyPair::from_seed(&[1; 32]);
    let b = KeyPair::from_seed(&[2; 32]);
    let keys = kx_client(&a, &b.public()).unwrap();
    let _peer = kx_server(&b, &a.public()).unwrap();
    let header = [3u8; 24];
    if let Ok(mut pull) = PullStream::new(&keys, &header) {
        let mut buf = data.to_vec();
        assert!(pull.pull_in_place(&mut buf).is_err(), "forged ciphertext authenticated");
    }
});
