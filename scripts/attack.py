#!/usr/bin/env python3
"""`make attack`: the proxy under each class of attack, beside honest players.

The system on loopback, as seed 002 deploys it: `muta-shard`, `muta-login`,
`muta-proxy` with `client.proxy_protocol = "required"` behind a real HAProxy
forwarder (`mode tcp`, `send-proxy-v2`), and ATTACK_HONEST honest `muta-bot`
players (echo 10/s and a chat line a second, broadcast to all), each from its
own address in 127.0.0.0/8 (`--bind-ips`), playing through HAProxy for the
whole run. The same proxy serves the `[otc]` front end behind a second
forwarder (`send-proxy-v2`), with `muta-otserv` as its game server and
ATTACK_HONEST_OTC honest OTClient-style sessions (`muta-bot --otc`, each from
its own address) playing through it for the whole run too. First a baseline
window, then each class of `muta-attack` alone for ATTACK_SECONDS, each
attacker from its own address too (the `otc-*` classes through the OTC
forwarder).

For each class: attacking connections made, how many the proxy cut off and
how fast (from `muta-attack`), the honest players' echo p50/p99 during the
attack (a window line of `muta-bot`, SIGUSR2) against the baseline, honest
echoes lost and players failed, the proxy's RSS before and after (VmRSS, after
a settle), whether the proxy stayed up and whether its shard link dropped
(its log). Written to target/attack/results.json and docs/attack.md.

It passes when, for every class: no honest echo lost and no honest player
failed, honest p99 at most 2x the quiet p99 (the larger of the baseline's and
that of a quiet window of ATTACK_QUIET seconds just before the class: on a
shared VM the hypervisor's steal moves a quiet window's p99 from 5 to 18 ms,
so one baseline at the start cannot judge a window minutes later; each
window's steal is recorded beside it), the proxy up, its shard link never
dropped, RSS within 10 % of its start once the attack ends, and every attacker
cut off; and when the honest players' own report over the whole run has no
player failed and no echo lost, and the honest OTC sessions' none failed and
no packet lost, duplicated or reordered. Exit status 0 if so, 1 otherwise.

The proxy runs with `client.require_announced_ip = false`, so that every
attacker reaches the stage its class attacks (with it on, an address no shard
announced is refused before the key exchange, and most classes would test
only that), and `client.reservation_timeout_ms = 5000`, so squatted
reservations expire within the run (the default is 30 s); for the same reason
`otc.detached_timeout_ms = 5000`: the sessions an OTC attacker leaves
detached when it is cut off end within the run, before RSS is judged. The
proxy gets the `Environment=` of the shipped unit (dist/muta-proxy.service:
glibc's allocator thresholds), as systemd would start it, and its `[admin]`
endpoint, from which each class records what secpool holds.

ATTACK_RENDER_ONLY=1 writes docs/attack.md again from the last results.json.
"""

import json
import os
import resource
import signal
import subprocess
import sys
import time

from procs import (Lines, cpu_seconds, ensure_haproxy, finish, free_port, gauge, port_open,
                   raise_fd_limit, rss_kib, say, scrape_metrics, steal_seconds, wait_for)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, os.environ.get("ATTACK_BIN", os.path.join("target", "release")))
OUT = os.path.join(ROOT, os.environ.get("ATTACK_OUT", os.path.join("target", "attack")))
DOCS = os.path.join(ROOT, os.environ.get("ATTACK_DOCS", "docs"))
HONEST = int(os.environ.get("ATTACK_HONEST", "100"))
SECONDS = float(os.environ.get("ATTACK_SECONDS", "8"))
BASELINE = float(os.environ.get("ATTACK_BASELINE", "12"))
SETTLE = float(os.environ.get("ATTACK_SETTLE", "3"))
# Before each class, a quiet window this long: the honest p99 it is judged
# against is the larger of this one's and the baseline's (see verdict).
QUIET = float(os.environ.get("ATTACK_QUIET", os.environ.get("ATTACK_SECONDS", "8")))
LINGER = float(os.environ.get("ATTACK_LINGER", "7"))
ONLY = [c for c in os.environ.get("ATTACK_CLASSES", "").split(",") if c]
# Each class (of ATTACK_CLASSES, or all) this many times in a row: with 2, a
# class's RSS that climbs again in its second round is a leak; one that
# stays where the first left it is the allocator keeping its pages.
ROUNDS = int(os.environ.get("ATTACK_ROUNDS", "1"))
RESERVATION_TIMEOUT_MS = 5000
DETACHED_TIMEOUT_MS = 5000

# class: (new attackers a second, most at once, their addresses)
CLASSES = [
    ("conn-flood", 1000, 1500, "127.0.1.1-127.0.1.250"),
    ("one-addr-flood", 1000, 1500, "127.0.2.1"),
    ("slowloris", 100, 1000, "127.0.3.1-127.0.3.200"),
    ("idle", 200, 1000, "127.0.4.1-127.0.4.100"),
    ("garbage", 500, 1000, "127.0.5.1-127.0.5.250"),
    ("bad-first-byte", 500, 1000, "127.0.6.1-127.0.6.250"),
    ("oversized-frame", 200, 1000, "127.0.7.1-127.0.7.250"),
    ("bad-mac", 200, 1000, "127.0.8.1-127.0.8.250"),
    ("guessed-proof", 200, 1000, "127.0.9.1-127.0.9.250"),
    ("untrusted-proxy-header", 500, 1000, "127.0.10.1-127.0.10.250"),
    # From the forwarder's own address: a trusted one.
    ("malformed-proxy-header", 500, 1000, "127.0.0.1"),
    # One at a time, a new one each second.
    ("auth-flooder", 1, 1, "127.0.11.1-127.0.11.8"),
    ("slow-reader", 1, 4, "127.0.12.1-127.0.12.8"),
    # Four addresses' logins: each holds at most client.max_conns_per_addr.
    ("squatting", 40, 1, "127.0.13.1-127.0.13.4"),
    # The [otc] front end, through its own forwarder, beside the OTC honest
    # bots (and the players).
    ("otc-bad-frames", 300, 1000, "127.0.14.1-127.0.14.250"),
    ("otc-port-scan", 300, 1000, "127.0.15.1-127.0.15.250"),
    ("otc-far-future", 200, 1000, "127.0.16.1-127.0.16.250"),
    ("otc-unacked-flood", 50, 200, "127.0.17.1-127.0.17.250"),
    ("otc-session-flood", 100, 1000, "127.0.18.1-127.0.18.250"),
]
# The honest OTClient-style bots (muta-bot --otc), each from its own address.
# (Each OTC packet costs the host four loopback hops through the forwarder
# and the proxy: fewer of them keep the 2-core machine from saturating.)
HONEST_OTC = int(os.environ.get("ATTACK_HONEST_OTC", "20"))


def unit_environment():
    """The `Environment=` lines of the shipped unit (dist/muta-proxy.service):
    the proxy runs here as systemd runs it (glibc's allocator settings)."""
    env = {}
    with open(os.path.join(ROOT, "dist", "muta-proxy.service")) as f:
        for line in f:
            if line.startswith("Environment="):
                key, _, value = line[len("Environment="):].strip().partition("=")
                env[key] = value
    return env


class Run:
    def __init__(self):
        self.procs = []
        self.logdir = os.path.join(OUT, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.window_started = (time.time(), steal_seconds())

    def cpu(self):
        """CPU seconds so far of each process of the run, by name."""
        out = {}
        for name, p in self.procs:
            if p.poll() is None:
                out[name] = cpu_seconds(p.pid) or 0.0
        return out

    def spawn(self, name, args, stdout=subprocess.DEVNULL, stderr=None, env=None):
        log = open(os.path.join(self.logdir, f"{name}.log"), "w")
        p = subprocess.Popen(args, cwd=ROOT, env=dict(self.env, **(env or {})), stdout=stdout,
                             stderr=stderr if stderr is not None else log,
                             start_new_session=True)
        self.procs.append((name, p))
        return p

    def start(self):
        shard_proxy, shard_login = free_port(), free_port()
        self.login_port, self.proxy_port, self.front = free_port(), free_port(), free_port()
        self.shard = self.spawn("shard", [
            os.path.join(BIN, "muta-shard"),
            "--proxy-listen", f"127.0.0.1:{shard_proxy}",
            "--login-listen", f"127.0.0.1:{shard_login}",
            "--stats-json"], stdout=subprocess.PIPE)
        self.shard_stats = Lines(self.shard.stdout, os.path.join(self.logdir, "shard-stats.log"))
        wait_for(lambda: self.shard_stats.last() is not None, 10, "the shard's first stats line")
        self.spawn("login", [os.path.join(BIN, "muta-login"),
                             "--listen", f"127.0.0.1:{self.login_port}",
                             "--shard", f"127.0.0.1:{shard_login}",
                             "--create-accounts", "--pwhash-cost", "min",
                             "--max-clients", "4096"])
        wait_for(lambda: port_open(self.login_port), 10, "the login server to listen")
        self.game_port, self.otc_port, self.otc_front = free_port(), free_port(), free_port()
        self.spawn("otserv", [os.path.join(BIN, "muta-otserv"),
                              "--listen", f"127.0.0.1:{self.game_port}", "--max-conns", "20000"])
        wait_for(lambda: port_open(self.game_port), 10, "muta-otserv to listen")
        self.start_proxy(shard_proxy)
        self.start_haproxy()
        wait_for(lambda: len((self.shard_stats.last() or {}).get("proxies", [])) >= 1, 10,
                 "muta-proxy to log in to the shard")

    def start_proxy(self, shard_proxy):
        with open(os.path.join(ROOT, "proxy.cfg")) as f:
            cfg = f.read()
        for old, new in [
                ('listen = "0.0.0.0:7702"', f'listen = "127.0.0.1:{self.proxy_port}"'),
                ('public_address = "127.0.0.1:7702"', f'public_address = "127.0.0.1:{self.front}"'),
                ('proxy_protocol = "off"', 'proxy_protocol = "required"'),
                ('trusted_forwarders = []', 'trusted_forwarders = ["127.0.0.1/32"]'),
                ("require_announced_ip = true", "require_announced_ip = false"),
                # The [otc] front end too (proxy_protocol and
                # trusted_forwarders above apply to both sections).
                ('listen = ""', f'listen = "127.0.0.1:{self.otc_port}"'),
                ("allowed_ports = [7171, 7172]", f"allowed_ports = [{self.game_port}]"),
                # Sessions the attackers leave detached end within the run
                # (as squatted reservations do), so RSS is judged after them.
                ("detached_timeout_ms = 30000", f"detached_timeout_ms = {DETACHED_TIMEOUT_MS}"),
                ("reservation_timeout_ms = 30000",
                 f"reservation_timeout_ms = {RESERVATION_TIMEOUT_MS}")]:
            if old not in cfg:
                raise RuntimeError(f"proxy.cfg no longer has `{old}`: update scripts/attack.py")
            # Every occurrence (proxy_protocol and trusted_forwarders are in
            # both front ends' sections), but `listen = ""`: [otc]'s is the
            # first; [admin]'s is the next, below.
            cfg = cfg.replace(old, new, 1 if old == 'listen = ""' else -1)
        # The metrics endpoint, as an operator runs it: each class records
        # what secpool holds before and after, to tell its blocks from the
        # rest of the proxy's RSS.
        self.admin_port = free_port()
        if 'listen = ""' not in cfg:
            raise RuntimeError("proxy.cfg no longer has [admin] `listen = \"\"`: update attack.py")
        cfg = cfg.replace('listen = ""', f'listen = "127.0.0.1:{self.admin_port}"', 1)
        cfg_path = os.path.join(OUT, "proxy.cfg")
        shards_path = os.path.join(OUT, "shards.cfg")
        with open(cfg_path, "w") as f:
            f.write(cfg)
        with open(shards_path, "w") as f:
            f.write(f"shard = 127.0.0.1:{shard_proxy}\n")
        self.proxy_log = os.path.join(self.logdir, "proxy.log")
        self.proxy = self.spawn("proxy", [os.path.join(BIN, "muta-proxy"),
                                          "--config", cfg_path, "--shards", shards_path],
                                env=unit_environment())
        wait_for(lambda: port_open(self.proxy_port), 10, "muta-proxy to listen")
        wait_for(lambda: port_open(self.otc_port), 10, "muta-proxy's OTC listener")

    def start_haproxy(self):
        # The socket buffers HAProxy gives each leg, as an operator bounds
        # them (tune.rcvbuf.server, tune.sndbuf.client): without, the kernel
        # grows them to MBs and a reader that never reads is seen late.
        cfg = (f"global\n  maxconn 8000\n  tune.rcvbuf.server 65536\n  tune.sndbuf.client 65536\n"
               f"defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n"
               f"  timeout server 60s\n"
               f"frontend players\n  bind 127.0.0.1:{self.front}\n  default_backend proxy\n"
               f"backend proxy\n  server muta 127.0.0.1:{self.proxy_port} send-proxy-v2\n"
               f"frontend otc\n  bind 127.0.0.1:{self.otc_front}\n  default_backend otc\n"
               f"backend otc\n  server muta-otc 127.0.0.1:{self.otc_port} send-proxy-v2\n")
        path = os.path.join(OUT, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(cfg)
        self.haproxy = self.spawn("haproxy", ["haproxy", "-db", "-f", path])
        wait_for(lambda: port_open(self.front), 10, "HAProxy to listen")

    def start_honest(self):
        self.bots = self.spawn("bots", [
            os.path.join(BIN, "muta-bot"),
            "--login", f"127.0.0.1:{self.login_port}",
            "--clients", str(HONEST), "--rate", "10", "--chat-rate", "1",
            "--duration", "3600", "--ramp", "2", "--drain", "5", "--json", "--progress",
            "--bind-ips", f"127.0.0.2-127.0.0.{1 + HONEST}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.bot_lines = Lines(self.bots.stderr, os.path.join(self.logdir, "bots.log"))
        self.bot_report = Lines(self.bots.stdout, os.path.join(self.logdir, "bots-report.log"))
        # OTClient-style sessions through the OTC forwarder, for the whole
        # run: judged on their own report (none lost, duplicated, reordered).
        self.otc_bots = self.spawn("otc-bots", [
            os.path.join(BIN, "muta-bot"), "--otc", f"127.0.0.1:{self.otc_front}",
            "--sessions", str(HONEST_OTC), "--port", str(self.game_port), "--rate", "5",
            "--duration", "3600", "--ramp", "2", "--drain", "5", "--json",
            "--bind-ips", f"127.0.19.1-127.0.19.{HONEST_OTC}"],
            stdout=subprocess.PIPE)
        self.otc_report = Lines(self.otc_bots.stdout, os.path.join(self.logdir, "otc-bots-report.log"))

    def window(self):
        """Ends the honest players' current window; returns its line, with
        `steal_pct`: the share of the machine's CPU time the hypervisor took
        during the window."""
        seen = sum(1 for _, l in self.bot_lines.lines if "window" in l)
        self.bots.send_signal(signal.SIGUSR2)
        now, steal = time.time(), steal_seconds()
        wait_for(lambda: sum(1 for _, l in self.bot_lines.lines if "window" in l) > seen, 5,
                 "muta-bot's window line")
        line = dict([l for _, l in self.bot_lines.lines if "window" in l][-1])
        since, steal_before = self.window_started
        line["steal_pct"] = round(100 * (steal - steal_before)
                                  / max(now - since, 1e-3) / os.cpu_count(), 1)
        self.window_started = (now, steal)
        return line

    def secpool_kib(self):
        """What secpool holds (KiB, from /metrics), or None."""
        try:
            held = gauge(scrape_metrics(self.admin_port), "secpool_bytes")
        except OSError:
            return None
        return None if held is None else int(held // 1024)

    def link_events(self):
        """Lines of the proxy's log saying its shard link was lost."""
        with open(self.proxy_log, errors="replace") as f:
            return sum(1 for line in f if "lost:" in line and "shard" in line)

    def stop(self):
        # The honest players first, MUTA and OTC alike: they drain their
        # last echoes and report while the system still runs (an OTC bot
        # stopped beside the proxy would count the packets the proxy's drain
        # ended as lost); then the rest.
        bots = [(n, p) for n, p in self.procs if n in ("bots", "otc-bots")]
        for name, p in bots:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in bots:
            finish(p, 15, name)
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in reversed(self.procs):
            finish(p, 10, name)


def attack(run, index, name, rate, max_open, ips):
    args = [os.path.join(BIN, "muta-attack"), "--class", name,
            "--front", f"127.0.0.1:{run.front}",
            "--proxy", f"127.0.0.1:{run.proxy_port}",
            "--login", f"127.0.0.1:{run.login_port}",
            "--duration", str(SECONDS), "--rate", str(rate), "--max-open", str(max_open),
            "--bind-ips", ips, "--linger", str(LINGER),
            "--first-account", str(100000 * (index + 1)),
            "--reservation-timeout-ms", str(RESERVATION_TIMEOUT_MS),
            "--otc-front", f"127.0.0.1:{run.otc_front}", "--otc-port", str(run.game_port)]
    log = open(os.path.join(run.logdir, f"attack-{name}.log"), "w")
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    p = subprocess.run(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                       timeout=SECONDS + LINGER + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(p.stdout.decode().strip().splitlines()[-1])
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["cpu_cores"] = round(used / (time.time() - t0), 2)
    return result


def smaps(run, name, when):
    """Keeps the proxy's memory map, to see what grew (logs/smaps-*.txt)."""
    try:
        with open(f"/proc/{run.proxy.pid}/smaps") as f, \
                open(os.path.join(run.logdir, f"smaps-{name}-{when}.txt"), "w") as out:
            out.write(f.read())
    except OSError:
        pass


def one_class(run, index, spec, baseline):
    name, rate, max_open, ips = spec
    rss_before, secpool_before = rss_kib(run.proxy.pid), run.secpool_kib()
    smaps(run, name, "before")
    drops_before = run.link_events()
    run.window()  # the settle time after the last class: not counted
    time.sleep(QUIET)
    quiet = run.window()
    say(f"== {name}: {rate}/s, at most {max_open} at once, from {ips}")
    started = time.time()
    cpu_before = run.cpu()
    result = attack(run, index, name, rate, max_open, ips)
    cpu = {k: round((v - cpu_before.get(k, 0.0)) / (time.time() - started), 2)
           for k, v in run.cpu().items()}
    cpu["attack"] = result.get("cpu_cores")
    during = run.window()
    time.sleep(SETTLE)
    alive = run.proxy.poll() is None
    if alive:
        smaps(run, name, "after")
    row = {
        "class": name,
        "attackers": result["attackers"],
        "cut_off": result["cut_off"],
        "cut_off_p50_ms": result["cut_off_p50_ms"],
        "cut_off_max_ms": result["cut_off_max_ms"],
        "still_open": result["still_open"],
        "attack_errors": result["errors"],
        "seconds": round(time.time() - started, 1),
        "honest_p50_us": during["p50_us"],
        "honest_p99_us": during["p99_us"],
        "honest_echoes": during["echoes"],
        "baseline_p99_us": baseline["p99_us"],
        "quiet_p99_us": quiet["p99_us"],
        "reference_p99_us": max(baseline["p99_us"], quiet["p99_us"]),
        "steal_pct": during["steal_pct"],
        "quiet_steal_pct": quiet["steal_pct"],
        "honest_lost": during["lost"],
        "honest_failed": during["errors"],
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_kib(run.proxy.pid) if alive else 0,
        # Of that RSS, secpool's blocks (in use and kept free for reuse).
        "secpool_kib_before": secpool_before,
        "secpool_kib_after": run.secpool_kib() if alive else None,
        "proxy_alive": alive,
        "shard_link_dropped": run.link_events() > drops_before,
        # Cores each process used during the attack: who the class loads.
        "cpu_cores": cpu,
    }
    say(f"   {json.dumps(row)}")
    return row


P99 = "honest p99 over 2x the quiet p99"
# A class whose honest p99 was over its limit runs twice more: its p99 fails
# only if it is over in most of the three. Every other criterion must hold
# in every attempt. (On these VMs a window taken while the hypervisor steals
# a quarter of the CPU has a p99 of 20 to 50 ms whatever runs in it; an
# attack that slows the honest players does it again, a steal storm rarely
# lasts three windows.)
P99_ATTEMPTS = 3


def class_failures(attempts):
    """The criteria one class (all its attempts) failed; empty: passed."""
    failed = []
    for row in attempts:
        failed += [f for f in verdict(row) if f != P99 and f not in failed]
    over = sum(1 for row in attempts if P99 in verdict(row))
    if 2 * over > len(attempts):
        failed.append(f"{P99} in {over} of {len(attempts)} attempts")
    # Each attempt's RSS is judged from where the one before left it; the
    # class as a whole, from where its first attempt began.
    if len(attempts) > 1 and attempts[-1]["proxy_alive"] and \
            attempts[-1]["rss_kib_after"] > 1.1 * attempts[0]["rss_kib_before"]:
        failed.append("RSS grew over 10 % over its attempts")
    return failed


def run_class(run, index, spec, baseline):
    """One class, and twice more if its p99 was over: its attempts."""
    attempts = [one_class(run, index, spec, baseline)]
    # Only when the p99 is all that failed: any other failure stands as it
    # is, and a dead proxy has nothing left to measure.
    if verdict(attempts[0]) == [P99]:
        say(f"   {spec[0]}: honest p99 over its limit; the class twice more, to tell the "
            "attack from the machine")
        while len(attempts) < P99_ATTEMPTS and attempts[-1]["proxy_alive"]:
            attempts.append(one_class(run, index, spec, baseline))
    for n, row in enumerate(attempts, 1):
        row["attempt"], row["attempts"] = n, len(attempts)
    return attempts


def verdict(row):
    """The criteria a class failed (empty: passed)."""
    failed = []
    if row["honest_lost"] or row["honest_failed"]:
        failed.append("honest players lost echoes")
    if row["honest_p99_us"] > 2 * row["reference_p99_us"]:
        failed.append(P99)
    if not row["proxy_alive"]:
        failed.append("the proxy died")
    if row["shard_link_dropped"]:
        failed.append("the shard link dropped")
    if row["rss_kib_after"] > 1.1 * row["rss_kib_before"]:
        failed.append("RSS grew over 10 %")
    if row["still_open"] or row["cut_off"] < row["attackers"]:
        failed.append("attackers left standing")
    if row["honest_echoes"] == 0:
        failed.append("no honest echo measured")
    return failed


def whole_run(results):
    """The honest players' own report, over the whole run, in words."""
    h = results.get("honest_report")
    if not h:
        return "The honest players' report is missing."
    text = (f"Over the whole run the {h['clients']} honest players sent {h['sent']} echoes and "
            f"got {h['received']} back, {h.get('lost', 0)} lost; {h['errors']} of them failed.")
    o = results.get("honest_otc_report")
    if o:
        text += (f" The {o['sessions']} honest OTC sessions (`muta-bot --otc` through the OTC "
                 f"forwarder) sent {o['sent']} packets and got {o['received']} back: "
                 f"{o['lost']} lost, {o['duplicated']} duplicated, {o['reordered']} reordered, "
                 f"{o['wrong_addr']} seen at another address; {o['errors']} failed.")
    else:
        text += " The honest OTC sessions' report is missing."
    return text


def run_failures(results):
    """What failed over the whole run rather than in one class."""
    h = results.get("honest_report")
    if not h:
        return ["no report from the honest players"]
    if h["errors"] or h["received"] != h["sent"] or h.get("lost", 0):
        return ["honest players failed or lost echoes over the run"]
    o = results.get("honest_otc_report")
    if not o:
        return ["no report from the honest OTC bots"]
    if o["errors"] or o["received"] != o["sent"] or o["lost"] or o["duplicated"] or \
            o["reordered"] or o["wrong_addr"]:
        return ["honest OTC sessions failed, or lost, duplicated or reordered packets"]
    return []


def table_row(r, judged):
    """One attempt of a class, as a row of docs/attack.md's table."""
    name = r["class"] if r["attempts"] == 1 else \
        f"{r['class']} (attempt {r['attempt']} of {r['attempts']})"
    return (f"| {name} | {r['attackers']} | {r['cut_off']} | {r['cut_off_p50_ms']} ms / "
            f"{r['cut_off_max_ms']} ms | {r['honest_p50_us']} µs | {r['honest_p99_us']} µs "
            f"({r['quiet_p99_us']}) | {r['steal_pct']} % ({r['quiet_steal_pct']} %) | "
            f"{r['honest_lost']} | {r['rss_kib_before']} → {r['rss_kib_after']} KiB "
            f"({r['secpool_kib_before']} → {r['secpool_kib_after']}) | "
            f"{'yes' if r['proxy_alive'] else 'no'} | "
            f"{'yes' if r['shard_link_dropped'] else 'no'} | "
            f"{judged} |")


def write_docs(results, started, elapsed):
    b = results["baseline"]
    lines = [
        "# The proxy under attack (`make attack`)",
        "",
        f"Written by `make attack` (`scripts/attack.py`) on {started}, in {elapsed:.0f} s, "
        f"on {os.cpu_count()} CPUs. {HONEST} honest `muta-bot` players (echo 10/s, a chat "
        "line a second broadcast to all) play throughout through HAProxy (`send-proxy-v2`) "
        "into `muta-proxy` (`client.proxy_protocol = \"required\"`, "
        "`client.require_announced_ip = false`), each from its own 127.0.0.x; each class "
        f"of `muta-attack` runs alone for {SECONDS:.0f} s beside them, its attackers from "
        "addresses of their own, and is then given "
        f"{LINGER:.0f} s to be cut off. The classes, and what each attacker does, are in "
        "`src/attack/mod.rs`; the limits that answer them in `docs/configuration.md`.",
        "",
        f"Baseline (before any attack, {BASELINE:.0f} s): honest echo p50 {b['p50_us']} µs, "
        f"p99 {b['p99_us']} µs, steal {b.get('steal_pct')} %. {whole_run(results)}",
        "",
        "| class | attackers | cut off | cut off after (p50 / max) | honest p50 | honest p99 "
        "(quiet) | steal (quiet) | honest lost | proxy RSS before → after (secpool) | proxy up | "
        "shard link dropped | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for attempts in results["attacks"]:
        for r in attempts:
            if r is attempts[-1]:
                failed = class_failures(attempts)
                judged = "pass" if not failed else "FAIL: " + "; ".join(failed)
            else:
                judged = "this attempt: " + ("; ".join(verdict(r)) or "pass")
            lines.append(table_row(r, judged))
    lines += [
        "",
        "Columns: *attackers*, connections (or logins) the class made; *cut off*, those "
        "the proxy closed or refused, and how long after each attacker's start (a squatted "
        "login counts when its ticket was found refused, probed once its reservation "
        "should have expired); *honest p50/p99*, the echo round trips of the honest "
        "players during the attack (from `muta-bot`'s live histogram, within 6 %), against "
        f"the p99 of a quiet window of {QUIET:.0f} s just before it (the verdict takes the "
        "larger of that and the baseline's); *steal*, the share of the machine's CPU time the "
        "hypervisor gave other guests during the attack (and the quiet window): the noise "
        "these VMs add to every window; *honest lost*, echoes that never came back; *RSS*, "
        f"the proxy's `VmRSS` before the attack and {SETTLE:.0f} s after it ended, with what "
        "secpool held of it in blocks in use and kept for reuse (KiB, from `/metrics`). "
        "A class whose honest p99 was over its limit ran twice more (its *attempts*): its "
        "p99 fails only if it was over in most of them; every other criterion holds in "
        "every attempt, and the RSS across them. `target/attack/results.json` has the same and more; "
        "`target/attack/logs/` every process's log.",
        "",
    ]
    with open(os.path.join(DOCS, "attack.md"), "w") as f:
        f.write("\n".join(lines))
    say(f"== wrote {os.path.relpath(os.path.join(DOCS, 'attack.md'), ROOT)}")


def main():
    os.makedirs(OUT, exist_ok=True)
    if os.environ.get("ATTACK_RENDER_ONLY"):
        with open(os.path.join(OUT, "results.json")) as f:
            results = json.load(f)
        if any(not isinstance(a, list) for a in results.get("attacks", [])):
            say("target/attack/results.json was written by an older scripts/attack.py (one "
                "row a class, no attempts): run `make attack` to write it again")
            return 1
        write_docs(results, results.get("started", "?"), results.get("elapsed_s", 0))
        return 0
    if not ensure_haproxy():
        say("haproxy is not installed and could not be installed")
        return 1
    raise_fd_limit()
    started, t0 = time.strftime("%Y-%m-%d %H:%M"), time.time()
    run = Run()
    results = {"baseline": {}, "attacks": [], "honest": HONEST, "seconds_per_class": SECONDS}
    try:
        run.start()
        run.start_honest()
        wait_for(lambda: any(l.get("authenticated") == HONEST
                             for _, l in run.bot_lines.lines if "progress" in l)
                 or run.bots.poll() is not None, 30, "the honest players")
        time.sleep(3)  # every bot welcomed and playing (ramp 2 s)
        run.window()
        time.sleep(BASELINE)
        base = run.window()
        results["baseline"] = {"p50_us": base["p50_us"], "p99_us": base["p99_us"],
                               "echoes": base["echoes"], "lost": base["lost"],
                               "steal_pct": base["steal_pct"]}
        say(f"== baseline: {json.dumps(results['baseline'])}")
        runs = [(index, spec) for index, spec in enumerate(CLASSES)
                if not ONLY or spec[0] in ONLY for _ in range(ROUNDS)]
        for index, spec in runs:
            if run.proxy.poll() is not None:
                # The class before killed it, and its row says so.
                say(f"== the proxy is gone: {spec[0]} and the classes after it not run")
                break
            results["attacks"].append(run_class(run, index, spec, results["baseline"]))
    finally:
        run.stop()
    if run.bot_report.last():
        results["honest_report"] = run.bot_report.last()
    if run.otc_report.last():
        results["honest_otc_report"] = run.otc_report.last()
    elapsed = time.time() - t0
    results["elapsed_s"] = round(elapsed, 1)
    results["started"] = started
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    say(f"== wrote {os.path.relpath(os.path.join(OUT, 'results.json'), ROOT)} ({elapsed:.0f} s)")
    write_docs(results, started, elapsed)
    failed = [(rows[0]["class"], class_failures(rows)) for rows in results["attacks"]
              if class_failures(rows)]
    failed += [("the whole run", run_failures(results))] if run_failures(results) else []
    for name, why in failed:
        say(f"FAIL {name}: {'; '.join(why)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
