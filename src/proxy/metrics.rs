//! The proxy's metrics (no thesis section: a port decision for operators,
//! `docs/metrics.md`): once per tick the main thread renders what it knows
//! into Prometheus text and a JSON status and publishes them for the admin
//! thread ([`crate::admin`]). Rendering walks the tables the main thread
//! owns; nothing here waits, and nothing is read from another thread but
//! the runtime's own figures, handed in as [`RuntimeStats`].
//!
//! Every name starts `muta_proxy_`; counters end in `_total`. The names and
//! the JSON keys are a contract with dashboards and alert rules: extend,
//! never rename.

use std::fmt::Write as _;
use std::time::Instant;

use super::cl::Stage;
use super::refusals::Refusal;
use super::{Outbound, Proxy};
use crate::admin::Snapshot;
use crate::conn::DisconnectReason;
use crate::runtime::RuntimeStats;

/// Connections by stage, in the order the metrics list them.
const STAGES: [&str; 5] = ["proxy_header", "handshake", "proof", "play", "otc_path"];

/// One shard link as the metrics show it.
struct LinkFigures {
    addr: String,
    name: String,
    up: bool,
    ready: bool,
    players: usize,
    attempts: u64,
    connections: u32,
    rtt: Option<std::time::Duration>,
}

/// What both renderings share, gathered once.
struct Figures {
    uptime_s: f64,
    stages: [u64; STAGES.len()],
    closing: u64,
    links: Vec<LinkFigures>,
    /// The busiest client addresses and their connection counts.
    addrs: Vec<(String, u32)>,
    addrs_total: usize,
}

impl Proxy {
    fn figures(&self, rt: &RuntimeStats, now: Instant) -> Figures {
        let mut stages = [0u64; STAGES.len()];
        for (_, slot) in self.clients.iter_live() {
            let i = match slot.session.stage {
                Stage::ProxyHeader => 0,
                Stage::Handshake => 1,
                Stage::Proof => 2,
                Stage::Play(_) => 3,
                Stage::OtcPath => 4,
            };
            stages[i] += 1;
        }
        let links =
            self.links
                .views()
                .map(|view| {
                    let link = view.conn.and_then(|c| self.shards.get(c)).and_then(|slot| {
                        match &slot.session {
                            Outbound::Link(link) => Some(link),
                            Outbound::Connecting | Outbound::Game(_) => None,
                        }
                    });
                    LinkFigures {
                        ready: view.conn.is_some_and(|c| self.is_ready(c)),
                        name: link.map(|l| l.name.clone()).unwrap_or_default(),
                        players: link.map_or(0, |l| l.players.len()),
                        rtt: link.and_then(|l| l.rtt),
                        addr: view.addr,
                        up: view.up,
                        attempts: view.attempts,
                        connections: view.connections,
                    }
                })
                .collect();
        let mut addrs: Vec<(String, u32)> = Vec::new();
        let mut all: Vec<_> = self.addrs.conns_by_addr().collect();
        let addrs_total = all.len();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.to_string().cmp(&b.0.to_string())));
        for (key, n) in all.into_iter().take(self.settings.status_addrs_max) {
            addrs.push((key.to_string(), n));
        }
        Figures {
            uptime_s: now.saturating_duration_since(rt.started).as_secs_f64(),
            stages,
            closing: (self.clients.in_use() - self.clients.n_live()) as u64,
            links,
            addrs,
            addrs_total,
        }
    }

    /// The admin endpoint's snapshot, rendered now.
    pub(super) fn snapshot(&self, rt: &RuntimeStats, now: Instant) -> Snapshot {
        let figures = self.figures(rt, now);
        Snapshot {
            metrics: self.render_metrics(&figures, rt),
            status: self.render_status(&figures, rt),
            at: now,
        }
    }

    fn render_metrics(&self, f: &Figures, rt: &RuntimeStats) -> String {
        let mut p = Prom::default();
        p.gauge("up", "1 while the proxy runs.", &[], 1.0);
        let build = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("revision", env!("MUTA_GIT_REV")),
        ];
        p.gauge("build_info", "The version and git revision.", &build, 1.0);
        p.gauge("uptime_seconds", "Seconds since start.", &[], f.uptime_s);
        let generation = self.config_generation() as f64;
        p.gauge(
            "config_generation",
            "Reloads applied (0: as started).",
            &[],
            generation,
        );
        p.gauge(
            "draining",
            "1 once the drain on SIGTERM has begun.",
            &[],
            f64::from(u8::from(self.draining)),
        );
        let players = f.stages[3] as f64;
        p.gauge("players", "Authenticated MUTA players.", &[], players);
        p.family("connections", "Client-pool connections by stage.", "gauge");
        for (i, stage) in STAGES.iter().enumerate() {
            p.sample("connections", &[("state", stage)], f.stages[i] as f64);
        }
        p.sample("connections", &[("state", "closing")], f.closing as f64);
        p.gauge(
            "reservations",
            "Logins reserved, not yet connected.",
            &[],
            self.reservations.len() as f64,
        );
        p.family(
            "refusals_total",
            "Connections and sessions refused, by reason.",
            "counter",
        );
        for class in Refusal::ALL {
            let n = self.stats.refusals.total(class) as f64;
            p.sample("refusals_total", &[("reason", class.as_str())], n);
        }
        self.render_traffic(&mut p);
        render_links(&mut p, &f.links);
        self.render_otc(&mut p);
        render_runtime(&mut p, rt);
        p.out
    }

    fn render_traffic(&self, p: &mut Prom) {
        let s = &self.stats;
        p.counter(
            "authenticated_total",
            "Players who passed the auth proof.",
            s.authenticated,
        );
        p.counter("auth_failures_total", "Auth proofs refused.", s.auth_failed);
        p.counter(
            "filtered_total",
            "Players cut off by the packet filter.",
            s.filtered,
        );
        p.family("messages_total", "Messages forwarded.", "counter");
        p.sample(
            "messages_total",
            &[("direction", "to_shards")],
            s.msgs_to_shards as f64,
        );
        p.sample(
            "messages_total",
            &[("direction", "to_clients")],
            s.packets_to_clients as f64,
        );
        let pools = [
            ("client", self.clients.stats()),
            ("shard", self.shards.stats()),
        ];
        // A family's samples stay together, after its TYPE line.
        p.family("bytes_total", "Bytes read and written, by pool.", "counter");
        for (pool, stats) in &pools {
            let dir_in = [("pool", *pool), ("direction", "in")];
            p.sample("bytes_total", &dir_in, stats.bytes_in as f64);
            let dir_out = [("pool", *pool), ("direction", "out")];
            p.sample("bytes_total", &dir_out, stats.bytes_out as f64);
        }
        p.family(
            "disconnects_total",
            "Disconnects, by pool and reason.",
            "counter",
        );
        for (pool, stats) in &pools {
            for (i, reason) in DisconnectReason::KINDS.iter().enumerate() {
                let labels = [("pool", *pool), ("reason", *reason)];
                p.sample("disconnects_total", &labels, stats.by_reason[i] as f64);
            }
        }
    }

    fn render_otc(&self, p: &mut Prom) {
        let o = self.otc.stats();
        p.gauge(
            "otc_paths",
            "OTC paths open.",
            &[],
            self.otc.n_paths() as f64,
        );
        p.gauge(
            "otc_sessions",
            "OTC sessions live.",
            &[],
            self.otc.n_sessions() as f64,
        );
        let buffered = self.otc.buffered_bytes() as f64;
        p.gauge(
            "otc_buffered_bytes",
            "Bytes OTC sessions hold (unacknowledged, out of order).",
            &[],
            buffered,
        );
        p.counter(
            "otc_sessions_opened_total",
            "OTC sessions opened.",
            o.sessions_opened,
        );
        p.counter(
            "otc_sessions_ended_total",
            "OTC sessions ended.",
            o.sessions_ended,
        );
        p.counter(
            "otc_attaches_total",
            "Paths attached to live sessions.",
            o.attaches,
        );
        p.counter(
            "otc_packets_to_game_total",
            "Client packets delivered to game servers.",
            o.packets_to_game,
        );
        p.counter(
            "otc_packets_to_clients_total",
            "Game-server packets sent to clients.",
            o.packets_to_clients,
        );
        p.counter(
            "otc_duplicates_total",
            "Client packets dropped as another path's copy.",
            o.duplicates,
        );
    }

    fn render_status(&self, f: &Figures, rt: &RuntimeStats) -> String {
        let mut j = String::with_capacity(4096);
        let _ = write!(
            j,
            "{{\"version\":{},\"uptime_s\":{:.0},\"config_generation\":{},\"draining\":{},\
             \"players\":{},\"reservations\":{},\"connections\":{{",
            json_str(&crate::cli::version_line("muta-proxy")),
            f.uptime_s,
            self.config_generation(),
            self.draining,
            f.stages[3],
            self.reservations.len()
        );
        for (i, stage) in STAGES.iter().enumerate() {
            let _ = write!(j, "\"{stage}\":{},", f.stages[i]);
        }
        let _ = write!(j, "\"closing\":{}}},\"refusals\":{{", f.closing);
        let refusals: Vec<String> = Refusal::ALL
            .iter()
            .map(|c| format!("\"{}\":{}", c.as_str(), self.stats.refusals.total(*c)))
            .collect();
        j += &refusals.join(",");
        let s = &self.stats;
        let _ = write!(
            j,
            "}},\"messages\":{{\"to_shards\":{},\"to_clients\":{}}},\"shards\":[",
            s.msgs_to_shards, s.packets_to_clients
        );
        let links: Vec<String> = f.links.iter().map(link_json).collect();
        j += &links.join(",");
        let o = self.otc.stats();
        let _ = write!(
            j,
            "],\"otc\":{{\"paths\":{},\"sessions\":{},\"sessions_opened\":{},\"sessions_ended\":{}}},\
             \"event_buffer\":{{\"events\":{},\"capacity\":{},\"push_waits\":{}}},\
             \"secpool\":{{\"bytes\":{},\"bytes_max\":{}}},\"addresses_total\":{},\"addresses\":[",
            self.otc.n_paths(),
            self.otc.n_sessions(),
            o.sessions_opened,
            o.sessions_ended,
            rt.event_buffer_len,
            rt.event_buffer_capacity,
            rt.event_push_waits,
            rt.secpool_bytes_held,
            rt.secpool_bytes_max,
            f.addrs_total
        );
        let addrs: Vec<String> = f
            .addrs
            .iter()
            .map(|(a, n)| format!("{{\"address\":{},\"connections\":{n}}}", json_str(a)))
            .collect();
        j += &addrs.join(",");
        j += "]}";
        j
    }
}

fn link_json(l: &LinkFigures) -> String {
    format!(
        "{{\"address\":{},\"name\":{},\"up\":{},\"ready\":{},\"players\":{},\"attempts\":{},\
         \"connections\":{},\"rtt_ms\":{}}}",
        json_str(&l.addr),
        json_str(&l.name),
        l.up,
        l.ready,
        l.players,
        l.attempts,
        l.connections,
        l.rtt.map_or("null".to_string(), |d| format!(
            "{:.3}",
            d.as_secs_f64() * 1000.0
        ))
    )
}

fn render_links(p: &mut Prom, links: &[LinkFigures]) {
    p.family(
        "shard_link_up",
        "1 while the link to a shard is logged in and ready.",
        "gauge",
    );
    for l in links {
        let labels = [("shard", l.addr.as_str()), ("name", l.name.as_str())];
        p.sample(
            "shard_link_up",
            &labels,
            f64::from(u8::from(l.ready && l.up)),
        );
    }
    p.family(
        "shard_link_players",
        "Players playing through each shard link.",
        "gauge",
    );
    for l in links {
        p.sample(
            "shard_link_players",
            &[("shard", l.addr.as_str())],
            l.players as f64,
        );
    }
    p.family(
        "shard_link_rtt_seconds",
        "The last heartbeat's round trip (FPROXY_MSG_PING to TPROXY_MSG_PONG), for links that have one.",
        "gauge",
    );
    for l in links {
        if let Some(rtt) = l.rtt {
            let labels = [("shard", l.addr.as_str())];
            p.sample("shard_link_rtt_seconds", &labels, rtt.as_secs_f64());
        }
    }
    p.family(
        "shard_link_connections_total",
        "Connections each link has made.",
        "counter",
    );
    for l in links {
        let n = f64::from(l.connections);
        p.sample(
            "shard_link_connections_total",
            &[("shard", l.addr.as_str())],
            n,
        );
    }
    p.family(
        "shard_link_attempts_total",
        "Connect attempts of each link.",
        "counter",
    );
    for l in links {
        p.sample(
            "shard_link_attempts_total",
            &[("shard", l.addr.as_str())],
            l.attempts as f64,
        );
    }
}

fn render_runtime(p: &mut Prom, rt: &RuntimeStats) {
    let len = rt.event_buffer_len as f64;
    p.gauge(
        "event_buffer_events",
        "Events in the event buffer.",
        &[],
        len,
    );
    let cap = rt.event_buffer_capacity as f64;
    p.gauge(
        "event_buffer_capacity",
        "The event buffer's capacity.",
        &[],
        cap,
    );
    let waits = rt.event_push_waits;
    p.counter(
        "event_push_waits_total",
        "event_push calls that found the buffer full.",
        waits,
    );
    p.gauge(
        "secpool_bytes",
        "Bytes secpool holds.",
        &[],
        rt.secpool_bytes_held as f64,
    );
    p.gauge(
        "secpool_bytes_max",
        "secpool's cap.",
        &[],
        rt.secpool_bytes_max as f64,
    );
    p.family(
        "secpool_blocks",
        "secpool blocks by size class and state.",
        "gauge",
    );
    for c in &rt.secpool_classes {
        let class = c.block_size.to_string();
        let in_use = [("class", class.as_str()), ("state", "in_use")];
        p.sample("secpool_blocks", &in_use, c.blocks_in_use as f64);
        let free = [("class", class.as_str()), ("state", "free")];
        p.sample("secpool_blocks", &free, c.blocks_free as f64);
    }
    p.family(
        "secpool_failures_total",
        "Allocations refused (exhausted), by class.",
        "counter",
    );
    for c in &rt.secpool_classes {
        let class = c.block_size.to_string();
        p.sample(
            "secpool_failures_total",
            &[("class", &class)],
            c.failures as f64,
        );
    }
}

/// Prometheus text exposition format, version 0.0.4.
#[derive(Default)]
struct Prom {
    out: String,
}

impl Prom {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP muta_proxy_{name} {help}");
        let _ = writeln!(self.out, "# TYPE muta_proxy_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "muta_proxy_{name}");
        if !labels.is_empty() {
            let text: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", text.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, help, "gauge");
        self.sample(name, labels, value);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help, "counter");
        self.sample(name, &[], value as f64);
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_strings_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(json_str("x\"y\\\u{1}"), "\"x\\\"y\\\\\\u0001\"");
        let mut p = Prom::default();
        p.gauge("up", "Up.", &[("shard", "h:1")], 1.0);
        assert_eq!(
            p.out,
            "# HELP muta_proxy_up Up.\n# TYPE muta_proxy_up gauge\nmuta_proxy_up{shard=\"h:1\"} 1\n"
        );
    }
}
