//! The proxy's reservations (thesis §3.8.3 "Forming connections with player
//! clients", `shard_check_client_ip`, `shard_check_client_auth_proof`; §3.8.5
//! "Timing clients out"): the slots shards reserve for players about to
//! connect, with their tokens, and the addresses they announce.
//!
//! One owner for everything that must change together: the reservations of
//! each shard link by socket id, the index by account name a proof is looked
//! up with, and the announced addresses with how many reservations name each:
//! `reserve`, `check` and `claim` (a player's proof), `release`,
//! `release_link`. Every way a reservation ends (claimed by its player, closed by its shard,
//! expired, replaced by a newer login, its link gone) goes through one
//! removal, so the index and the counts cannot drift apart; counts cannot
//! wrap, and in debug builds every change is followed by a check of the whole
//! table against them.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use crate::com::ConnRef;
use crate::cryptchan::{TOKEN_BYTES, memcmp_ct, memzero};

use super::limits::AddrKey;

/// A player a shard announced (`TPROXY_MSG_OPENED_SOCKET`): what the auth
/// proof is checked against. The token is wiped when the reservation goes.
pub struct Reservation {
    /// The account's name (what the proof names).
    pub account_name: String,
    /// The account.
    pub account_id: u64,
    /// The login session.
    pub login_session_id: u32,
    /// Where the player will connect from.
    pub ip: IpAddr,
    /// The token.
    pub token: [u8; TOKEN_BYTES],
    /// Released, and the shard told, if unclaimed by then.
    pub expires: Instant,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        memzero(&mut self.token);
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("account_name", &self.account_name)
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

/// Why an auth proof does not claim a reservation; the text is the log's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// No reservation of that account on that shard.
    NoReservation,
    /// The token does not match.
    WrongToken,
    /// The reservation's time is up.
    Expired,
    /// The proof comes from another address than the shard announced.
    WrongAddress,
}

impl ClaimError {
    /// What the log says.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimError::NoReservation => "no reservation for this account",
            ClaimError::WrongToken => "wrong token",
            ClaimError::Expired => "the reservation expired",
            ClaimError::WrongAddress => {
                "connecting from another address than the one the shard announced"
            }
        }
    }
}

/// A reservation whose player's proof checked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// The socket id the shard chose.
    pub socket_id: u32,
    /// The account.
    pub account_id: u64,
}

/// One shard link's reservations.
#[derive(Debug, Default)]
struct LinkTable {
    by_socket: HashMap<u32, Reservation>,
    /// Reservations by account name: a player proves an account, not a
    /// socket id.
    by_account: HashMap<String, u32>,
}

/// Every reservation of every shard link (see the module docs).
#[derive(Debug, Default)]
pub struct Reservations {
    links: HashMap<ConnRef, LinkTable>,
    /// Announced addresses (IPv4-mapped IPv6 as IPv4), with how many
    /// reservations name each.
    announced: HashMap<IpAddr, u32>,
    /// The same counts by the key the per-address limits use (IPv6 by /64).
    by_addr_key: HashMap<AddrKey, u32>,
    /// Reservations held, all links together.
    len: usize,
}

impl Reservations {
    /// Reservations held, all links together.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no reservation is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if `link` holds a reservation under `socket_id`.
    pub fn contains(&self, link: ConnRef, socket_id: u32) -> bool {
        self.links
            .get(&link)
            .is_some_and(|t| t.by_socket.contains_key(&socket_id))
    }

    /// True if some reservation announces `ip` (thesis
    /// `shard_check_client_ip`; IPv4-mapped IPv6 counts as IPv4).
    pub fn is_announced(&self, ip: IpAddr) -> bool {
        self.announced.contains_key(&ip.to_canonical())
    }

    /// How many reservations announce an address counted as `ip` is by the
    /// per-address limits (the same IPv4 address, the same IPv6 /64).
    pub fn count_for(&self, ip: IpAddr) -> u32 {
        self.by_addr_key.get(&AddrKey::of(ip)).copied().unwrap_or(0)
    }

    /// True if `link` holds a reservation of `account_name` (a new one
    /// would replace it).
    pub fn holds_account(&self, link: ConnRef, account_name: &str) -> bool {
        self.links
            .get(&link)
            .is_some_and(|t| t.by_account.contains_key(account_name))
    }

    /// Reserves `socket_id` on `link`. A reservation of the same account
    /// on that link is replaced: its socket id is returned, for the shard to
    /// be told. The caller has checked capacity and that the socket id is
    /// free on the link.
    pub fn reserve(&mut self, link: ConnRef, socket_id: u32, r: Reservation) -> Option<u32> {
        debug_assert!(
            !self.contains(link, socket_id),
            "socket id already reserved"
        );
        let replaced = self
            .links
            .get(&link)
            .and_then(|t| t.by_account.get(&r.account_name).copied());
        if let Some(old) = replaced {
            self.remove(link, old);
        }
        let before = self.len;
        let count = self.announced.entry(r.ip.to_canonical()).or_insert(0);
        *count = count.saturating_add(1);
        let count = self.by_addr_key.entry(AddrKey::of(r.ip)).or_insert(0);
        *count = count.saturating_add(1);
        let table = self.links.entry(link).or_default();
        table.by_account.insert(r.account_name.clone(), socket_id);
        table.by_socket.insert(socket_id, r);
        self.len = self.len.saturating_add(1);
        debug_assert_eq!(self.len, before + 1);
        debug_assert!(self.consistent());
        replaced
    }

    /// Checks an auth proof against the reservations of `link` (thesis
    /// `shard_check_client_auth_proof`): the reservation by account name,
    /// the 64-byte token in constant time, its deadline, and, if `from` is
    /// given, the address the shard announced. Changes nothing: the caller
    /// [claims](Reservations::claim) the reservation once the shard is told.
    pub fn check(
        &self,
        link: ConnRef,
        account_name: &str,
        token: &[u8; TOKEN_BYTES],
        from: Option<IpAddr>,
        now: Instant,
    ) -> Result<Claimed, ClaimError> {
        let table = self.links.get(&link).ok_or(ClaimError::NoReservation)?;
        let socket_id = *table
            .by_account
            .get(account_name)
            .ok_or(ClaimError::NoReservation)?;
        let r = table
            .by_socket
            .get(&socket_id)
            .ok_or(ClaimError::NoReservation)?;
        if !memcmp_ct(&r.token, token) {
            return Err(ClaimError::WrongToken);
        }
        if now >= r.expires {
            return Err(ClaimError::Expired);
        }
        if from.is_some_and(|ip| ip.to_canonical() != r.ip.to_canonical()) {
            return Err(ClaimError::WrongAddress);
        }
        Ok(Claimed {
            socket_id,
            account_id: r.account_id,
        })
    }

    /// Uses up reservation `socket_id` of `link` after its proof checked out
    /// ([`Reservations::check`]), so its token works once. False if there
    /// is none.
    pub fn claim(&mut self, link: ConnRef, socket_id: u32) -> bool {
        self.remove(link, socket_id).is_some()
    }

    /// Releases reservation `socket_id` of `link` (its shard closed it, or it
    /// expired). False if there is none.
    pub fn release(&mut self, link: ConnRef, socket_id: u32) -> bool {
        self.remove(link, socket_id).is_some()
    }

    /// Releases every reservation of a link that is gone; returns how many.
    pub fn release_link(&mut self, link: ConnRef) -> usize {
        let Some(table) = self.links.remove(&link) else {
            return 0;
        };
        let n = table.by_socket.len();
        for r in table.by_socket.values() {
            self.forget_ip(r.ip);
        }
        debug_assert!(self.len >= n, "more reservations released than held");
        self.len = self.len.saturating_sub(n);
        debug_assert!(self.consistent());
        n
    }

    /// The reservations whose time is up at `now`, as (link, socket id), into
    /// `into` (emptied first); the caller releases them and tells the shards.
    pub fn expired(&self, now: Instant, into: &mut Vec<(ConnRef, u32)>) {
        into.clear();
        for (&link, table) in &self.links {
            into.extend(
                table
                    .by_socket
                    .iter()
                    .filter(|(_, r)| now >= r.expires)
                    .map(|(&socket_id, _)| (link, socket_id)),
            );
        }
    }

    /// The one way a reservation ends: out of both indexes, its address's
    /// count down by one.
    fn remove(&mut self, link: ConnRef, socket_id: u32) -> Option<Reservation> {
        let table = self.links.get_mut(&link)?;
        let r = table.by_socket.remove(&socket_id)?;
        if table.by_account.get(&r.account_name) == Some(&socket_id) {
            table.by_account.remove(&r.account_name);
        }
        if table.by_socket.is_empty() {
            self.links.remove(&link);
        }
        self.forget_ip(r.ip);
        debug_assert!(self.len > 0, "a reservation removed from an empty table");
        self.len = self.len.saturating_sub(1);
        debug_assert!(self.consistent());
        Some(r)
    }

    fn forget_ip(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let Some(n) = self.announced.get_mut(&ip) else {
            debug_assert!(false, "an announced address without a count");
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.announced.remove(&ip);
        }
        let key = AddrKey::of(ip);
        let Some(n) = self.by_addr_key.get_mut(&key) else {
            debug_assert!(false, "an announced address without a count by key");
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.by_addr_key.remove(&key);
        }
    }

    /// The whole table agrees with the counts (debug builds check it after
    /// every change while the table is small, so that a debug build under
    /// load does not go quadratic).
    fn consistent(&self) -> bool {
        if self.len > 1024 {
            return true;
        }
        let held: usize = self.links.values().map(|t| t.by_socket.len()).sum();
        let mut ips: HashMap<IpAddr, u32> = HashMap::new();
        let mut keys: HashMap<AddrKey, u32> = HashMap::new();
        for t in self.links.values() {
            for (&socket_id, r) in &t.by_socket {
                *ips.entry(r.ip.to_canonical()).or_insert(0) += 1;
                *keys.entry(AddrKey::of(r.ip)).or_insert(0) += 1;
                if t.by_account.get(&r.account_name) != Some(&socket_id) {
                    return false;
                }
            }
            if t.by_account.len() != t.by_socket.len() {
                return false;
            }
        }
        held == self.len && ips == self.announced && keys == self.by_addr_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::com::PoolId;
    use std::time::Duration;

    fn link(index: u32) -> ConnRef {
        ConnRef {
            pool: PoolId::Shard,
            index,
            id: 1,
        }
    }

    fn r(name: &str, ip: &str, expires: Instant) -> Reservation {
        Reservation {
            account_name: name.to_string(),
            account_id: 7,
            login_session_id: 1,
            ip: ip.parse().unwrap(),
            token: [name.len() as u8; TOKEN_BYTES],
            expires,
        }
    }

    #[test]
    fn a_check_tests_token_time_and_address_and_a_claim_uses_the_reservation_up() {
        let now = Instant::now();
        let later = now + Duration::from_secs(30);
        let mut rs = Reservations::default();
        assert_eq!(rs.reserve(link(0), 10, r("ann", "10.0.0.1", later)), None);
        assert!(rs.is_announced("10.0.0.1".parse().unwrap()));
        assert!(
            rs.is_announced("::ffff:10.0.0.1".parse().unwrap()),
            "IPv4-mapped"
        );
        let token = [3; TOKEN_BYTES];
        let from = Some("10.0.0.1".parse().unwrap());
        assert_eq!(
            rs.check(link(1), "ann", &token, from, now),
            Err(ClaimError::NoReservation)
        );
        assert_eq!(
            rs.check(link(0), "bob", &token, from, now),
            Err(ClaimError::NoReservation)
        );
        assert_eq!(
            rs.check(link(0), "ann", &[4; TOKEN_BYTES], from, now),
            Err(ClaimError::WrongToken)
        );
        let elsewhere = Some("10.0.0.2".parse().unwrap());
        assert_eq!(
            rs.check(link(0), "ann", &token, elsewhere, now),
            Err(ClaimError::WrongAddress)
        );
        assert_eq!(
            rs.check(link(0), "ann", &token, from, later),
            Err(ClaimError::Expired)
        );
        assert_eq!(rs.len(), 1, "failed checks change nothing");
        let found = rs
            .check(link(0), "ann", &token, elsewhere.and(None), now)
            .unwrap();
        assert_eq!(found.socket_id, 10);
        assert_eq!(rs.len(), 1, "a check changes nothing");
        assert!(rs.claim(link(0), found.socket_id));
        assert_eq!(
            rs.check(link(0), "ann", &token, from, now),
            Err(ClaimError::NoReservation),
            "a token works once"
        );
        assert!(!rs.claim(link(0), found.socket_id));
        assert!(rs.is_empty() && !rs.is_announced("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn every_way_out_keeps_the_counts_in_step() {
        let now = Instant::now();
        let soon = now + Duration::from_secs(1);
        let later = now + Duration::from_secs(30);
        let mut rs = Reservations::default();
        rs.reserve(link(0), 1, r("a", "10.0.0.1", soon));
        rs.reserve(link(0), 2, r("b", "10.0.0.1", later));
        rs.reserve(link(1), 1, r("a", "10.0.0.2", later));
        // A newer login of the same account on the same link replaces the old.
        assert_eq!(rs.reserve(link(0), 3, r("b", "10.0.0.3", later)), Some(2));
        assert_eq!(rs.len(), 3);
        let mut expired = Vec::new();
        rs.expired(soon, &mut expired);
        assert_eq!(expired, [(link(0), 1)]);
        assert!(rs.release(link(0), 1));
        assert!(!rs.release(link(0), 1), "released once");
        assert!(!rs.is_announced("10.0.0.1".parse().unwrap()));
        assert_eq!(rs.release_link(link(1)), 1);
        assert_eq!(rs.release_link(link(1)), 0);
        assert_eq!(rs.len(), 1);
        assert!(rs.contains(link(0), 3));
        assert!(rs.is_announced("10.0.0.3".parse().unwrap()));
        assert!(rs.consistent());
    }
}
