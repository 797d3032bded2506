//! The `muta-proxy` binary: the proxy daemon of thesis §3.4–§3.8. All of it
//! lives in the library (`muta_proxy::daemon`); this only passes the command
//! line in and the exit code out.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if muta_proxy::cli::print_version_if_asked("muta-proxy", &args) {
        return;
    }
    std::process::exit(muta_proxy::daemon::main_with_args(args));
}
