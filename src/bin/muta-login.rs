//! The `muta-login` binary: the reference MUTA login server (thesis §3.8.3).
//! All of it lives in the library (`muta_proxy::login_server`).

fn main() {
    std::process::exit(muta_proxy::login_server::main_with_args(
        std::env::args_os().skip(1),
    ));
}
