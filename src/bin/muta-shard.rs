//! The `muta-shard` binary: the reference MUTA shard (game server) that
//! proxies connect to (thesis §3.6). All of it lives in the library
//! (`muta_proxy::shard_server`).

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if muta_proxy::cli::print_version_if_asked("muta-shard", &args) {
        return;
    }
    std::process::exit(muta_proxy::shard_server::main_with_args(args));
}
