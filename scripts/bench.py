#!/usr/bin/env python3
"""`make bench` (the load part) and `make perf`: the proxy against direct
connections and HAProxy, side by side in one run.

Three paths from the same bots to the same shard:

  direct      bots -> muta-shard's direct listener (the shard speaks the
              client protocol itself, as MUTA's shard did before proxies,
              thesis 2.3)
  haproxy     bots -> HAProxy (TCP mode) -> that direct listener
  muta-proxy  bots -> muta-proxy -> muta-shard (the thesis's path)

For each number of clients (BENCH_LOADS), the paths run interleaved, one
after the other, each on a fresh set of processes. Every bot sends
BENCH_RATE echo messages a second and a chat line every 1/BENCH_CHAT_RATE
seconds, which the shard broadcasts to the BENCH_AREA players of the
sender's area. Measured per run, over a steady window once every bot plays:

  p50_us, p99_us, p999_us   echo round trip (from muta-bot's JSON)
  msgs_per_s                game messages through the path per second, both
                            ways (the shard's msgs_in + msgs_out)
  proxy_cpu_s_per_mmsg      the proxy's (or HAProxy's) CPU seconds per
                            million of those messages; null for direct
  proxy_rss_kib             the proxy's resident memory at the window's end
  proxy_rss_idle_kib        ... before the bots connected
  shard_cpu_s_per_mmsg      the shard's CPU, for context (direct: the shard
                            does the players' crypto itself)
  proxy_sleeps_per_msg      times the proxy's threads went to sleep
                            (voluntary context switches) per message: each
                            costs a wake-up, the largest cost on a VM
  proxy_sleeps_per_s        ... per second, by thread name
  proxy_runq_wait_ms_per_s  ms per second the proxy's threads, by name,
                            waited for a CPU while runnable (schedstat)
  shard_runq_wait_ms_per_s  the same for the shard's threads
  bots_runq_wait_ms_per_s   ... and muta-bot's

Then a connection storm per path (BENCH_STORM clients log in first, then
all connect at once; muta-bot --storm) for handshakes per second.

Writes target/bench/results.json, docs/benchmarks.md (the table) and
docs/bench-latency.png (the plot). The crypto and kernel floors come from
the cryptchan and net_floor micro-benchmarks of the same `make bench` run
(target/bench/micro.md). `--perf` instead runs the muta-proxy path once at
PERF_CLIENTS clients under `perf record -g` (see docs/profiling.md).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from procs import (Lines, cpu_seconds, ensure_haproxy, finish, free_port, gauge, port_open,
                   raise_fd_limit, rss_kib, say, scrape_metrics, wait_for)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, os.environ.get("BENCH_OUT", os.path.join("target", "bench")))
BIN = os.path.join(ROOT, os.environ.get("BENCH_BIN", os.path.join("target", "release")))
# Where the table and the plot go (CI's smoke run writes them elsewhere).
DOCS = os.path.join(ROOT, os.environ.get("BENCH_DOCS", "docs"))

LOADS = [int(x) for x in os.environ.get("BENCH_LOADS", "100,1000,5000,10000").split(",") if x]
PATHS = [x for x in os.environ.get("BENCH_PATHS", "direct,haproxy,muta-proxy").split(",") if x]
STEADY = float(os.environ.get("BENCH_SECONDS", "8"))
RATE = float(os.environ.get("BENCH_RATE", "10"))
CHAT_RATE = float(os.environ.get("BENCH_CHAT_RATE", "1"))
AREA = int(os.environ.get("BENCH_AREA", "20"))
STORM = int(os.environ.get("BENCH_STORM", "1000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "1"))
# The load the targets are judged at, run this many times (interleaved) so
# its figures are medians: these machines are noisy.
FOCUS = int(os.environ.get("BENCH_FOCUS", "1000"))
FOCUS_REPEAT = int(os.environ.get("BENCH_FOCUS_REPEAT", "3"))


def thread_stats(pid):
    """Per thread name, summed over threads of that name: how many times the
    threads went to sleep (voluntary context switches; each costs a wake-up
    later, on a VM the dearest thing a thread does) and how long they waited
    for a CPU while runnable (nanoseconds, `schedstat`'s second field)."""
    by_thread = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/comm") as f:
                name = f.read().strip()
            with open(f"{base}/schedstat") as f:
                waited = int(f.read().split()[1])
            slept = 0
            with open(f"{base}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        slept = int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
        old = by_thread.get(name, (0, 0))
        by_thread[name] = (old[0] + slept, old[1] + waited)
    return by_thread


def thread_delta(before, after, window):
    """Sleeps per second and ms of run-queue wait per second, by thread name."""
    if before is None or after is None:
        return None, None
    sleeps = {t: round((a[0] - before.get(t, (0, 0))[0]) / window) for t, a in after.items()}
    waits = {t: round((a[1] - before.get(t, (0, 0))[1]) / 1e6 / window, 1) for t, a in after.items()}
    return sleeps, waits


class System:
    """One path's processes: shard, login server, and the proxy in between."""

    def __init__(self, path, clients, tag):
        self.path, self.clients, self.tag = path, clients, tag
        self.procs = []
        self.logdir = os.path.join(OUT, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))

    def spawn(self, name, args, stdout=subprocess.DEVNULL):
        log = open(os.path.join(self.logdir, f"{self.tag}-{name}.log"), "w")
        p = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=stdout, stderr=log,
                             start_new_session=True)
        self.procs.append((name, p))
        return p

    def start(self):
        shard_proxy, shard_login, direct = free_port(), free_port(), free_port()
        self.login_port, front = free_port(), free_port()
        shard_args = [os.path.join(BIN, "muta-shard"),
                      "--proxy-listen", f"127.0.0.1:{shard_proxy}",
                      "--login-listen", f"127.0.0.1:{shard_login}",
                      "--area-players", str(AREA), "--stats-json",
                      "--max-direct", str(self.clients + 1000)]
        if self.path in ("direct", "haproxy"):
            shard_args += ["--direct-listen", f"127.0.0.1:{direct}"]
        if self.path == "haproxy":
            shard_args += ["--direct-public", f"127.0.0.1:{front}"]
        self.shard = self.spawn("shard", shard_args, stdout=subprocess.PIPE)
        self.stats = Lines(self.shard.stdout, os.path.join(self.logdir, f"{self.tag}-shard-stats.log"))
        wait_for(lambda: self.stats.last() is not None, 10, "the shard's first stats line")
        self.spawn("login", [os.path.join(BIN, "muta-login"),
                             "--listen", f"127.0.0.1:{self.login_port}",
                             "--shard", f"127.0.0.1:{shard_login}",
                             "--create-accounts", "--pwhash-cost", "min",
                             "--max-clients", str(max(1024, self.clients + 1000))])
        self.proxy = None
        if self.path.startswith("muta-proxy"):
            # `muta-proxy@DIR`: the muta-proxy binary of another build (an A/B
            # comparison of two versions in one run).
            proxy_bin = os.path.join(BIN, "muta-proxy")
            cfg_src = os.path.join(ROOT, "proxy.cfg")
            if "@" in self.path:
                build = self.path.split("@", 1)[1]
                proxy_bin = os.path.join(build, "muta-proxy")
                # That build's own proxy.cfg (DIR is its target/release),
                # which has only the keys it knows.
                theirs = os.path.join(build, "..", "..", "proxy.cfg")
                if os.path.exists(theirs):
                    cfg_src = theirs
            with open(cfg_src) as f:
                cfg = f.read()
            optional = {"max_conns_per_addr", "new_conns_per_addr_per_s", "new_conns_per_addr_burst",
                        "handshakes_per_s", "handshakes_burst"}
            for old, new in [('listen = "0.0.0.0:7702"', f'listen = "127.0.0.1:{front}"'),
                             ('public_address = "127.0.0.1:7702"', f'public_address = "127.0.0.1:{front}"'),
                             ("max_clients = 1024", f"max_clients = {self.clients + 1000}"),
                             ('log_level = "info"', 'log_level = "warn"'),
                             # Every bot connects from 127.0.0.1: the per-address
                             # limits and the handshake rate, which `make attack`
                             # measures, are lifted so that this measures the path.
                             ("max_conns_per_addr = 32", "max_conns_per_addr = 1000000"),
                             ("new_conns_per_addr_per_s = 5", "new_conns_per_addr_per_s = 1000000"),
                             ("new_conns_per_addr_burst = 20", "new_conns_per_addr_burst = 1000000"),
                             ("handshakes_per_s = 2000", "handshakes_per_s = 1000000"),
                             ("handshakes_burst = 2000", "handshakes_burst = 1000000")]:
                if old not in cfg:
                    if old.split(" =")[0] in optional and cfg_src != os.path.join(ROOT, "proxy.cfg"):
                        continue  # an older build without the key
                    raise RuntimeError(f"proxy.cfg no longer has `{old}`: update scripts/bench.py")
                cfg = cfg.replace(old, new)
            # The admin endpoint, where the build has one (scraped once per
            # run, under the load, after the window: `admin_*` in the results).
            self.admin_port = None
            if "\n[admin]\n" in cfg:
                head, admin = cfg.split("\n[admin]\n", 1)
                self.admin_port = free_port()
                admin = admin.replace('listen = ""', f'listen = "127.0.0.1:{self.admin_port}"', 1)
                cfg = head + "\n[admin]\n" + admin
            cfg_path = os.path.join(OUT, f"{self.tag}-proxy.cfg")
            shards_path = os.path.join(OUT, f"{self.tag}-shards.cfg")
            with open(cfg_path, "w") as f:
                f.write(cfg)
            with open(shards_path, "w") as f:
                f.write(f"shard = 127.0.0.1:{shard_proxy}\n")
            self.proxy = self.spawn("proxy", [proxy_bin, "--config", cfg_path, "--shards", shards_path])
            wait_for(lambda: len((self.stats.last() or {}).get("proxies", [])) >= 1, 10,
                     "muta-proxy to log in to the shard")
        elif self.path == "haproxy":
            conns = self.clients + 1000
            cfg_path = os.path.join(OUT, f"{self.tag}-haproxy.cfg")
            with open(cfg_path, "w") as f:
                f.write(f"""global
    maxconn {conns}
defaults
    mode tcp
    maxconn {conns}
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend players
    bind 127.0.0.1:{front}
    default_backend shard
backend shard
    server shard 127.0.0.1:{direct}
""")
            self.proxy = self.spawn("haproxy", ["haproxy", "-db", "-f", cfg_path])
            wait_for(lambda: port_open(front), 10, "HAProxy to listen")
        # One player through the whole path: the login server is linked to
        # the shard and the path is up.
        wait_for(self.one_player_plays, 15, "a first player to get through")

    def one_player_plays(self):
        try:
            r = subprocess.run([os.path.join(BIN, "muta-bot"), "--login", f"127.0.0.1:{self.login_port}",
                                "--clients", "1", "--first-account", "9000000", "--rate", "10",
                                "--duration", "0.1", "--ramp", "0", "--drain", "2"],
                               cwd=ROOT, env=self.env, capture_output=True, timeout=6)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0

    def stop(self):
        """Stops every process of the run, helpers (bots, perf) first; on an
        error or Ctrl-C too, so nothing is left running."""
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                say(f"   {name} did not stop on SIGTERM; killed")
                p.kill()
                p.wait()

    def bots(self, args):
        cmd = [os.path.join(BIN, "muta-bot"), "--login", f"127.0.0.1:{self.login_port}",
               "--threads", "2", "--json", "--progress"] + args
        p = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        self.procs.append(("bots", p))
        return p

    def track(self, name, proc):
        """Stops `proc` with the rest (a perf recorder)."""
        if proc is not None:
            self.procs.append((name, proc))
        return proc


def bot_report(proc, tag):
    progress = Lines(proc.stderr, os.path.join(OUT, "logs", f"{tag}-bots.log"))
    out = Lines(proc.stdout, os.path.join(OUT, "logs", f"{tag}-bots-report.log"))
    return progress, out


# Seconds the bots get, after the ramp, to be all playing before the window
# opens anyway (an overloaded path may never get them all in).
SLACK = 8.0


def offered(clients):
    """Messages a second the load asks for, both ways: echoes and chat lines
    in; echo replies and each chat line to every player of its area out."""
    area = min(AREA, clients) if AREA else clients
    return clients * (RATE + CHAT_RATE) + clients * (RATE + CHAT_RATE * area)


def run_load(path, clients, rep, perf=None, steady=STEADY):
    """One measured run; returns its results entry."""
    tag = f"{path.split('@')[0]}{'-b' if '@' in path else ''}-{clients}-{rep}"
    ramp = max(1.0, clients / 1000.0)
    # Long enough to cover the window whenever it opens; the bots are stopped
    # (SIGINT: they drain and report) as soon as it closes.
    duration = ramp + SLACK + steady + 2
    sys_ = System(path, clients, tag)
    try:
        sys_.start()
        proxy_pid = sys_.proxy.pid if sys_.proxy else None
        idle_rss = rss_kib(proxy_pid) if proxy_pid else None
        bots = sys_.bots(["--clients", str(clients), "--rate", str(RATE),
                          "--chat-rate", str(CHAT_RATE), "--duration", f"{duration:g}",
                          "--ramp", f"{ramp:g}", "--drain", "15"])
        progress, out = bot_report(bots, tag)
        t0 = time.time()
        all_playing = False
        while time.time() < t0 + ramp + SLACK - 1:
            p = progress.last()
            if p and p.get("authenticated", 0) + p.get("errors", 0) >= clients:
                all_playing = True
                break
            time.sleep(0.1)
        start = time.time() + 1.0
        end = start + steady
        time.sleep(max(0.0, start - time.time()))
        # The window opens: latency counts from here (muta-bot's SIGUSR1).
        bots.send_signal(signal.SIGUSR1)
        cpu0 = cpu_seconds(proxy_pid) if proxy_pid else None
        threads0 = thread_stats(proxy_pid) if proxy_pid else None
        shard_threads0 = thread_stats(sys_.shard.pid)
        bot_threads0 = thread_stats(bots.pid)
        shard_cpu0 = cpu_seconds(sys_.shard.pid)
        perf_proc = sys_.track("perf", perf(proxy_pid, end - start) if perf else None)
        time.sleep(max(0.0, end - time.time()))
        cpu1 = cpu_seconds(proxy_pid) if proxy_pid else None
        threads1 = thread_stats(proxy_pid) if proxy_pid else None
        shard_threads1 = thread_stats(sys_.shard.pid)
        bot_threads1 = thread_stats(bots.pid)
        shard_cpu1 = cpu_seconds(sys_.shard.pid)
        rss = rss_kib(proxy_pid) if proxy_pid else None
        window = time.time() - start
        admin = scrape_admin(getattr(sys_, "admin_port", None))
        sleeps_per_s, runq_ms_per_s = thread_delta(threads0, threads1, window)
        _, shard_runq_ms_per_s = thread_delta(shard_threads0, shard_threads1, window)
        _, bots_runq_ms_per_s = thread_delta(bot_threads0, bot_threads1, window)
        bots.send_signal(signal.SIGINT)
        if perf_proc:
            finish(perf_proc, 30, "perf")
        finish(bots, 30, "the bots")
        out.join(timeout=5)
        report = out.last() or {}
        # The shard's per-second lines that fall inside the window; each holds
        # the counts since the one before, so the rate is their sum over the
        # time they cover (a busy shard may print late).
        stamped = sys_.stats.lines
        inside = [i for i, (t, _) in enumerate(stamped) if start + 0.5 <= t <= end + 0.5]
        msgs_per_s = 0.0
        if inside and inside[0] > 0:
            first, last = inside[0], inside[-1]
            covered_ms = stamped[last][1]["t_ms"] - stamped[first - 1][1]["t_ms"]
            msgs = sum(stamped[i][1]["msgs_in"] + stamped[i][1]["msgs_out"] for i in inside)
            msgs_per_s = msgs / max(covered_ms / 1000.0, 1e-3)
        mmsgs = msgs_per_s * window / 1e6
        lat = report.get("latency_us", {})
        return {
            "path": path,
            "clients": clients,
            "p50_us": lat.get("p50"),
            "p99_us": lat.get("p99"),
            "p999_us": lat.get("p999"),
            "msgs_per_s": round(msgs_per_s),
            "proxy_cpu_s_per_mmsg": round((cpu1 - cpu0) / mmsgs, 3) if proxy_pid and mmsgs > 0 else None,
            "proxy_rss_kib": rss,
            "proxy_rss_idle_kib": idle_rss,
            "shard_cpu_s_per_mmsg": round((shard_cpu1 - shard_cpu0) / mmsgs, 3) if mmsgs > 0 else None,
            "proxy_sleeps_per_msg": (round(sum(sleeps_per_s.values()) * window / (mmsgs * 1e6), 3)
                                     if sleeps_per_s is not None and mmsgs > 0 else None),
            "proxy_sleeps_per_s": sleeps_per_s,
            "proxy_runq_wait_ms_per_s": runq_ms_per_s,
            "shard_runq_wait_ms_per_s": shard_runq_ms_per_s,
            "bots_runq_wait_ms_per_s": bots_runq_ms_per_s,
            "offered_msgs_per_s": round(offered(clients)),
            "all_playing": all_playing,
            "max_us": lat.get("max"),
            "authenticated": report.get("authenticated"),
            "sent": report.get("sent"),
            "received": report.get("received"),
            "errors": report.get("errors"),
            "window_s": round(window, 2),
            **admin,
        }
    finally:
        sys_.stop()


def scrape_admin(port):
    """One GET /metrics while the bots still play: how long the answer took
    and the players it counted (the proxy's own count, against the bots')."""
    if not port:
        return {}
    t0 = time.time()
    try:
        text = scrape_metrics(port)
    except OSError as err:
        return {"admin_error": str(err)}
    return {"admin_scrape_ms": round((time.time() - t0) * 1000, 1),
            "admin_players": gauge(text, "players")}


def run_storm(path, clients):
    tag = f"storm-{path.split('@')[0]}{'-b' if '@' in path else ''}-{clients}"
    sys_ = System(path, clients, tag)
    try:
        sys_.start()
        bots = sys_.bots(["--clients", str(clients), "--rate", "1", "--duration", "1",
                          "--ramp", f"{max(1.0, clients / 1000.0):g}", "--storm", "--drain", "10"])
        _, out = bot_report(bots, tag)
        finish(bots, 60, "the storm's bots")
        out.join(timeout=5)
        report = out.last() or {}
        storm = report.get("storm", {})
        return {"path": path, "clients": clients, "handshakes": storm.get("handshakes"),
                "seconds": storm.get("seconds"), "per_s": storm.get("per_s"),
                "errors": report.get("errors")}
    finally:
        sys_.stop()


def micro_figure(key):
    """A machine-readable line `KEY N` of the micro-benchmarks' output."""
    try:
        with open(os.path.join(OUT, "micro.md")) as f:
            for line in f:
                if line.startswith(key + " "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def crypto_floor():
    return micro_figure("crypto_floor_ns_per_msg")


def kernel_floor():
    return micro_figure("kernel_floor_ns_per_msg")


def fmt(v, digits=0):
    """A number for the table: thin-space thousands, `digits` decimals."""
    if v is None:
        return "–"
    if digits:
        return f"{v:.{digits}f}"
    return f"{round(v):,}".replace(",", " ")


def median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def focus_summary(runs, floor, kfloor=None):
    """The targets, judged on the medians at the focus load."""
    at = [r for r in runs if r["clients"] == FOCUS]
    if not at:
        return {}
    med = {path: {k: median([r.get(k) for r in at if r["path"] == path])
                  for k in ("p50_us", "proxy_cpu_s_per_mmsg", "proxy_sleeps_per_msg")}
           for path in ("direct", "haproxy", "muta-proxy")}
    d = med["direct"]["p50_us"]
    out = {"clients": FOCUS, "runs_per_path": min(
        sum(1 for r in at if r["path"] == path) for path in ("direct", "haproxy", "muta-proxy"))}
    for path in ("haproxy", "muta-proxy"):
        p50 = med[path]["p50_us"]
        out[f"{path}_added_p50_us"] = p50 - d if p50 is not None and d is not None else None
        out[f"{path}_cpu_ns_per_msg"] = (med[path]["proxy_cpu_s_per_mmsg"] * 1000
                                         if med[path]["proxy_cpu_s_per_mmsg"] is not None else None)
        out[f"{path}_sleeps_per_msg"] = med[path]["proxy_sleeps_per_msg"]
    cpu = out.get("muta-proxy_cpu_ns_per_msg")
    out["cpu_over_crypto_floor"] = round(cpu / floor, 2) if cpu and floor else None
    out["cpu_over_crypto_and_kernel_floor"] = (round(cpu / (floor + kfloor), 2)
                                               if cpu and floor and kfloor else None)
    return out


def write_docs(results, started, elapsed):
    runs = results["runs"]
    floor = results["crypto_floor_ns_per_msg"]
    kfloor = results.get("kernel_floor_ns_per_msg")
    rows = []
    for r in runs:
        direct = median([d["p50_us"] for d in runs if d["path"] == "direct" and d["clients"] == r["clients"]])
        added = r["p50_us"] - direct if r["path"] != "direct" and r["p50_us"] is not None and direct else None
        per_client = None
        if r["proxy_rss_kib"] is not None and r["proxy_rss_idle_kib"] is not None:
            per_client = (r["proxy_rss_kib"] - r["proxy_rss_idle_kib"]) / r["clients"]
        cpu = r["proxy_cpu_s_per_mmsg"]
        share = 100 * r["msgs_per_s"] / r["offered_msgs_per_s"] if r["offered_msgs_per_s"] else 0
        rows.append(
            f"| {r['path']} | {r['clients']} | {fmt(r['p50_us'])} | {fmt(r['p99_us'])} | {fmt(r['p999_us'])} "
            f"| {'–' if added is None else f'{added:+d}'} "
            f"| {fmt(r['msgs_per_s'])} ({share:.0f} %){'' if r['all_playing'] else ' ¹'} "
            f"| {fmt(cpu, 2)} | {fmt(cpu * 1000 / floor, 1) if cpu is not None and floor else '–'} "
            f"| {fmt(r['proxy_rss_kib'])} | {fmt(per_client, 1)} "
            f"| {fmt(r.get('proxy_sleeps_per_msg'), 2)} "
            f"| {fmt(r['shard_cpu_s_per_mmsg'], 2)} | {r['errors'] if r['errors'] is not None else '?'} |")
    storms = "\n".join(
        f"| {s['path']} | {s['clients']} | {fmt(s['per_s'])} | {s['seconds']} | {s['errors']} |"
        for s in results.get("storms", []))
    f = results.get("focus", {})
    verdict = ""
    if f:
        verdict = f"""
## The targets, at {f['clients']} clients (medians of {f['runs_per_path']} runs per path)

| | HAProxy | muta-proxy |
|---|---|---|
| added p50 latency over direct | {fmt(f.get('haproxy_added_p50_us'))} µs | {fmt(f.get('muta-proxy_added_p50_us'))} µs |
| proxy CPU per forwarded message | {fmt(f.get('haproxy_cpu_ns_per_msg'))} ns | {fmt(f.get('muta-proxy_cpu_ns_per_msg'))} ns |
| proxy threads' sleeps per message | {fmt(f.get('haproxy_sleeps_per_msg'), 2)} | {fmt(f.get('muta-proxy_sleeps_per_msg'), 2)} |

muta-proxy's CPU per message is {f.get('cpu_over_crypto_floor')} × the crypto floor
({fmt(floor)} ns; target: within 2 ×), and
{f.get('cpu_over_crypto_and_kernel_floor')} × the crypto floor plus the kernel floor
({fmt(floor)} + {fmt(kfloor)} ns). Added p50 latency target (no worse
than HAProxy's): {"met" if (f.get('muta-proxy_added_p50_us') is not None and f.get('haproxy_added_p50_us') is not None and f['muta-proxy_added_p50_us'] <= f['haproxy_added_p50_us']) else "not met"} in this run.
"""
    text = f"""# Benchmark results

Written by `make bench` on {started} in {elapsed:.0f} s; do not edit by hand.
Machine: {machine()}. The load, the columns and how to read them:
[performance.md](performance.md). Raw figures: `target/bench/results.json`.

Load: each client sends {RATE:g} echo messages and {CHAT_RATE:g} chat line(s)
a second; the shard sends each chat line to the {AREA} players of the
sender's area. Figures over a {STEADY:g} s window once every client plays.
Bots, shard, login server and proxy share the machine's {os.cpu_count()} cores.
{verdict}
## Every run

| path | clients | p50 µs | p99 µs | p99.9 µs | added p50 µs | msgs/s (of offered) | proxy CPU s / M msgs | × crypto floor | proxy RSS KiB | RSS KiB / client | proxy sleeps / msg | shard CPU s / M msgs | errors |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

¹ Not every client was playing when the window opened (the path was
overloaded while they logged in).

Crypto floor (libsodium pull + push of one client message, from the
cryptchan micro-benchmark of the same run): {fmt(floor)} ns. Kernel floor
(one 64-byte `write` and its `read` over loopback TCP, reader awake, from
the net_floor micro-benchmark of the same run): {fmt(kfloor)} ns.

## Connection storm

Every client logs in first; then all connect at once. Handshakes (key
exchange, auth proof, the shard's welcome) per second, from the first
connect to the last welcome.

| path | clients | handshakes/s | seconds | errors |
|---|---|---|---|---|
{storms}

![echo round trip per path and load](bench-latency.png)
"""
    with open(os.path.join(DOCS, "benchmarks.md"), "w") as f:
        f.write(text)


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} vCPU {cpu}"


def plot(results):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("== matplotlib missing: no plot (pip install matplotlib)")
        return
    runs = results["runs"]
    loads = sorted({r["clients"] for r in runs})
    paths = [p for p in ["direct", "haproxy", "muta-proxy"] if any(r["path"] == p for r in runs)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    colors = {"direct": "#4c72b0", "haproxy": "#dd8452", "muta-proxy": "#55a868"}
    for ax, (key, title) in zip(axes, [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")]):
        width = 0.8 / max(1, len(paths))
        for i, path in enumerate(paths):
            ys = []
            for n in loads:
                vals = [r[key] for r in runs if r["path"] == path and r["clients"] == n and r[key]]
                ys.append(sorted(vals)[len(vals) // 2] / 1000 if vals else 0)
            xs = [j + (i - (len(paths) - 1) / 2) * width for j in range(len(loads))]
            ax.bar(xs, ys, width, label=path if ax is axes[0] else None, color=colors.get(path))
            for x, y in zip(xs, ys):
                if not y:  # not run at this load (the fd limit), or no report
                    ax.annotate("no data", (x, 0), xycoords=("data", "axes fraction"),
                                xytext=(0, 3), textcoords="offset points", rotation=90,
                                ha="center", va="bottom", fontsize=7, color="#666666")
        ax.set_xticks(range(len(loads)))
        ax.set_xticklabels([str(n) for n in loads])
        ax.set_xlabel("concurrent clients")
        ax.set_title(f"echo round trip, {title}")
        ax.set_yscale("log")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("milliseconds (log scale)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(DOCS, "bench-latency.png"), dpi=100)
    say(f"== wrote {os.path.relpath(os.path.join(DOCS, 'bench-latency.png'), ROOT)}")


def main_bench():
    os.makedirs(OUT, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    t0 = time.time()
    fds = raise_fd_limit()
    paths = list(PATHS)
    if "haproxy" in paths and not ensure_haproxy():
        say("== HAProxy cannot be installed here: its path is skipped")
        paths.remove("haproxy")
    # A first run on a cold machine is slow whatever the path (page cache,
    # CPU frequency, allocator warm-up): one short unrecorded run first.
    say("== warm-up (not recorded)")
    run_load(paths[-1], 100, "warm-up", steady=3)
    runs = []
    for n in LOADS:
        for rep in range(FOCUS_REPEAT if n == FOCUS else REPEAT):
            for path in paths:
                # HAProxy holds two sockets per client, the others one.
                need = (2 if path == "haproxy" else 1) * n + 1000
                if need > fds:
                    say(f"== skipping {path} at {n} clients: it needs {need} fds, the limit is {fds}")
                    continue
                say(f"== {path}, {n} clients (run {rep + 1})")
                entry = run_load(path, n, rep)
                say("   " + json.dumps(entry))
                runs.append(entry)
    storms = []
    if STORM > 0 and 2 * STORM + 1000 > fds:
        say(f"== skipping the storm: {STORM} clients need more than {fds} fds")
    elif STORM > 0:
        for path in paths:
            say(f"== connection storm: {path}, {STORM} clients")
            s = run_storm(path, STORM)
            say("   " + json.dumps(s))
            storms.append(s)
    proxy_storm = next((s["per_s"] for s in storms if s["path"] == "muta-proxy"), None)
    floor, kfloor = crypto_floor(), kernel_floor()
    results = {
        "runs": runs,
        "handshakes_per_s": proxy_storm,
        "crypto_floor_ns_per_msg": floor,
        "kernel_floor_ns_per_msg": kfloor,
        "focus": focus_summary(runs, floor, kfloor),
        "storms": storms,
        "load": {"rate": RATE, "chat_rate": CHAT_RATE, "area_players": AREA, "steady_s": STEADY},
        "machine": machine(),
        "date": started,
    }
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    say(f"== wrote {os.path.relpath(os.path.join(OUT, 'results.json'), ROOT)}")
    write_docs(results, started, time.time() - t0)
    say(f"== wrote {os.path.relpath(os.path.join(DOCS, 'benchmarks.md'), ROOT)}")
    plot(results)
    # Bots that failed under overload are a result (the table shows them);
    # a run that produced no report at all is a broken benchmark.
    broken = [r for r in runs if r["p50_us"] is None]
    if os.environ.get("BENCH_STRICT") == "1":
        # The smoke run: a load this small must go through without a failure.
        broken += [r for r in runs if r["errors"] or not r["msgs_per_s"]]
        broken += [s for s in storms if s["errors"] or not s["per_s"]]
        # The admin endpoint answered under the load, and counted every bot.
        broken += [r for r in runs if "admin_error" in r
                   or ("admin_players" in r and r["admin_players"] != r["clients"])]
    if broken:
        say(f"== broken runs: {broken}")
    return 1 if broken else 0


def main_perf():
    """`make perf`: the muta-proxy path under load, recorded by perf."""
    os.makedirs(OUT, exist_ok=True)
    raise_fd_limit()
    clients = int(os.environ.get("PERF_CLIENTS", "1000"))
    data = os.path.join(OUT, "perf.data")
    tool = os.environ.get("PERF_TOOL") or ("perf" if perf_works() else "callgrind")
    say(f"== profiling muta-proxy at {clients} clients with {tool}")
    if tool == "perf":
        def record(pid, seconds):
            return subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g",
                                     "-p", str(pid), "-o", data, "--", "sleep", f"{seconds:.1f}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        entry = run_load("muta-proxy", clients, 0, perf=record)
        say("   " + json.dumps(entry))
        report = os.path.join(OUT, "perf-report.txt")
        base = ["perf", "report", "-i", data, "--stdio", "-g", "none"]
        views = [
            ("CPU by thread", ["--no-children", "--sort", "comm"]),
            ("CPU by binary (kernel, muta-proxy, libc)", ["--no-children", "--sort", "dso"]),
            ("Self time by function (flat profile)", ["--no-children", "--sort", "dso,symbol",
                                                       "--percent-limit", "0.3"]),
            ("Inclusive time (the function and what it calls)", ["--children", "--sort", "symbol",
                                                                  "--percent-limit", "2"]),
        ]
        with open(report, "w") as f:
            f.write(f"# make perf: muta-proxy at {clients} clients\n# {json.dumps(entry)}\n")
            for title, args in views:
                f.write(f"\n## {title}\n\n")
                f.flush()
                r = subprocess.run(base + args, capture_output=True, text=True)
                f.write("\n".join(l for l in r.stdout.splitlines() if l.strip() and not l.startswith("#")))
                f.write("\n")
        folded = os.path.join(OUT, "perf-folded.txt")
        with open(folded, "w") as f:
            script = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True)
            f.write(fold_stacks(script.stdout))
        say(f"== wrote {os.path.relpath(report, ROOT)} (flat profile) and "
            f"{os.path.relpath(folded, ROOT)} (folded stacks, for flamegraph.pl or speedscope)")
        for line in top_entries(report):
            say("   " + line)
    else:
        say("== perf is not usable here: falling back to valgrind --tool=callgrind")
        say("   (instruction counts; the proxy runs ~50x slower under valgrind, so the load is small)")
        return callgrind_run(min(clients, 100))
    return 0


def perf_works():
    if not shutil.which("perf"):
        return False
    r = subprocess.run(["perf", "record", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"],
                       capture_output=True)
    return r.returncode == 0


def fold_stacks(script):
    """`perf script` output to folded stacks (`a;b;c count`)."""
    counts = {}
    stack = []
    for line in script.splitlines() + [""]:
        if not line.strip():
            if stack:
                key = ";".join(reversed(stack))
                counts[key] = counts.get(key, 0) + 1
            stack = []
            continue
        if line.startswith((" ", "\t")):
            parts = line.split()
            if len(parts) >= 2:
                sym = parts[1].split("+0x")[0]
                stack.append(sym)
        else:
            stack = [line.split()[0]]  # the command (thread) name
    return "\n".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) + "\n"


def top_entries(report, n=12):
    """The first lines of the flat profile, for the terminal."""
    out, inside = [], False
    with open(report) as f:
        for line in f:
            if line.startswith("## "):
                inside = line.startswith("## Self time")
                continue
            if inside and line.strip():
                out.append(" ".join(line.split()))
            if len(out) >= n:
                break
    return out


def callgrind_run(clients):
    if not shutil.which("valgrind"):
        say("== neither perf nor valgrind is available: nothing to profile with")
        return 1
    out = os.path.join(OUT, "callgrind.out")
    orig_spawn = System.spawn

    def spawn(self, name, args, stdout=subprocess.DEVNULL):
        if name == "proxy":
            args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + args
        return orig_spawn(self, name, args, stdout)

    System.spawn = spawn
    entry = run_load("muta-proxy", clients, 0)
    say("   " + json.dumps(entry))
    report = os.path.join(OUT, "callgrind-report.txt")
    with open(report, "w") as f:
        subprocess.run(["callgrind_annotate", out], stdout=f, stderr=subprocess.DEVNULL)
    say(f"== wrote {os.path.relpath(report, ROOT)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main_perf() if "--perf" in sys.argv else main_bench())
    except KeyboardInterrupt:
        sys.exit(130)
