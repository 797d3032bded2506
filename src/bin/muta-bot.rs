//! The `muta-bot` binary: the MUTA load client (thesis §3.7, §3.8.5). All of
//! it lives in the library (`muta_proxy::bot`).

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if muta_proxy::cli::print_version_if_asked("muta-bot", &args) {
        return;
    }
    std::process::exit(muta_proxy::bot::main_with_args(args));
}
