//! The `muta-proxy` binary: the proxy daemon of thesis §3.4–§3.8. All of it
//! lives in the library (`muta_proxy::daemon`); this only passes the command
//! line in and the exit code out.

fn main() {
    std::process::exit(muta_proxy::daemon::main_with_args(
        std::env::args_os().skip(1),
    ));
}
