//! Connections the proxy refused or cut off, counted by class. Under attack a refusal
//! happens thousands of times a second, so each is a `debug` line at most;
//! what an operator reads is one summary line per class per
//! [`SUMMARY_EVERY`] (port decision: the thesis's proxy logs nothing of
//! refusals; HAProxy and sozu count them per reason). Extends the thesis's
//! `shard_check_client_ip` (§3.8.3), which refuses silently.

use std::time::Duration;

/// How often the classes refused since the last summary are logged.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Why the proxy refused or cut off a connection: every class of
/// `make attack` has one (`docs/attack.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No shard announced its effective address
    /// (`client.require_announced_ip`, thesis `shard_check_client_ip`).
    NotAnnounced,
    /// It came from outside `client.trusted_forwarders` to a listener that
    /// requires the PROXY protocol.
    UntrustedForwarder,
    /// Its PROXY protocol header was malformed, or of a kind not accepted.
    BadProxyHeader,
    /// No complete PROXY protocol header within
    /// `client.proxy_header_timeout_ms`.
    ProxyHeaderTimeout,
    /// Connections not yet authenticated held their share of the slots
    /// (`client.unauthenticated_max_pct`) and its address was not announced.
    UnauthenticatedFull,
    /// Its address had `client.max_conns_per_addr` connections open.
    AddrConns,
    /// Its address opened new connections faster than
    /// `client.new_conns_per_addr_per_s` allows.
    AddrRate,
    /// The per-address table was full (`client.addr_table_max`).
    AddrTableFull,
    /// More handshakes than `client.handshakes_per_s` allows, all clients
    /// together.
    HandshakeRate,
    /// The handshake or the auth proof did not finish by
    /// `client.handshake_timeout_ms`.
    HandshakeTimeout,
    /// Bytes that are not the handshake, or a frame that failed before the
    /// proof (a bad first byte, a bad MAC, an oversized length).
    BadHandshake,
    /// An auth proof that did not match a reservation.
    AuthFailed,
    /// An authenticated player's frame that failed its MAC or the filter.
    Filtered,
    /// An authenticated player over its message or byte budget
    /// (`client.player_msgs_per_s`, `client.player_bytes_per_s`).
    OverBudget,
    /// An authenticated player whose shard link's output was backed up.
    LinkBacklogged,
    /// A reservation refused: its address already had
    /// `client.max_conns_per_addr` reservations (squatting).
    ReservationsPerAddr,
    /// An OTC path that broke the protocol: a malformed frame, a port off
    /// `otc.allowed_ports`, data for a session it is not attached to.
    OtcProtocol,
    /// An OTC path that named a session live for another address (a
    /// guessed or colliding session id).
    OtcForeignSession,
    /// An OTC session refused by a limit (`otc.max_sessions`,
    /// `otc.sessions_per_addr_max`, `otc.paths_per_session_max`,
    /// `otc.sessions_per_path_max`): the path is told its end.
    OtcSessionLimit,
    /// An OTC session ended by a bound: its reorder window or bytes, its
    /// unacknowledged bytes, its budgets, its game connection's output.
    OtcSessionBound,
    /// An OTC path over `otc.path_frames_per_s`.
    OtcPathBudget,
}

impl Refusal {
    /// Every class, in the order of the summary.
    pub const ALL: [Refusal; 21] = [
        Refusal::NotAnnounced,
        Refusal::UntrustedForwarder,
        Refusal::BadProxyHeader,
        Refusal::ProxyHeaderTimeout,
        Refusal::UnauthenticatedFull,
        Refusal::AddrConns,
        Refusal::AddrRate,
        Refusal::AddrTableFull,
        Refusal::HandshakeRate,
        Refusal::HandshakeTimeout,
        Refusal::BadHandshake,
        Refusal::AuthFailed,
        Refusal::Filtered,
        Refusal::OverBudget,
        Refusal::LinkBacklogged,
        Refusal::ReservationsPerAddr,
        Refusal::OtcProtocol,
        Refusal::OtcForeignSession,
        Refusal::OtcSessionLimit,
        Refusal::OtcSessionBound,
        Refusal::OtcPathBudget,
    ];

    /// The class's name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotAnnounced => "not_announced",
            Refusal::UntrustedForwarder => "untrusted_forwarder",
            Refusal::BadProxyHeader => "bad_proxy_header",
            Refusal::ProxyHeaderTimeout => "proxy_header_timeout",
            Refusal::UnauthenticatedFull => "unauthenticated_full",
            Refusal::AddrConns => "addr_conns",
            Refusal::AddrRate => "addr_rate",
            Refusal::AddrTableFull => "addr_table_full",
            Refusal::HandshakeRate => "handshake_rate",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::BadHandshake => "bad_handshake",
            Refusal::AuthFailed => "auth_failed",
            Refusal::Filtered => "filtered",
            Refusal::OverBudget => "over_budget",
            Refusal::LinkBacklogged => "link_backlogged",
            Refusal::ReservationsPerAddr => "reservations_per_addr",
            Refusal::OtcProtocol => "otc_protocol",
            Refusal::OtcForeignSession => "otc_foreign_session",
            Refusal::OtcSessionLimit => "otc_session_limit",
            Refusal::OtcSessionBound => "otc_session_bound",
            Refusal::OtcPathBudget => "otc_path_budget",
        }
    }

    /// What the summary line says of connections of this class.
    fn summary(self) -> &'static str {
        match self {
            Refusal::NotAnnounced => "refused: from addresses no shard announced",
            Refusal::UntrustedForwarder => {
                "refused: from outside client.trusted_forwarders (PROXY protocol required)"
            }
            Refusal::BadProxyHeader => "refused: a malformed or refused PROXY protocol header",
            Refusal::ProxyHeaderTimeout => "cut off: no PROXY protocol header in time",
            Refusal::UnauthenticatedFull => {
                "refused: unauthenticated connections held their share of the slots"
            }
            Refusal::AddrConns => "refused: client.max_conns_per_addr reached",
            Refusal::AddrRate => "refused: new connections too fast from one address",
            Refusal::AddrTableFull => "refused: the per-address table was full",
            Refusal::HandshakeRate => "refused: client.handshakes_per_s reached",
            Refusal::HandshakeTimeout => "cut off: no valid auth proof before the deadline",
            Refusal::BadHandshake => "cut off: bytes that are not the handshake",
            Refusal::AuthFailed => "cut off: an auth proof that matched no reservation",
            Refusal::Filtered => "cut off: a frame that failed its MAC or the filter",
            Refusal::OverBudget => "cut off: a player over its message or byte budget",
            Refusal::LinkBacklogged => "cut off: a player whose shard link was backed up",
            Refusal::ReservationsPerAddr => {
                "refused (reservations): client.max_conns_per_addr reached by one address's logins"
            }
            Refusal::OtcProtocol => "cut off (OTC): a path that broke the protocol",
            Refusal::OtcForeignSession => {
                "cut off (OTC): a path that named another address's session"
            }
            Refusal::OtcSessionLimit => "refused (OTC sessions): a session limit reached",
            Refusal::OtcSessionBound => "ended (OTC sessions): a session past one of its bounds",
            Refusal::OtcPathBudget => "cut off (OTC): a path over otc.path_frames_per_s",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Refusals by class: in all, and since the last summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    total: [u64; Refusal::ALL.len()],
    since_summary: [u64; Refusal::ALL.len()],
}

impl Refusals {
    /// Counts one refusal.
    pub fn count(&mut self, class: Refusal) {
        self.total[class.index()] += 1;
        self.since_summary[class.index()] += 1;
    }

    /// Refusals of `class` so far.
    pub fn total(&self, class: Refusal) -> u64 {
        self.total[class.index()]
    }

    /// Refusals of every class so far.
    pub fn sum(&self) -> u64 {
        self.total.iter().sum()
    }

    /// The summary lines for the classes refused since the last call, which
    /// starts a new interval.
    pub fn take_summary(&mut self) -> impl Iterator<Item = String> + '_ {
        let since = std::mem::take(&mut self.since_summary);
        Refusal::ALL.into_iter().filter_map(move |class| {
            let n = since[class.index()];
            (n > 0).then(|| {
                format!(
                    "{n} connection(s) {} ({}) in the last {} s",
                    class.summary(),
                    class.as_str(),
                    SUMMARY_EVERY.as_secs()
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_class_and_summarizes_only_what_happened_since() {
        let mut r = Refusals::default();
        r.count(Refusal::BadProxyHeader);
        r.count(Refusal::BadProxyHeader);
        r.count(Refusal::NotAnnounced);
        let lines: Vec<String> = r.take_summary().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("1 connection(s) refused: from addresses"));
        assert!(lines[1].starts_with("2 connection(s) refused: a malformed"));
        assert!(lines[1].contains("(bad_proxy_header)"));
        assert_eq!(r.take_summary().count(), 0);
        assert_eq!(r.total(Refusal::BadProxyHeader), 2);
        assert_eq!(r.sum(), 3);
    }
}
