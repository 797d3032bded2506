//! The `muta-otserv` binary: a game-server stand-in (TFS with the OTC proxy
//! patch) behind muta-proxy's `[otc]` front end. All of it lives in the
//! library (`muta_proxy::otserv`).

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if muta_proxy::cli::print_version_if_asked("muta-otserv", &args) {
        return;
    }
    std::process::exit(muta_proxy::otserv::main_with_args(args));
}
