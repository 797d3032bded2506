//! The shard module's connect policy (thesis §3.5.3 `shard_start`, §3.8.1
//! "Forming connections with shard servers"): one link per `shards.cfg`
//! line, kept up for the life of the process. The proxy and the login server
//! both use it for their links to shards.
//!
//! "If a shard cannot be reached or gets disconnected, the proxy will attempt
//! to connect to it every two seconds" (thesis): an attempt starts every
//! `shard.connect_retry_ms` from the start of the previous one while a shard
//! cannot be reached, and that long after a connection is lost. The attempt
//! itself is a connection of the shard thread's pool ([`Pool::connect`]):
//! opened without blocking through netpoll, given up after
//! `shard.connect_timeout_ms`, a DNS name resolved anew each time. (The
//! thesis makes blocking `connect()` calls on threads of their own; the
//! connection layer does without them, so the same pool can open thousands
//! of connections at once. Port decision, in `docs/thesis-map.md`.)
//!
//! This is policy only, on the main thread: the pool reports every outcome
//! (connected, refused, timed out, lost) and [`ShardLinks`] decides when to
//! try again. Each connection a link makes is numbered in the log
//! ("connection 3"), the thesis's reconnects made visible.

use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::com::ConnRef;
use crate::config::ShardEntry;
use crate::conn::{DisconnectReason, Pool, Session, Target};

/// Connection slots the shard pool needs per link: the attempt in flight or
/// the link that is up, and the one before it, whose slot is freed only when
/// the I/O thread confirms the close, which may come after the next attempt
/// is due (a timed-out attempt is retried at once when the connect timeout
/// is the retry period).
pub const SLOTS_PER_LINK: usize = 2;

/// While a shard stays unreachable, how often its link logs a summary
/// (the first failed attempt is a warning of its own; the others are
/// `debug` lines): 1,440 lines a day instead of one per attempt.
pub const UNREACHABLE_SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Where one `shards.cfg` line's link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Not connected; the next attempt starts then.
    Waiting { next_attempt: Instant },
    /// An attempt is in flight on this connection, since `started`.
    Connecting { conn: ConnRef, started: Instant },
    /// Connected.
    Up { conn: ConnRef },
}

#[derive(Debug)]
struct Link {
    entry: ShardEntry,
    state: LinkState,
    /// Connect attempts so far.
    attempts: u64,
    /// Connections made so far.
    connections: u32,
    /// While attempts fail one after another: since when, how many, and
    /// when the next summary line is due.
    failing: Option<Failing>,
    /// Taken out of `shards.cfg` by a reload: no new attempt; the link goes
    /// once its connection ends.
    removed: bool,
}

impl Link {
    fn new(entry: &ShardEntry, now: Instant) -> Link {
        Link {
            entry: entry.clone(),
            state: LinkState::Waiting { next_attempt: now },
            attempts: 0,
            connections: 0,
            failing: None,
            removed: false,
        }
    }
}

/// A run of failed connect attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Failing {
    since: Instant,
    attempts: u64,
    next_summary: Instant,
}

/// What the metrics show of one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkView {
    /// `HOST:PORT`.
    pub addr: String,
    /// Its connection, if connecting or up.
    pub conn: Option<ConnRef>,
    /// Connected now.
    pub up: bool,
    /// Connect attempts so far.
    pub attempts: u64,
    /// Connections made so far.
    pub connections: u32,
    /// Being removed by a reload.
    pub removed: bool,
}

/// The links to every shard of `shards.cfg`, and when to try again.
#[derive(Debug)]
pub struct ShardLinks {
    links: Vec<Link>,
    retry: Duration,
}

impl ShardLinks {
    /// One link per entry; the first attempts are due at once.
    pub fn new(entries: &[ShardEntry], retry: Duration, now: Instant) -> ShardLinks {
        ShardLinks {
            links: entries.iter().map(|entry| Link::new(entry, now)).collect(),
            retry,
        }
    }

    /// The time between attempts, from the next one scheduled (a reload).
    pub fn set_retry(&mut self, retry: Duration) {
        self.retry = retry;
    }

    /// The entries of the links that are not being removed, in order.
    pub fn entries(&self) -> impl Iterator<Item = &ShardEntry> + '_ {
        self.links
            .iter()
            .filter(|l| !l.removed)
            .map(|link| &link.entry)
    }

    /// Links being removed whose connection has not ended yet.
    pub fn n_removing(&self) -> usize {
        self.links.iter().filter(|l| l.removed).count()
    }

    /// A shard added to `shards.cfg` by a reload: its first attempt is due
    /// at once.
    pub fn add(&mut self, entry: &ShardEntry, now: Instant) {
        info!("shard {}: added to shards.cfg; connecting", entry.addr());
        self.links.push(Link::new(entry, now));
    }

    /// A shard taken out of `shards.cfg` by a reload: no more attempts. A
    /// link not connected goes at once; the connection of one connecting or
    /// up is returned, for the caller to end (the link goes with it, in
    /// [`ShardLinks::gone`]).
    pub fn remove(&mut self, entry: &ShardEntry) -> Option<ConnRef> {
        let i = self
            .links
            .iter()
            .position(|l| !l.removed && l.entry.same_shard(entry))?;
        match self.links[i].state {
            LinkState::Waiting { .. } => {
                info!("shard {}: removed from shards.cfg", entry.addr());
                self.links.remove(i);
                None
            }
            LinkState::Connecting { conn, .. } | LinkState::Up { conn } => {
                self.links[i].removed = true;
                Some(conn)
            }
        }
    }

    /// How many links there are (`shards.cfg` lines).
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// True if `shards.cfg` listed none (only in tests: the file may not be
    /// empty).
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// When the next attempt is due, if a link is waiting.
    pub fn next_timer(&self) -> Option<Instant> {
        self.links
            .iter()
            .filter_map(|link| match link.state {
                LinkState::Waiting { next_attempt } => Some(next_attempt),
                _ => None,
            })
            .min()
    }

    /// Starts the attempts that are due, as connections of `pool`.
    pub fn connect_due<S: Session>(&mut self, pool: &mut Pool<S>, now: Instant) {
        for link in &mut self.links {
            let LinkState::Waiting { next_attempt } = link.state else {
                continue;
            };
            if link.removed {
                continue;
            }
            if next_attempt > now {
                continue;
            }
            let target = Target::new(&link.entry.host, link.entry.port);
            let Some(conn) = pool.connect(target, now) else {
                // Cannot happen with `SLOTS_PER_LINK` slots a link: try later.
                warn!("shard {}: no free connection slot (bug)", link.entry.addr());
                link.state = LinkState::Waiting {
                    next_attempt: now + self.retry,
                };
                continue;
            };
            link.attempts += 1;
            debug!(
                "shard {}: connecting (attempt {})",
                link.entry.addr(),
                link.attempts
            );
            link.state = LinkState::Connecting { conn, started: now };
        }
    }

    fn find(&self, conn: ConnRef) -> Option<usize> {
        self.links.iter().position(|link| match link.state {
            LinkState::Connecting { conn: c, .. } | LinkState::Up { conn: c } => c == conn,
            LinkState::Waiting { .. } => false,
        })
    }

    /// `EVENT_CONNECT_SHARD`: the attempt on `conn` connected. Returns the
    /// link's `shards.cfg` entry, or `None` if `conn` is no attempt of ours.
    pub fn connected(&mut self, conn: ConnRef) -> Option<&ShardEntry> {
        let i = self.find(conn)?;
        let link = &mut self.links[i];
        link.connections += 1;
        match link.failing.take() {
            Some(f) => info!(
                "shard {}: connected (connection {}) after {} failed attempt(s)",
                link.entry.addr(),
                link.connections,
                f.attempts
            ),
            None => info!(
                "shard {}: connected (attempt {}, connection {})",
                link.entry.addr(),
                link.attempts,
                link.connections
            ),
        }
        link.state = LinkState::Up { conn };
        Some(&link.entry)
    }

    /// A connection of the shard pool ended (from `take_disconnected`): if it
    /// was a link's, the next attempt is scheduled. Returns the entry.
    pub fn gone(
        &mut self,
        conn: ConnRef,
        reason: &DisconnectReason,
        now: Instant,
    ) -> Option<&ShardEntry> {
        let retry = self.retry;
        let i = self.find(conn)?;
        if self.links[i].removed {
            info!(
                "shard {}: connection ended; removed from shards.cfg",
                self.links[i].entry.addr()
            );
            self.links.remove(i);
            return None;
        }
        let link = &mut self.links[i];
        let addr = link.entry.addr();
        link.state = match link.state {
            LinkState::Connecting { started, .. } => {
                Self::log_failure(&mut link.failing, &addr, reason, retry, now);
                LinkState::Waiting {
                    next_attempt: (started + retry).max(now),
                }
            }
            _ => {
                warn!(
                    "shard {addr}: connection {} lost: {reason}; reconnecting in {retry:?}",
                    link.connections
                );
                LinkState::Waiting {
                    next_attempt: now + retry,
                }
            }
        };
        Some(&link.entry)
    }

    /// A failed attempt, logged as an operator wants it: the first of a run
    /// is a warning, the next ones `debug` lines, and a warning summarizes
    /// the run every [`UNREACHABLE_SUMMARY_EVERY`].
    fn log_failure(
        failing: &mut Option<Failing>,
        addr: &str,
        reason: &DisconnectReason,
        retry: Duration,
        now: Instant,
    ) {
        match note_failure(failing, now) {
            FailureLine::First => warn!(
                "shard {addr}: cannot connect: {reason}; retrying every {retry:?} \
                 (a summary every {}s while it fails)",
                UNREACHABLE_SUMMARY_EVERY.as_secs()
            ),
            FailureLine::Summary { attempts, secs } => warn!(
                "shard {addr}: still unreachable after {attempts} attempts in {secs}s \
                 (last: {reason})"
            ),
            FailureLine::Quiet => debug!("shard {addr}: connect attempt failed: {reason}"),
        }
    }

    /// True if `conn` is the connection of a link a reload removed.
    pub fn is_removed(&self, conn: ConnRef) -> bool {
        self.find(conn).is_some_and(|i| self.links[i].removed)
    }

    /// The entry of the link `conn` is (connecting or up).
    pub fn entry(&self, conn: ConnRef) -> Option<&ShardEntry> {
        self.find(conn).map(|i| &self.links[i].entry)
    }

    /// The `HOST:PORT` of the link `conn` is, for log lines (the reference
    /// itself if it is none of ours).
    pub fn addr(&self, conn: ConnRef) -> String {
        self.entry(conn)
            .map_or_else(|| conn.to_string(), ShardEntry::addr)
    }

    /// Every link, as the metrics show it.
    pub fn views(&self) -> impl Iterator<Item = LinkView> + '_ {
        self.links.iter().map(|link| {
            let (conn, up) = match link.state {
                LinkState::Waiting { .. } => (None, false),
                LinkState::Connecting { conn, .. } => (Some(conn), false),
                LinkState::Up { conn } => (Some(conn), true),
            };
            LinkView {
                addr: link.entry.addr(),
                conn,
                up,
                attempts: link.attempts,
                connections: link.connections,
                removed: link.removed,
            }
        })
    }

    /// The connections that are up, in `shards.cfg` order.
    pub fn up(&self) -> impl Iterator<Item = ConnRef> + '_ {
        self.links.iter().filter_map(|link| match link.state {
            LinkState::Up { conn } => Some(conn),
            _ => None,
        })
    }
}

/// Which line a failed attempt gets.
#[derive(Debug, PartialEq, Eq)]
enum FailureLine {
    /// The first of a run.
    First,
    /// A summary of the run so far.
    Summary { attempts: u64, secs: u64 },
    /// Nothing above `debug`.
    Quiet,
}

/// Counts a failed attempt into the run, and says which line it gets.
fn note_failure(failing: &mut Option<Failing>, now: Instant) -> FailureLine {
    let Some(f) = failing else {
        *failing = Some(Failing {
            since: now,
            attempts: 1,
            next_summary: now + UNREACHABLE_SUMMARY_EVERY,
        });
        return FailureLine::First;
    };
    f.attempts += 1;
    if now < f.next_summary {
        return FailureLine::Quiet;
    }
    f.next_summary = now + UNREACHABLE_SUMMARY_EVERY;
    FailureLine::Summary {
        attempts: f.attempts,
        secs: (now - f.since).as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::com::{HupReason, PoolId};
    use crate::conn::{PoolCfg, PoolCmd};

    fn entry(port: u16) -> ShardEntry {
        ShardEntry {
            line: 1,
            host: "127.0.0.1".to_string(),
            port,
            key: None,
        }
    }

    fn pool(now: Instant) -> Pool<()> {
        Pool::new(
            PoolId::Shard,
            &PoolCfg {
                max_conns: 2,
                out_buf_size: 1024,
                idle_timeout: None,
                connect_timeout: Duration::from_secs(2),
            },
            now,
        )
    }

    #[test]
    fn a_failed_attempt_is_retried_two_seconds_after_it_started_a_lost_link_after_the_loss() {
        let t0 = Instant::now();
        let retry = Duration::from_secs(2);
        let mut links = ShardLinks::new(&[entry(7701)], retry, t0);
        let mut pool = pool(t0);
        assert_eq!(links.next_timer(), Some(t0));
        links.connect_due(&mut pool, t0);
        let Some(PoolCmd::Connect { conn, .. }) = pool.take_commands().next() else {
            panic!("no connect");
        };
        assert_eq!(links.next_timer(), None, "an attempt is in flight");
        // Refused after 0.3 s: the next attempt is 2 s after the first began.
        pool.hup(
            conn,
            HupReason::ConnectFailed(std::io::ErrorKind::ConnectionRefused),
        );
        let t1 = t0 + Duration::from_millis(300);
        for gone in pool.take_disconnected() {
            links.gone(gone.conn, &gone.reason, t1);
        }
        assert_eq!(links.next_timer(), Some(t0 + retry));
        links.connect_due(&mut pool, t0 + Duration::from_millis(1999));
        assert!(pool.take_commands().next().is_none(), "not yet");
        let t2 = t0 + retry;
        links.connect_due(&mut pool, t2);
        let Some(PoolCmd::Connect { conn, .. }) = pool.take_commands().next() else {
            panic!("no second attempt");
        };
        assert!(pool.connected(conn, "127.0.0.1:7701".parse().unwrap(), t2));
        assert_eq!(
            links.connected(conn).map(ShardEntry::addr).as_deref(),
            Some("127.0.0.1:7701")
        );
        assert_eq!(links.up().collect::<Vec<_>>(), [conn]);
        // Lost 10 s later: reconnect 2 s after the loss.
        let t3 = t2 + Duration::from_secs(10);
        pool.hup(conn, HupReason::Eof);
        for gone in pool.take_disconnected() {
            links.gone(gone.conn, &gone.reason, t3);
        }
        assert_eq!(links.next_timer(), Some(t3 + retry));
        assert_eq!(links.up().count(), 0);
    }

    #[test]
    fn an_unreachable_shard_warns_once_then_summarizes_once_a_minute() {
        let t0 = Instant::now();
        let mut failing = None;
        let lines: Vec<FailureLine> = (0..61u64)
            .map(|i| note_failure(&mut failing, t0 + Duration::from_secs(2 * i)))
            .collect();
        assert_eq!(lines[0], FailureLine::First);
        let summaries: Vec<(usize, &FailureLine)> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l, FailureLine::Summary { .. }))
            .collect();
        assert_eq!(
            summaries,
            [
                (
                    30,
                    &FailureLine::Summary {
                        attempts: 31,
                        secs: 60
                    }
                ),
                (
                    60,
                    &FailureLine::Summary {
                        attempts: 61,
                        secs: 120
                    }
                ),
            ]
        );
        assert_eq!(
            lines.iter().filter(|l| **l == FailureLine::Quiet).count(),
            58
        );
    }
}
