//! The proxy's limits under attack (port decision: the thesis names the
//! need, §2.1.1 "DDoS", and §3.8.5 plans "timing clients out"; the anchors
//! are Gate's `addrquota` and `packetlimiter`, HAProxy's stick tables and
//! sozu's per-IP cap, in `docs/configuration.md`):
//!
//! - [`TokenBucket`]: a rate with a burst, in integer milli-tokens (no
//!   floating point, no drift), on the main thread's clock;
//! - [`AddrTable`]: per client address (IPv4 by address, IPv6 by /64, which
//!   is one subscriber), the connections open now and a bucket of new
//!   connections; bounded, and pruned of entries that say nothing.
//!
//! Both are plain data on the main thread: no lock, no clock of their own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Milli-tokens per token: the bucket's fixed-point scale.
const MILLI: u64 = 1000;

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Full
/// when made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Milli-tokens available at `at`.
    level: u64,
    at: Instant,
}

/// A bucket's rate and burst, from `proxy.cfg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_s: u64,
    /// Most tokens saved up (and the level of a new bucket).
    pub burst: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            level: rate.burst.saturating_mul(MILLI),
            at: now,
        }
    }

    /// Credits the time since the last refill. Only the time the credited
    /// milli-tokens stand for is used up: the rest carries over, so calls
    /// closer together than a milli-token's worth of time still add up.
    fn refill(&mut self, rate: Rate, now: Instant) {
        let per_s = u128::from(rate.per_s.max(1));
        let elapsed_ns = now.saturating_duration_since(self.at).as_nanos();
        // per_s tokens a second = per_s milli-tokens a millisecond.
        let add = elapsed_ns * per_s / 1_000_000;
        let cap = rate.burst.saturating_mul(MILLI);
        let room = u128::from(cap.saturating_sub(self.level));
        if add >= room {
            self.level = cap;
            self.at = self.at.max(now);
            return;
        }
        self.level += add as u64;
        let used_ns = add * 1_000_000 / per_s;
        self.at += Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
    }

    /// Takes `n` tokens if there are that many; false (and nothing taken)
    /// otherwise.
    pub fn take(&mut self, n: u64, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        let cost = n.saturating_mul(MILLI);
        if self.level < cost {
            return false;
        }
        self.level -= cost;
        true
    }

    /// True if the bucket has filled up again (it holds no information).
    pub fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.level >= rate.burst.saturating_mul(MILLI)
    }
}

/// The address a limit counts: an IPv4 address (an IPv4-mapped IPv6 one
/// counts as its IPv4 address), or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrKey {
    /// One IPv4 address.
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl std::fmt::Display for AddrKey {
    /// `203.0.113.7`, or `2001:db8:1:2::/64`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            AddrKey::V4(v4) => write!(f, "{}", std::net::Ipv4Addr::from(v4)),
            AddrKey::V6(prefix) => {
                let v6 = std::net::Ipv6Addr::from(u128::from(prefix) << 64);
                write!(f, "{v6}/64")
            }
        }
    }
}

impl AddrKey {
    /// The key `ip` counts under.
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => AddrKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => AddrKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// One address's entry.
#[derive(Clone, Copy, Debug)]
struct AddrEntry {
    /// Connections counted under the address now.
    conns: u32,
    /// New connections.
    bucket: TokenBucket,
}

/// The limits an [`AddrTable`] applies, from `proxy.cfg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrLimits {
    /// `client.max_conns_per_addr`.
    pub conns_max: u32,
    /// `client.new_conns_per_addr_per_s`, `client.new_conns_per_addr_burst`.
    pub new_conns: Rate,
    /// `client.addr_table_max`.
    pub entries_max: usize,
}

/// Why an address may not open another connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrRefusal {
    /// It has `conns_max` open.
    TooManyConns,
    /// Its bucket of new connections is empty.
    TooFast,
    /// The table is full of addresses with connections or recent ones.
    TableFull,
}

/// Bytes of one slot of the table's hash map: the key and the entry (a test
/// checks it). With hashbrown's control byte, a map at most 7/8 full that
/// doubles when it is, an entry costs 55 to 110 bytes: at most about 7 MiB
/// at the default `client.addr_table_max` of 65,536.
pub const ADDR_ENTRY_BYTES: usize = 48;

/// Connections and new-connection rates by client address, bounded by
/// `entries_max`. An entry lives while the address has a connection, and
/// after its last one until its bucket is full again (then it is the same
/// as no entry, and [`AddrTable::prune`] removes it).
#[derive(Debug)]
pub struct AddrTable {
    limits: AddrLimits,
    entries: HashMap<AddrKey, AddrEntry>,
}

impl AddrTable {
    /// An empty table.
    pub fn new(limits: AddrLimits) -> AddrTable {
        AddrTable {
            limits,
            entries: HashMap::new(),
        }
    }

    /// Entries now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every address with connections open now, and how many.
    pub fn conns_by_addr(&self) -> impl Iterator<Item = (AddrKey, u32)> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| e.conns > 0)
            .map(|(k, e)| (*k, e.conns))
    }

    /// New limits (a reload), from the next admission; counts are kept.
    pub fn set_limits(&mut self, limits: AddrLimits) {
        self.limits = limits;
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Connections counted under `key` now.
    pub fn conns(&self, key: AddrKey) -> u32 {
        self.entries.get(&key).map_or(0, |e| e.conns)
    }

    /// A new connection from `key`: counted if the address is under its
    /// limits (the attempt takes a token either way, as HAProxy's
    /// `conn_rate` counts refused connections too), refused otherwise.
    /// Release it with [`AddrTable::release`].
    pub fn admit(&mut self, key: AddrKey, now: Instant) -> Result<(), AddrRefusal> {
        let limits = self.limits;
        // Full: refused at once. The table is pruned once a second (the
        // tick), not here, so a flood of new addresses costs no walk of it.
        if !self.entries.contains_key(&key) && self.entries.len() >= limits.entries_max {
            return Err(AddrRefusal::TableFull);
        }
        let entry = self.entries.entry(key).or_insert(AddrEntry {
            conns: 0,
            bucket: TokenBucket::full(limits.new_conns, now),
        });
        if !entry.bucket.take(1, limits.new_conns, now) {
            return Err(AddrRefusal::TooFast);
        }
        if entry.conns >= limits.conns_max {
            return Err(AddrRefusal::TooManyConns);
        }
        entry.conns += 1;
        Ok(())
    }

    /// A connection [`AddrTable::admit`] counted has ended.
    pub fn release(&mut self, key: AddrKey) {
        match self.entries.get_mut(&key) {
            Some(entry) if entry.conns > 0 => entry.conns -= 1,
            _ => debug_assert!(false, "released an address never admitted: {key:?}"),
        }
    }

    /// Removes the entries with no connection whose bucket is full again.
    pub fn prune(&mut self, now: Instant) {
        let rate = self.limits.new_conns;
        self.entries
            .retain(|_, e| e.conns > 0 || !e.bucket.is_full(rate, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_entry_is_as_large_as_the_docs_say() {
        assert_eq!(
            std::mem::size_of::<(AddrKey, AddrEntry)>(),
            ADDR_ENTRY_BYTES
        );
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let rate = Rate { per_s: 5, burst: 3 };
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert!((0..3).all(|_| b.take(1, rate, t0)));
        assert!(!b.take(1, rate, t0), "the burst is spent");
        assert!(!b.take(1, rate, t0 + 199 * MS), "one token takes 200 ms");
        assert!(b.take(1, rate, t0 + 200 * MS));
        // Saved up to the burst, no more.
        assert!(b.is_full(rate, t0 + 10_000 * MS));
        assert!((0..3).all(|_| b.take(1, rate, t0 + 10_000 * MS)));
        assert!(!b.take(1, rate, t0 + 10_000 * MS));
        // A clock that steps back takes nothing and gives nothing.
        assert!(!b.take(1, rate, t0));
        assert!(!b.take(4, Rate { per_s: 1, burst: 3 }, t0 + 20_000 * MS));
    }

    #[test]
    fn calls_closer_than_a_milli_token_still_refill() {
        // 2,000 a second: attempts every 250 µs (4,000 a second) for 5 s
        // must get the burst and then 2,000 a second, 12,000 in all, not
        // the burst alone (a refill that dropped the time under a
        // millisecond at each call gave 2,000).
        let rate = Rate {
            per_s: 2000,
            burst: 2000,
        };
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        let admitted = (0..20_000u64)
            .filter(|i| b.take(1, rate, t0 + Duration::from_micros(250 * i)))
            .count();
        assert!((11_998..=12_001).contains(&admitted), "{admitted}");
        // And a slow rate, many calls a millisecond apart from 0.1 ms.
        let slow = Rate { per_s: 5, burst: 1 };
        let mut b = TokenBucket::full(slow, t0);
        let admitted = (0..100_000u64)
            .filter(|i| b.take(1, slow, t0 + Duration::from_micros(100 * i)))
            .count();
        assert!(
            (50..=51).contains(&admitted),
            "{admitted} in 10 s at 5 a second"
        );
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(AddrKey::of(a), AddrKey::of(b));
        assert_ne!(AddrKey::of(a), AddrKey::of(c));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(AddrKey::of(v4), AddrKey::of(mapped));
    }

    fn table(entries_max: usize) -> AddrTable {
        AddrTable::new(AddrLimits {
            conns_max: 2,
            new_conns: Rate { per_s: 1, burst: 3 },
            entries_max,
        })
    }

    #[test]
    fn an_address_is_held_to_its_concurrent_cap_and_its_rate() {
        let t0 = Instant::now();
        let mut t = table(16);
        let k = AddrKey::of("10.0.0.1".parse().unwrap());
        assert_eq!(t.admit(k, t0), Ok(()));
        assert_eq!(t.admit(k, t0), Ok(()));
        assert_eq!(t.admit(k, t0), Err(AddrRefusal::TooManyConns));
        t.release(k);
        // The refused attempt took the last token of the burst.
        assert_eq!(t.admit(k, t0), Err(AddrRefusal::TooFast));
        assert_eq!(t.admit(k, t0 + 1000 * MS), Ok(()));
        assert_eq!(t.conns(k), 2);
        // Another address is not affected.
        let other = AddrKey::of("10.0.0.2".parse().unwrap());
        assert_eq!(t.admit(other, t0), Ok(()));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_addresses_that_say_nothing() {
        let t0 = Instant::now();
        let mut t = table(2);
        let k = |i: u8| AddrKey::of(IpAddr::from([10, 0, 0, i]));
        t.admit(k(1), t0).unwrap();
        t.admit(k(2), t0).unwrap();
        assert_eq!(t.admit(k(3), t0), Err(AddrRefusal::TableFull));
        // Address 1 leaves; its entry stays until its bucket has refilled
        // the token it gave (1 s), and goes at the next prune after that.
        t.release(k(1));
        t.prune(t0 + 500 * MS);
        assert_eq!(t.admit(k(3), t0 + 500 * MS), Err(AddrRefusal::TableFull));
        assert_eq!(t.admit(k(3), t0 + 1000 * MS), Err(AddrRefusal::TableFull));
        t.prune(t0 + 1000 * MS);
        assert_eq!(t.admit(k(3), t0 + 1000 * MS), Ok(()));
        assert_eq!(t.len(), 2);
        assert_eq!(t.conns(k(1)), 0);
    }
}
