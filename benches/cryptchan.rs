//! Micro-benchmark: what does libsodium's secretstream (cryptchan, thesis
//! §2.4.3) cost per message, pushing (encrypting) and pulling (decrypting) in
//! place, for 16- to 1,024-byte messages? And the *crypto floor*: the
//! libsodium work of one proxy hop for one client message, which `make bench`
//! compares the proxy's CPU per forwarded message with.
//!
//! The floor is one pull of a client frame carrying one benchmark echo
//! message (the message `muta-bot` sends: `Echo` with 32 bytes of padding)
//! plus one push of the same bytes: what a proxy that decrypts each message
//! and re-encrypts it for the next hop pays at least. muta-proxy pays less
//! than the push share (it seals one frame per shard per loop iteration,
//! however many messages it holds), and nothing for the shard's messages to
//! players, which it forwards still encrypted.
//!
//! Run: `cargo bench --bench cryptchan` (or `make bench`). Prints ns per
//! message, median (min) of `MICRO_REPS` runs of `MSGS` messages, a markdown
//! table, and one machine-readable line `crypto_floor_ns_per_msg N`.

mod common;

use std::hint::black_box;
use std::time::Instant;

use muta_proxy::cryptchan::{self, ABYTES, KeyPair, PullStream, PushStream, kx_client, kx_server};
use muta_proxy::proto::client::ClientMsg;

const MSGS: usize = 20_000;
const SIZES: [usize; 5] = [16, 64, 128, 256, 1024];

/// Median and minimum of `reps` timings of `run`, in ns per message; `prep`
/// (untimed) builds each run's input.
fn measure<T>(reps: usize, mut prep: impl FnMut() -> T, mut run: impl FnMut(T)) -> (f64, f64) {
    run(prep()); // warm-up
    let mut samples: Vec<f64> = (0..reps)
        .map(|_| {
            let input = prep();
            let start = Instant::now();
            run(input);
            start.elapsed().as_nanos() as f64 / MSGS as f64
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    (samples[samples.len() / 2], samples[0])
}

/// Buffers laid out for in-place use: `[tag slot][message][16 spare]`.
fn plain(len: usize) -> Vec<u8> {
    let mut buf = vec![0x5A; len + ABYTES];
    buf[0] = 0;
    buf
}

fn main() {
    cryptchan::init().expect("libsodium");
    let (client, server) = (KeyPair::generate(), KeyPair::generate());
    let ck = kx_client(&client, &server.public()).unwrap();
    let sk = kx_server(&server, &client.public()).unwrap();

    println!("| message bytes | push (encrypt) | pull (decrypt) |");
    println!("|---|---|---|");
    for len in SIZES {
        let (mut push, _) = PushStream::new(&ck);
        let push_ns = measure(
            common::reps(),
            || vec![plain(len); MSGS],
            |mut bufs| {
                for buf in bufs.iter_mut() {
                    push.push_in_place(buf).unwrap();
                }
                black_box(&bufs);
            },
        );
        // Pulls need a valid sequence: one stream's ciphertexts, pulled by a
        // fresh stream from the same header every run.
        let (mut seq_push, header) = PushStream::new(&ck);
        let ciphertexts: Vec<Vec<u8>> = (0..MSGS)
            .map(|_| {
                let mut buf = plain(len);
                seq_push.push_in_place(&mut buf).unwrap();
                buf
            })
            .collect();
        let pull_ns = measure(
            common::reps(),
            || (PullStream::new(&sk, &header).unwrap(), ciphertexts.clone()),
            |(mut pull, mut bufs)| {
                for buf in bufs.iter_mut() {
                    pull.pull_in_place(buf).unwrap();
                }
                black_box(&bufs);
            },
        );
        println!(
            "| {len} | {:.1} ns ({:.1}) | {:.1} ns ({:.1}) |",
            push_ns.0, push_ns.1, pull_ns.0, pull_ns.1
        );
    }

    // The floor: pull one client frame holding one bench echo, push it on.
    let mut echo = Vec::new();
    ClientMsg::Echo {
        seq: 1,
        time_us: 1,
        data: &[0x42; 32],
    }
    .encode(&mut echo);
    let len = echo.len();
    let (mut seq_push, header) = PushStream::new(&ck);
    let ciphertexts: Vec<Vec<u8>> = (0..MSGS)
        .map(|_| {
            let mut buf = plain(len);
            buf[1..1 + len].copy_from_slice(&echo);
            seq_push.push_in_place(&mut buf).unwrap();
            buf
        })
        .collect();
    let (mut next_hop, _) = PushStream::new(&sk);
    // More repetitions: `make bench` divides by this figure, and one slow
    // repetition on a noisy VM should not move it.
    let floor = measure(
        3 * common::reps(),
        || (PullStream::new(&sk, &header).unwrap(), ciphertexts.clone()),
        |(mut pull, mut bufs)| {
            for buf in bufs.iter_mut() {
                pull.pull_in_place(buf).unwrap();
                next_hop.push_in_place(buf).unwrap();
            }
            black_box(&bufs);
        },
    );
    println!(
        "\nCrypto floor, one {len}-byte echo message: pull + push = {:.1} ns ({:.1})",
        floor.0, floor.1
    );
    println!("crypto_floor_ns_per_msg {:.1}", floor.0);
}
