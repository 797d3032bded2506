//! Fuzz target: the login protocols' decoders (player–login, login–shard).
#![no_main]

use libfuzzer_sys::fuzz_target;
use muta_proxy::proto::login::{FromLogin, FromShard, ToLogin, ToShard};

fuzz_target!(|data: &[u8]| {
    let _ = ToLogin::decode(data);
    let _ = FromLogin::decode(data);
    let _ = ToShard::decode(data);
    let _ = FromShard::decode(data);
});
