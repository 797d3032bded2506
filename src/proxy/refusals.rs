//! Connections the proxy refused, counted by class. Under attack a refusal
//! happens thousands of times a second, so each is a `debug` line at most;
//! what an operator reads is one summary line per class per
//! [`SUMMARY_EVERY`] (port decision: the thesis's proxy logs nothing of
//! refusals; HAProxy and sozu count them per reason). Extends the thesis's
//! `shard_check_client_ip` (§3.8.3), which refuses silently.

use std::time::Duration;

/// How often the classes refused since the last summary are logged.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Why a connection was refused before it played.
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
}

impl Refusal {
    /// Every class, in the order of the summary.
    pub const ALL: [Refusal; 4] = [
        Refusal::NotAnnounced,
        Refusal::UntrustedForwarder,
        Refusal::BadProxyHeader,
        Refusal::ProxyHeaderTimeout,
    ];

    /// The class's name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotAnnounced => "not_announced",
            Refusal::UntrustedForwarder => "untrusted_forwarder",
            Refusal::BadProxyHeader => "bad_proxy_header",
            Refusal::ProxyHeaderTimeout => "proxy_header_timeout",
        }
    }

    /// What the summary line says of connections of this class.
    fn summary(self) -> &'static str {
        match self {
            Refusal::NotAnnounced => "from addresses no shard announced",
            Refusal::UntrustedForwarder => {
                "from outside client.trusted_forwarders (PROXY protocol required)"
            }
            Refusal::BadProxyHeader => "with a malformed or refused PROXY protocol header",
            Refusal::ProxyHeaderTimeout => "without a PROXY protocol header in time",
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
                    "refused {n} connection(s) {} in the last {} s",
                    class.summary(),
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
        assert!(lines[0].starts_with("refused 1 connection(s) from addresses"));
        assert!(lines[1].starts_with("refused 2 connection(s) with a malformed"));
        assert_eq!(r.take_summary().count(), 0);
        assert_eq!(r.total(Refusal::BadProxyHeader), 2);
        assert_eq!(r.sum(), 3);
    }
}
