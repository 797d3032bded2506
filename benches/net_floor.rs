//! Micro-benchmark: what does the kernel charge for moving one small message
//! over loopback TCP, the way the proxy's threads do it (thesis §3.2:
//! netpoll, `cl_flush`)? Its *kernel floor* stands next to
//! `benches/cryptchan.rs`'s crypto floor in `make bench`, which compares the
//! proxy's CPU per forwarded message with both.
//!
//! A loopback TCP pair, 64-byte messages, CPU time per message on the
//! threads' own clocks (`/proc/thread-self/schedstat`: nanoseconds on a CPU,
//! user and system):
//!
//! - **nobody to wake**: one thread writes each message with its own
//!   `write` (on loopback that also runs the receiving socket's TCP input),
//!   then reads a burst of them back in one `read`. No thread sleeps on the
//!   reading end, so no write wakes one: the kernel's work for a message
//!   alone, the least a proxy pays per message it sends on with a `write` of
//!   its own. This is the line `kernel_floor_ns_per_msg N`.
//! - **ping-pong, reader asleep**: two threads bounce the message, each
//!   asleep in `epoll_wait` until it comes, as a bot and the proxy are
//!   between messages at 1,000 clients. Each message costs a write, a
//!   wake-up of the other thread and its read.
//! - the ping-pong with 16 messages per `write`, per message: what batching
//!   buys when every write must wake its reader.
//!
//! Run: `cargo bench --bench net_floor` (or `make bench`). Linux only (the
//! thread CPU clock); elsewhere it says so and prints no floor.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use mio::{Events, Interest, Poll, Token};

const MSG: usize = 64;
const MSGS: u64 = 20_000;

/// Nanoseconds this thread has run on a CPU, user and system.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// A nonblocking end of the pair, registered with its own netpoll.
struct End {
    stream: mio::net::TcpStream,
    poll: Poll,
    events: Events,
}

impl End {
    fn new(stream: TcpStream) -> End {
        stream.set_nodelay(true).unwrap();
        stream.set_nonblocking(true).unwrap();
        let mut stream = mio::net::TcpStream::from_std(stream);
        let poll = Poll::new().unwrap();
        poll.registry()
            .register(
                &mut stream,
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        End {
            stream,
            poll,
            events: Events::with_capacity(8),
        }
    }

    fn wait(&mut self) {
        self.poll.poll(&mut self.events, None).unwrap();
    }

    /// Writes all of `bytes`, waiting in netpoll while the socket is full.
    fn write_all(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.stream.write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.wait(),
                Err(e) => panic!("write: {e}"),
            }
        }
    }

    /// Reads exactly `want` bytes into `buf` (in reads of up to its length),
    /// waiting in netpoll while none are there.
    fn read_exact(&mut self, buf: &mut [u8], want: usize) {
        let mut got = 0;
        while got < want {
            let room = buf.len().min(want - got);
            match self.stream.read(&mut buf[..room]) {
                Ok(0) => panic!("peer closed"),
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.wait(),
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

/// Runs `a` and `b` on two threads over a fresh loopback pair and returns
/// their CPU nanoseconds together.
fn pair(a: impl FnOnce(End) + Send + 'static, b: impl FnOnce(End) + Send + 'static) -> u64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let one = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (two, _) = listener.accept().unwrap();
    let timed = |f: Box<dyn FnOnce(End) + Send>, s: TcpStream| {
        thread::spawn(move || {
            let start = thread_cpu_ns().unwrap();
            f(End::new(s));
            thread_cpu_ns().unwrap() - start
        })
    };
    let a = timed(Box::new(a), one);
    let b = timed(Box::new(b), two);
    a.join().unwrap() + b.join().unwrap()
}

/// Nobody asleep: one thread writes `BURST` messages into one end, a write
/// each, then reads them all from the other in one go, `MSGS` in all. No
/// thread waits on the reading end, so no write wakes anyone: this is the
/// kernel's work for a message alone.
fn no_wake() -> f64 {
    const BURST: usize = 128; // 8 KiB: well inside the socket buffers
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let one = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (two, _) = listener.accept().unwrap();
    let (mut w, mut r) = (End::new(one), End::new(two));
    let msg = [0x5A_u8; MSG];
    let mut buf = vec![0_u8; MSG * BURST];
    let start = thread_cpu_ns().unwrap();
    for _ in 0..MSGS as usize / BURST {
        for _ in 0..BURST {
            w.write_all(&msg);
        }
        r.read_exact(&mut buf, MSG * BURST);
    }
    let cpu = thread_cpu_ns().unwrap() - start;
    cpu as f64 / (MSGS as usize / BURST * BURST) as f64
}

/// Ping-pong: `MSGS` messages in all, `batch` per write, each write answered
/// by the other side once it has read the whole batch.
fn ping_pong(batch: usize) -> f64 {
    let turns = MSGS / batch as u64 / 2;
    let side = move |opener: bool| {
        move |mut end: End| {
            let out = vec![0x5A_u8; MSG * batch];
            let mut buf = vec![0_u8; MSG * batch];
            if opener {
                end.write_all(&out);
            }
            for turn in 0..turns {
                end.read_exact(&mut buf, out.len());
                if !opener || turn + 1 < turns {
                    end.write_all(&out);
                }
            }
        }
    };
    let cpu = pair(side(true), side(false));
    cpu as f64 / (turns * 2 * batch as u64) as f64
}

/// Median and minimum of `reps` runs, after one warm-up.
fn measure(reps: usize, mut run: impl FnMut() -> f64) -> (f64, f64) {
    run();
    let mut samples: Vec<f64> = (0..reps).map(|_| run()).collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    (samples[samples.len() / 2], samples[0])
}

fn main() {
    if thread_cpu_ns().is_none() {
        println!("net_floor: no /proc/thread-self/schedstat here; no kernel floor measured");
        return;
    }
    let reps = common::reps();
    println!("| loopback TCP, {MSG}-byte messages | CPU per message, all threads |");
    println!("|---|---|");
    let floor = measure(reps, no_wake);
    println!(
        "| one write per message, nobody to wake (one thread) | {:.1} ns ({:.1}) |",
        floor.0, floor.1
    );
    let asleep = measure(reps, || ping_pong(1));
    println!(
        "| ping-pong, reader asleep, one message per write | {:.1} ns ({:.1}) |",
        asleep.0, asleep.1
    );
    let batched = measure(reps, || ping_pong(16));
    println!(
        "| ping-pong, reader asleep, 16 messages per write | {:.1} ns ({:.1}) |",
        batched.0, batched.1
    );
    println!();
    println!("kernel_floor_ns_per_msg {:.1}", floor.0);
}
