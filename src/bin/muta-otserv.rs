//! The `muta-otserv` binary: a game-server stand-in (TFS with the OTC proxy
//! patch) behind muta-proxy's `[otc]` front end. All of it lives in the
//! library (`muta_proxy::otserv`).

fn main() {
    std::process::exit(muta_proxy::otserv::main_with_args(
        std::env::args_os().skip(1),
    ));
}
