//! muta-proxy: a Rust port of the proxy server from Joel Partanen's thesis
//! "Implementing a Proxy Server for a Massively Multiplayer Online Role-playing
//! Game" (KAMK, 2018), written for the MMORPG MUTA.
//!
//! The crate follows the thesis's threading model (§3.4): a *client thread* and
//! a *shard thread* wait in [`netpoll`] for network events and post typed
//! [`com::Event`]s into a blocking, bounded [`event_buf::EventBuf`]; the *main
//! thread* drains that buffer, owns all state, and flushes the output it queued
//! at the end of every loop iteration. Variable-size data (network reads)
//! travels in blocks from the segregated-fit pool [`secpool`].
//!
//! Modules in reading order, with the thesis section each one ports:
//!
//! | module | thesis | what |
//! |---|---|---|
//! | [`com`] | §3.5.1 | the common module: typed events, ids, shared constants |
//! | [`event_buf`] | §3.4.2 | the event buffer: `event_push` / `event_wait` |
//! | [`secpool`] | §3.4.4 | segregated-fit pool for variable-size events |
//! | [`netpoll`] | §3.3.1 | the netpoll API over mio |
//! | [`config`] | §3.8.1 | `proxy.cfg` (TOML) and `shards.cfg` (line format) |
//! | [`conn`] | §3.5.2, §3.5.3 | the connection layer: `client_t` pool for accepted and opened connections, the I/O thread (`cl_start`, `shard_start`), `cl_flush`/`shard_flush` |
//! | [`runtime`] | §3.4, §3.4.3 | the threading model: event buffer, I/O threads, the main loop driving a [`runtime::Server`] |
//! | [`shard`] | §3.5.3, §3.8.1 | the shard module's policy: one link per `shards.cfg` line, reconnects every 2 s |
//! | [`cryptchan`] | §2.4.3 | libsodium key exchange and secretstream, in place |
//! | [`proto`] | §3.8.2–§3.8.4 | the protocols, free of I/O: the frame driver, messages, the filter table |
//! | [`proxy`] | §3.8 | the proxy's behaviour: stages, auth, reservations, routing, filtering |
//! | [`process`] | §3.4 | what the programs share around the main thread: logging, signals, exit codes |
//! | [`daemon`] | — | `muta-proxy`'s command line and `--check-config` |
//! | [`attack`] | §2.1.1 | `muta-attack`: the attacks `make attack` runs against the proxy |
//!
//! `ARCHITECTURE.md` describes the data flow, who owns what, what may block
//! where and every bound; `docs/thesis-map.md` maps each thesis section to the
//! file and function that ports it.

#[cfg(not(target_pointer_width = "64"))]
compile_error!("netpoll stores a 64-bit data word in mio's usize token: 64-bit targets only");

pub mod admin;
pub mod attack;
pub mod bot;
pub mod cli;
pub mod com;
pub mod config;
pub mod conn;
pub mod cryptchan;
pub mod daemon;
pub mod event_buf;
pub mod login_server;
pub mod netpoll;
pub mod notify;
pub mod otserv;
pub mod process;
pub mod proto;
pub mod proxy;
pub mod runtime;
pub mod secpool;
pub mod shard;
pub mod shard_server;
