//! The `muta-shard` binary: the reference MUTA shard (game server) that
//! proxies connect to (thesis §3.6). All of it lives in the library
//! (`muta_proxy::shard_server`).

fn main() {
    std::process::exit(muta_proxy::shard_server::main_with_args(
        std::env::args_os().skip(1),
    ));
}
