//! The `muta-bot` binary: the MUTA load client (thesis §3.7, §3.8.5). All of
//! it lives in the library (`muta_proxy::bot`).

fn main() {
    std::process::exit(muta_proxy::bot::main_with_args(std::env::args_os().skip(1)));
}
