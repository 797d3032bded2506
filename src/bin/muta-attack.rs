//! The `muta-attack` binary: one class of attack against a proxy (thesis
//! §2.1.1; `make attack`). All of it lives in the library
//! (`muta_proxy::attack`).

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if muta_proxy::cli::print_version_if_asked("muta-attack", &args) {
        return;
    }
    std::process::exit(muta_proxy::attack::main_with_args(args));
}
