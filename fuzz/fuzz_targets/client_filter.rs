//! Fuzz target: the packet filter (thesis §3.8.4) and the client and server
//! message decoders. The filter and the typed decoder must agree on every
//! input, and neither may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muta_proxy::proto::client::{AuthProof, ClientMsg, ServerMsg, check_client_msg, filter_client_frame};

fuzz_target!(|data: &[u8]| {
    let _ = filter_client_frame(data);
    let _ = AuthProof::decode_frame(data);
    let _ = ServerMsg::decode(data);
    match (check_client_msg(data), ClientMsg::decode(data)) {
        (Ok(Some((_, a))), Ok(Some((_, b)))) => assert_eq!(a, b),
        (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
        (x, y) => panic!("filter {x:?} and decoder {y:?} disagree"),
    }
});
