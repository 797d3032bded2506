//! `muta-bot --rejoin` (no thesis section: the load client of `make soak`,
//! issue "Run it as operators do"): bots that come back. A bot whose
//! connection is cut (its shard restarted, its proxy reloaded or stopped,
//! any error) logs in again after a short random pause, and plays on; with
//! `--churn R` each playing bot also leaves on purpose about R times a
//! second (it stops sending, waits for every echo, closes) and comes back.
//!
//! What is counted, so a soak can tell a fault from the churn it causes:
//! - a connection *cut* is one that ended before the bot chose to end it;
//!   its echoes in flight are `cut_in_flight`, not lost;
//! - on every connection, a duplicated echo (`duplicated`) and one that
//!   comes after a later one (`reordered`); on a connection the bot ended
//!   itself, an echo that never came back (`lost`); all three must be 0;
//! - a bot cut (or never let in) comes *back* when it is welcomed again;
//!   `comeback_max_ms` is the longest that took, and `not_back` counts the
//!   bots still out at the end whose cut is older than [`COMEBACK_GRACE`].

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::{Phase, Worker};

/// A bot still out this long after its cut, at the end, could not come
/// back.
pub const COMEBACK_GRACE: Duration = Duration::from_secs(30);
/// The pause before a bot comes back: uniform in this range.
const PAUSE_MIN: Duration = Duration::from_millis(250);
const PAUSE_SPAN_MS: u64 = 1250;

impl Worker {
    /// A uniform number in `0..1` (xorshift64*; each worker its own).
    pub(super) fn uniform(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `--rejoin`: the bot's connection ended (a cut when it was not the
    /// bot's choice, `cut` true): closed, and a new login scheduled after a
    /// short pause. False if the bot is not rejoining (the run is stopping,
    /// or `--rejoin` is off): the caller fails or finishes it.
    pub(super) fn rejoin(&mut self, b: u32, why: &str, cut: bool) -> bool {
        if !self.cfg.rejoin || self.stopping {
            return false;
        }
        let now = Instant::now();
        let pause =
            PAUSE_MIN + Duration::from_millis((self.uniform() * PAUSE_SPAN_MS as f64) as u64);
        let bot = &mut self.bots[b as usize];
        if now + pause >= bot.end {
            return false; // its play is over anyway
        }
        if cut {
            if matches!(bot.phase, Phase::Playing | Phase::Draining) {
                self.result.cuts += 1;
                self.result.cut_in_flight += u64::from(bot.next_seq - bot.next_expect);
            }
            bot.cut_at = bot.cut_at.or(Some(now));
            *self.result.cut_reasons.entry(why.to_string()).or_insert(0) += 1;
        } else {
            self.result.churns += 1;
        }
        if let Some(stream) = bot.stream.take() {
            let _ = self.np.del(&stream);
        }
        bot.chan = None;
        bot.ticket = None;
        bot.login_step = 0;
        bot.leaving = false;
        bot.phase = Phase::Idle;
        bot.started = now + pause;
        bot.deadline = bot.started + self.cfg.connect_timeout;
        self.timers.push(Reverse((bot.started, b)));
        true
    }

    /// A welcome in `--rejoin` mode: a new connection plays from seq 0 until
    /// the bot's end, and a bot that was out is back.
    pub(super) fn rejoined(&mut self, b: u32, now: Instant) {
        let rate = self.cfg.rate;
        let churn = self.cfg.churn_per_s;
        let leave_in = if churn > 0.0 {
            // Exponential: about `churn` departures a second.
            Some(Duration::from_secs_f64(
                -(1.0 - self.uniform()).ln() / churn,
            ))
        } else {
            None
        };
        let bot = &mut self.bots[b as usize];
        bot.next_seq = 0;
        bot.next_expect = 0;
        bot.chats_sent = 0;
        bot.to_send = (bot.end.saturating_duration_since(now).as_secs_f64() * rate) as u64;
        bot.leave_at = leave_in.map(|d| now + d);
        if let Some(cut) = bot.cut_at.take() {
            self.result.rejoins += 1;
            let ms = now.saturating_duration_since(cut).as_millis() as u64;
            self.result.comeback_max_ms = self.result.comeback_max_ms.max(ms);
        }
    }

    /// While playing: time for a planned departure? The bot stops sending,
    /// and leaves once every echo is back.
    pub(super) fn maybe_leave(&mut self, b: u32, now: Instant) {
        let bot = &mut self.bots[b as usize];
        if bot.leave_at.is_some_and(|at| now >= at) && matches!(bot.phase, Phase::Playing) {
            bot.leave_at = None;
            bot.leaving = true;
            bot.to_send = u64::from(bot.next_seq);
        }
    }

    /// At the end of the run: the bots still out after [`COMEBACK_GRACE`].
    pub(super) fn count_not_back(&mut self, now: Instant) {
        let out = self
            .bots
            .iter()
            .filter(|bot| {
                bot.cut_at
                    .is_some_and(|at| now.duration_since(at) >= COMEBACK_GRACE)
            })
            .count();
        self.result.not_back += out as u32;
    }
}
