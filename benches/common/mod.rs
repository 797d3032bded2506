//! A small benchmark harness shared by the micro-benchmarks (no criterion: the
//! project keeps its dependency list short). Each scenario runs its
//! contenders interleaved, A B A B ..., so machine noise hits both alike, and
//! reports the median and the minimum nanoseconds per operation. The ratio
//! printed is of medians from the same run.

#![allow(dead_code)] // each benchmark uses its own subset

use std::time::Instant;

/// Repetitions per contender (odd, for a clean median). `MICRO_REPS` overrides.
pub fn reps() -> usize {
    std::env::var("MICRO_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
}

/// One contender: a name and a function that performs `ops` operations and
/// returns how many it did.
pub struct Contender<'a> {
    pub name: &'a str,
    pub run: Box<dyn FnMut() -> u64 + 'a>,
}

/// Runs the contenders interleaved and prints one markdown row per scenario:
/// `| scenario | A median (min) | B median (min) | B/A |`.
pub fn compare(scenario: &str, mut contenders: Vec<Contender<'_>>) {
    let reps = reps();
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(reps); contenders.len()];
    for c in contenders.iter_mut() {
        (c.run)(); // warm-up
    }
    for _ in 0..reps {
        for (i, c) in contenders.iter_mut().enumerate() {
            let start = Instant::now();
            let ops = (c.run)();
            samples[i].push(start.elapsed().as_nanos() as f64 / ops as f64);
        }
    }
    let stats: Vec<(f64, f64)> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (s[s.len() / 2], s[0])
        })
        .collect();
    let mut row = format!("| {scenario} ");
    for (c, (median, min)) in contenders.iter().zip(&stats) {
        row += &format!("| {}: {median:.1} ns ({min:.1}) ", c.name);
    }
    if stats.len() == 2 {
        row += &format!("| {:.2} |", stats[1].0 / stats[0].0);
    } else {
        row += "|";
    }
    println!("{row}");
}
