#!/usr/bin/env python3
"""`make bench`, the OTC part (seed 002): OTClient-style bots through two
HAProxy forwarders (send-proxy-v2) into muta-proxy's [otc] listener and on
to the game-server stand-in, against the same bots straight to the stand-in.

  otc-direct      bots -> muta-otserv (plain Tibia framing)
  muta-proxy-otc  bots -> 2 x HAProxy -> muta-proxy [otc] -> muta-otserv
                  (each bot a path to both forwarders, its session on both:
                  every packet crosses twice, as with the real client)

For each number of sessions (OTC_LOADS), the two paths run one after the
other on fresh processes. Every bot has its own address (127.2.x.y), as
players do, so the proxy's per-address limits stay at their defaults. Each
bot sends OTC_RATE packets a second, echoed by the stand-in. Measured:

  p50_us, p99_us        packet round trip over the whole run (muta-bot's
                        report; every bot's packets from its greeting on)
  msgs_per_s            game packets through the path a second, both ways,
                        over the window (bots' sends and echoes: the run
                        only counts if none was lost)
  proxy_cpu_s_per_mmsg  muta-proxy's CPU seconds per million of them over
                        the window (the forwarders' in haproxy_cpu_...)
  proxy_rss_kib         muta-proxy's resident memory at the window's end,
  proxy_rss_idle_kib    ... and before the bots connected;
  rss_per_session_kib   their difference over the sessions

Adds its entries to the `runs` of target/bench/results.json (path
`muta-proxy-otc` and `otc-direct`) and its table to docs/benchmarks.md, between the markers
`<!-- otc -->` and `<!-- /otc -->`.
"""

import json
import os
import signal
import subprocess
import time

from procs import (cpu_seconds, ensure_haproxy, finish, free_port, port_open, raise_fd_limit,
                   rss_kib, say, wait_for)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, os.environ.get("BENCH_OUT", os.path.join("target", "bench")))
BIN = os.path.join(ROOT, os.environ.get("BENCH_BIN", os.path.join("target", "release")))
DOCS = os.path.join(ROOT, os.environ.get("BENCH_DOCS", "docs"))
LOADS = [int(x) for x in os.environ.get("OTC_LOADS", "100,1000,5000").split(",") if x]
RATE = float(os.environ.get("OTC_RATE", "10"))
STEADY = float(os.environ.get("OTC_SECONDS", "8"))
PATHS = ["otc-direct", "muta-proxy-otc"]


def bind_range(n):
    """The addresses of n bots: 127.2.0.1 on (any 127/8 address is loopback)."""
    return f"127.2.0.1-127.2.{n // 256}.{n % 256}"


class Run:
    def __init__(self, path, sessions):
        self.path, self.sessions = path, sessions
        self.tag = f"{path}-{sessions}"
        self.procs = []
        self.logdir = os.path.join(OUT, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))

    def spawn(self, name, args, stdout=subprocess.DEVNULL):
        log = open(os.path.join(self.logdir, f"otc-{self.tag}-{name}.log"), "w")
        p = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=stdout, stderr=log,
                             start_new_session=True)
        self.procs.append((name, p))
        return p

    def start(self):
        game = free_port()
        self.spawn("otserv", [os.path.join(BIN, "muta-otserv"), "--listen", f"127.0.0.1:{game}",
                              "--max-conns", str(self.sessions + 1000)])
        wait_for(lambda: port_open(game), 10, "muta-otserv to listen")
        self.game, self.proxy, self.fronts = game, None, []
        if self.path == "otc-direct":
            return
        listen = free_port()
        cfg = f"""[proxy]
log_level = "warn"

[otc]
listen = "127.0.0.1:{listen}"
allowed_ports = [{game}]
proxy_protocol = "required"
trusted_forwarders = ["127.0.0.1/32"]
max_paths = {2 * self.sessions + 1000}
max_sessions = {self.sessions + 1000}
"""
        cfg_path = os.path.join(OUT, f"otc-{self.tag}-proxy.cfg")
        shards_path = os.path.join(OUT, f"otc-{self.tag}-shards.cfg")
        with open(cfg_path, "w") as f:
            f.write(cfg)
        with open(shards_path, "w") as f:
            f.write("# none: an OTC-only proxy\n")
        self.proxy = self.spawn("proxy", [os.path.join(BIN, "muta-proxy"),
                                          "--config", cfg_path, "--shards", shards_path])
        wait_for(lambda: port_open(listen), 10, "muta-proxy's OTC listener")
        for i in range(2):
            front = free_port()
            hcfg = os.path.join(OUT, f"otc-{self.tag}-haproxy-{i}.cfg")
            # maxconn counts the front's connections; each has a back one
            # too: ~2 descriptors apiece, within a 20,000 fd limit at 5,000.
            with open(hcfg, "w") as f:
                f.write(f"""global
    maxconn {self.sessions + 500}
defaults
    mode tcp
    maxconn {self.sessions + 500}
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend players
    bind 127.0.0.1:{front}
    default_backend proxy
backend proxy
    server proxy 127.0.0.1:{listen} send-proxy-v2
""")
            self.spawn(f"haproxy-{i}", ["haproxy", "-db", "-f", hcfg])
            wait_for(lambda: port_open(front), 10, "HAProxy to listen")
            self.fronts.append(front)

    def bots(self, duration, ramp):
        target = (["--otc-direct", f"127.0.0.1:{self.game}"] if self.path == "otc-direct" else
                  ["--otc", ",".join(f"127.0.0.1:{p}" for p in self.fronts)])
        cmd = [os.path.join(BIN, "muta-bot")] + target + [
            "--sessions", str(self.sessions), "--port", str(self.game), "--rate", f"{RATE:g}",
            "--duration", f"{duration:g}", "--ramp", f"{ramp:g}", "--drain", "10",
            "--threads", "2", "--bind-ips", bind_range(self.sessions), "--json"]
        p = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        self.procs.append(("bots", p))
        return p

    def stop(self):
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


def pids(run, prefix):
    return [p.pid for name, p in run.procs if name.startswith(prefix)]


def run_load(path, sessions):
    ramp = max(1.0, sessions / 1000.0)
    duration = ramp + 3 + STEADY + 2
    run = Run(path, sessions)
    try:
        run.start()
        proxy = run.proxy.pid if run.proxy else None
        idle_rss = rss_kib(proxy) if proxy else None
        bots = run.bots(duration, ramp)
        # The window: once the ramp is over and every bot sends.
        start = time.time() + ramp + 3
        time.sleep(max(0.0, start - time.time()))
        cpu0 = cpu_seconds(proxy) if proxy else None
        h0 = sum(cpu_seconds(p) for p in pids(run, "haproxy"))
        time.sleep(STEADY)
        cpu1 = cpu_seconds(proxy) if proxy else None
        h1 = sum(cpu_seconds(p) for p in pids(run, "haproxy"))
        rss = rss_kib(proxy) if proxy else None
        window = STEADY
        out, err = bots.communicate(timeout=duration + 60)
        report = {}
        for line in out.decode().splitlines():
            if line.startswith("{"):
                report = json.loads(line)
        if err:
            with open(os.path.join(OUT, "logs", f"otc-{run.tag}-bots.log"), "wb") as f:
                f.write(err)
        ok = bool(report) and report["lost"] == 0 and report["errors"] == 0 and \
            report["received"] == report["sent"] and report["duplicated"] == 0 and \
            report["reordered"] == 0 and report["wrong_addr"] == 0
        msgs_per_s = 2 * sessions * RATE if ok else None
        mmsgs = (msgs_per_s or 0) * window / 1e6
        lat = report.get("latency_us", {})
        return {
            "path": path,
            "clients": sessions,
            "p50_us": lat.get("p50"),
            "p99_us": lat.get("p99"),
            "p999_us": lat.get("p999"),
            "msgs_per_s": round(msgs_per_s) if msgs_per_s else None,
            "proxy_cpu_s_per_mmsg": round((cpu1 - cpu0) / mmsgs, 3) if proxy and mmsgs else None,
            "haproxy_cpu_s_per_mmsg": round((h1 - h0) / mmsgs, 3) if proxy and mmsgs else None,
            "proxy_rss_kib": rss,
            "proxy_rss_idle_kib": idle_rss,
            "rss_per_session_kib": round((rss - idle_rss) / sessions, 2) if proxy else None,
            "ok": ok,
            "report": report,
            "window_s": window,
        }
    finally:
        run.stop()


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}" if isinstance(v, float) and digits else f"{v:,}" if isinstance(v, int) \
        else f"{v:,.0f}" if isinstance(v, float) else str(v)


def table(results):
    rows = ["| sessions | path | p50 µs | p99 µs | added p50 / p99 µs | msgs/s offered | proxy CPU s/Mmsg "
            "| forwarders' CPU s/Mmsg | proxy RSS KiB | RSS/session KiB | all delivered |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in LOADS:
        base = next((r for r in results if r["clients"] == n and r["path"] == "otc-direct"), None)
        for r in (x for x in results if x["clients"] == n):
            added = "–"
            if r["path"] != "otc-direct" and base and r["p50_us"] is not None and base["p50_us"]:
                added = f"{r['p50_us'] - base['p50_us']:,} / {r['p99_us'] - base['p99_us']:,}"
            rows.append(f"| {n:,} | {r['path']} | {fmt(r['p50_us'])} | {fmt(r['p99_us'])} | {added} "
                        f"| {fmt(r['msgs_per_s'])} | {fmt(r['proxy_cpu_s_per_mmsg'], 3)} "
                        f"| {fmt(r['haproxy_cpu_s_per_mmsg'], 3)} | {fmt(r['proxy_rss_kib'])} "
                        f"| {fmt(r['rss_per_session_kib'], 2)} | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(rows)


def write_docs(results, started):
    text = f"""<!-- otc -->
## OTC: OTClient multi-path sessions (seed 002)

`scripts/bench_otc.py`, {time.strftime('%Y-%m-%d', time.gmtime(started))}: OTClient-style bots
(`muta-bot --otc`), each with its own address, a path to each of two HAProxy forwarders
(`send-proxy-v2`) and its session on both, into muta-proxy's `[otc]` listener and on to
`muta-otserv`; against the same bots straight to `muta-otserv` (`otc-direct`). {RATE:g}
packets a second per bot, echoed; latency over the whole run, CPU and msgs/s over a
{STEADY:g} s window. Every packet crosses the proxy twice in each direction (once per
path; the copy is dropped), so msgs/s counts packets the bots sent and got back.
RSS per session: the proxy's resident memory at the window's end less before the bots
came, over the sessions (two paths and one game connection each). "msgs/s offered" is
what the bots sent and got back (every packet was delivered, after the drain if late);
CPU per message divides by it.

One 2-core machine runs the bots, both forwarders, the proxy and the stand-in. Each
bot packet costs the host four loopback writes and reads through the forwarders and
the proxy (two paths) where the baseline costs one, so past about 1,000 sessions the
host is saturated and latency measures its run queue (the baseline too, at 5,000: the
bots themselves); the proxy's own CPU per message and memory per session are the
figures that carry over to a deployment, where forwarders and players are elsewhere.

{table(results)}
<!-- /otc -->
"""
    path = os.path.join(DOCS, "benchmarks.md")
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if "<!-- otc -->" in old:
        head, rest = old.split("<!-- otc -->", 1)
        tail = rest.split("<!-- /otc -->", 1)[1].lstrip("\n")
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    with open(path, "w") as f:
        f.write(new)


def main():
    started = time.time()
    if "--docs-only" in os.sys.argv:
        with open(os.path.join(OUT, "results.json")) as f:
            merged = json.load(f)
        write_docs([e for e in merged.get("runs", merged.get("results", []))
                    if e.get("path") in PATHS], started)
        return
    os.makedirs(OUT, exist_ok=True)
    if not ensure_haproxy():
        raise SystemExit("bench_otc: haproxy is needed")
    raise_fd_limit()
    results = []
    for n in LOADS:
        for path in PATHS:
            say(f"== otc: {path}, {n} sessions")
            r = run_load(path, n)
            say(f"   p50 {r['p50_us']} us, p99 {r['p99_us']} us, cpu {r['proxy_cpu_s_per_mmsg']} s/Mmsg, "
                f"rss/session {r['rss_per_session_kib']} KiB, ok {r['ok']}")
            results.append(r)
    path = os.path.join(OUT, "results.json")
    # Into the load benchmark's file (bench.py writes it first), beside its
    # runs: the same keys where they mean the same.
    merged = {"runs": []}
    if os.path.exists(path):
        with open(path) as f:
            merged = json.load(f)
    merged.pop("results", None)  # (an earlier layout of this script)
    runs = [e for e in merged.get("runs", []) if e.get("path") not in PATHS]
    merged["runs"] = runs + results
    with open(path, "w") as f:
        json.dump(merged, f, indent=1)
    write_docs(results, started)
    say(f"== otc: wrote {os.path.relpath(path, ROOT)} and docs/benchmarks.md")
    if os.environ.get("BENCH_STRICT") and not all(r["ok"] for r in results):
        raise SystemExit("bench_otc: a run lost packets")


if __name__ == "__main__":
    main()
