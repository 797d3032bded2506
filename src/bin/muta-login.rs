//! The `muta-login` binary: the reference MUTA login server (thesis §3.8.3).
//! All of it lives in the library (`muta_proxy::login_server`).

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if muta_proxy::cli::print_version_if_asked("muta-login", &args) {
        return;
    }
    std::process::exit(muta_proxy::login_server::main_with_args(args));
}
