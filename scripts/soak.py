#!/usr/bin/env python3
"""`make soak`: the MUTA system played for 10 minutes while it is operated.

On loopback: one `muta-shard`, one `muta-login`, two `muta-proxy` and
SOAK_BOTS (1,000) `muta-bot --rejoin` players (SOAK_RATE echoes a second
each), which leave and come back at random (`--churn`, about once every
SOAK_CHURN_EVERY seconds each). Meanwhile the shard is restarted once a
minute (SIGTERM, then started again on the same ports: every player is cut
and must come back; the first at 30 s) and each proxy gets a SIGHUP once a
minute (15 s after each restart), every other one changing a live key
(`client.idle_timeout_ms`), the others the same file. Every SOAK_SAMPLE
seconds each process's RSS is read.

It passes when: no echo was lost, duplicated or reordered on a connection
that was not cut (the bots' own count), every bot cut came back (none still
out 30 s after its cut when the run ends), no bot failed, every reload was
applied, and each proxy's RSS at the end is within 5 % of its level after
the first minute. Written to target/soak/results.json and docs/soak.md (with
docs/soak-rss.svg, the RSS over time). Bounded to 12 minutes: SOAK_SECONDS
(600) of play, a start-up and the bots' drain.
"""

import json
import os
import signal
import subprocess
import sys
import time

from procs import Lines, free_port, port_open, raise_fd_limit, rss_kib, say, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, os.environ.get("SOAK_BIN", os.path.join("target", "release")))
OUT = os.path.join(ROOT, os.environ.get("SOAK_OUT", os.path.join("target", "soak")))
DOCS = os.path.join(ROOT, os.environ.get("SOAK_DOCS", "docs"))
BOTS = int(os.environ.get("SOAK_BOTS", "1000"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
RATE = float(os.environ.get("SOAK_RATE", "2"))
CHURN_EVERY = float(os.environ.get("SOAK_CHURN_EVERY", "120"))
EVERY = float(os.environ.get("SOAK_EVERY", "60"))
SAMPLE = float(os.environ.get("SOAK_SAMPLE", "10"))
RAMP = 10.0
RSS_TOLERANCE = 0.05


class Soak:
    def __init__(self):
        self.logdir = os.path.join(OUT, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.procs = {}
        self.shard_proxy, self.shard_login = free_port(), free_port()
        self.login_port = free_port()
        self.proxy_ports = [free_port(), free_port()]
        self.restarts, self.hups = [], []
        self.generation = 0

    def spawn(self, name, args, stdout=subprocess.DEVNULL, stderr=None):
        log = open(os.path.join(self.logdir, f"{name}.log"), "a")
        p = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=stdout,
                             stderr=stderr if stderr is not None else log,
                             start_new_session=True)
        self.procs[name] = p
        return p

    def start_shard(self):
        self.spawn("shard", [os.path.join(BIN, "muta-shard"),
                             "--proxy-listen", f"127.0.0.1:{self.shard_proxy}",
                             "--login-listen", f"127.0.0.1:{self.shard_login}"])
        wait_for(lambda: port_open(self.shard_proxy), 10, "muta-shard to listen")

    def proxy_cfg(self, i):
        with open(os.path.join(ROOT, "proxy.cfg")) as f:
            cfg = f.read()
        port = self.proxy_ports[i]
        idle = 60000 + 1000 * (self.generation % 2)
        for old, new in [
                ('listen = "0.0.0.0:7702"', f'listen = "127.0.0.1:{port}"'),
                ('public_address = "127.0.0.1:7702"', f'public_address = "127.0.0.1:{port}"'),
                # Every bot connects from 127.0.0.1.
                ("max_conns_per_addr = 32", "max_conns_per_addr = 100000"),
                ("new_conns_per_addr_per_s = 5", "new_conns_per_addr_per_s = 100000"),
                ("new_conns_per_addr_burst = 20", "new_conns_per_addr_burst = 100000"),
                ("max_clients = 1024", "max_clients = 4096"),
                ("idle_timeout_ms = 60000", f"idle_timeout_ms = {idle}")]:
            if old not in cfg:
                raise RuntimeError(f"proxy.cfg no longer has `{old}`: update scripts/soak.py")
            cfg = cfg.replace(old, new, 1)
        with open(os.path.join(OUT, f"proxy-{i}.cfg"), "w") as f:
            f.write(cfg)

    def start(self):
        self.start_shard()
        self.spawn("login", [os.path.join(BIN, "muta-login"),
                             "--listen", f"127.0.0.1:{self.login_port}",
                             "--shard", f"127.0.0.1:{self.shard_login}",
                             "--create-accounts", "--pwhash-cost", "min",
                             "--max-clients", "8192"])
        wait_for(lambda: port_open(self.login_port), 10, "muta-login to listen")
        with open(os.path.join(OUT, "shards.cfg"), "w") as f:
            f.write(f"shard = 127.0.0.1:{self.shard_proxy}\n")
        for i in range(2):
            self.proxy_cfg(i)
            self.spawn(f"proxy-{i}", [os.path.join(BIN, "muta-proxy"),
                                      "--config", os.path.join(OUT, f"proxy-{i}.cfg"),
                                      "--shards", os.path.join(OUT, "shards.cfg")])
        for port in self.proxy_ports:
            wait_for(lambda port=port: port_open(port), 10, "muta-proxy to listen")
        time.sleep(2.5)  # both proxies logged in to the shard
        self.bots = self.spawn("bots", [
            os.path.join(BIN, "muta-bot"), "--login", f"127.0.0.1:{self.login_port}",
            "--clients", str(BOTS), "--rate", str(RATE), "--duration", str(SECONDS),
            "--ramp", str(RAMP), "--drain", "5", "--rejoin", "--churn", str(1.0 / CHURN_EVERY),
            "--json", "--progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.bot_lines = Lines(self.bots.stderr, os.path.join(self.logdir, "bots.log"))
        self.bot_report = Lines(self.bots.stdout, os.path.join(self.logdir, "bots-report.log"))

    def restart_shard(self, t):
        p = self.procs["shard"]
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
        self.start_shard()
        self.restarts.append(round(t, 1))
        say(f"[{t:5.0f}s] shard restarted")

    def reload_proxies(self, t):
        self.generation += 1
        for i in range(2):
            self.proxy_cfg(i)  # every other reload changes client.idle_timeout_ms
            self.procs[f"proxy-{i}"].send_signal(signal.SIGHUP)
        self.hups.append(round(t, 1))
        say(f"[{t:5.0f}s] SIGHUP to both proxies (reload {self.generation})")

    def sample(self, t):
        row = {"t": round(t, 1)}
        for name, p in self.procs.items():
            if p.poll() is None:
                row[name] = rss_kib(p.pid)
        return row

    def stop(self):
        for name, p in self.procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in self.procs.items():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def run_soak(soak):
    samples, t0 = [], time.time()
    # The first minute holds one of each disruption (a restart at 30 s, a
    # reload at 45 s), so the level "after the first minute" that RSS is
    # held to is the level of the system as it is operated, not before.
    next_sample, next_restart, next_hup = 0.0, EVERY / 2, EVERY * 3 / 4
    end = RAMP + SECONDS
    while soak.bots.poll() is None:
        t = time.time() - t0
        if t >= next_sample:
            samples.append(soak.sample(t))
            progress = soak.bot_lines.last() or {}
            say(f"[{t:5.0f}s] rss {json.dumps({k: v for k, v in samples[-1].items() if k != 't'})}"
                f" | bots: {progress.get('authenticated', 0)} welcomed,"
                f" {progress.get('received_per_s', 0)} echoes/s")
            next_sample += SAMPLE
        # No disruption in the last minute: the cut bots get time to come
        # back before the end.
        if t >= next_restart and t < end - EVERY:
            soak.restart_shard(t)
            next_restart += EVERY
        if t >= next_hup and t < end - EVERY / 2:
            soak.reload_proxies(t)
            next_hup += EVERY
        time.sleep(0.2)
    samples.append(soak.sample(time.time() - t0))
    return samples


def verdict(results):
    failed = []
    report = results.get("bots") or {}
    rejoin = report.get("rejoin") or {}
    if not report:
        return ["the bots printed no report"]
    for key in ("duplicated", "reordered", "not_back"):
        if rejoin.get(key, 1) != 0:
            failed.append(f"{key} = {rejoin.get(key)}")
    if report.get("lost", 1) != 0:
        failed.append(f"lost = {report.get('lost')}")
    if report.get("errors", 1) != 0:
        failed.append(f"{report.get('errors')} bots failed")
    for name, r in results["rss"].items():
        if r.get("within_tolerance") is False:
            failed.append(f"{name} RSS {r['after_first_minute_kib']} -> {r['end_kib']} KiB")
    for name, applied in results["reloads_applied"].items():
        if applied < len(results["hups_at_s"]):
            failed.append(f"{name}: {applied} of {len(results['hups_at_s'])} reloads applied")
    return failed


def rss_summary(samples):
    out = {}
    for name in ("proxy-0", "proxy-1", "shard", "login", "bots"):
        series = [(s["t"], s[name]) for s in samples if name in s]
        if not series:
            continue
        first_minute = next((v for t, v in series if t >= 60), series[-1][1])
        end = series[-1][1]
        entry = {"after_first_minute_kib": first_minute, "end_kib": end,
                 "max_kib": max(v for _, v in series)}
        if name.startswith("proxy"):
            entry["within_tolerance"] = abs(end - first_minute) <= RSS_TOLERANCE * first_minute
        out[name] = entry
    return out


def svg_plot(samples, restarts, hups):
    """The RSS of each process over time, as a small SVG line chart."""
    names = [n for n in ("proxy-0", "proxy-1", "shard", "login", "bots")
             if any(n in s for s in samples)]
    colors = {"proxy-0": "#d62728", "proxy-1": "#ff7f0e", "shard": "#1f77b4",
              "login": "#2ca02c", "bots": "#7f7f7f"}
    w, h, left, bottom, top = 760, 360, 70, 40, 20
    tmax = max(s["t"] for s in samples) or 1
    vmax = max(s.get(n, 0) for s in samples for n in names) / 1024 or 1
    x = lambda t: left + (w - left - 20) * t / tmax
    y = lambda kib: h - bottom - (h - bottom - top) * (kib / 1024) / vmax
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{w}" height="{h}" fill="white"/>']
    for t in restarts:
        parts.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{h - bottom}" '
                     f'stroke="#bbb" stroke-dasharray="3,3"/>')
    for i in range(5):
        v = vmax * i / 4
        parts.append(f'<text x="{left - 6}" y="{y(v * 1024) + 4:.1f}" text-anchor="end">'
                     f'{v:.1f} MiB</text>')
    for i in range(6):
        t = tmax * i / 5
        parts.append(f'<text x="{x(t):.1f}" y="{h - bottom + 16}" text-anchor="middle">'
                     f'{t:.0f} s</text>')
    parts.append(f'<line x1="{left}" y1="{h - bottom}" x2="{w - 20}" y2="{h - bottom}" stroke="black"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>')
    for k, n in enumerate(names):
        pts = " ".join(f"{x(s['t']):.1f},{y(s[n]):.1f}" for s in samples if n in s)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colors[n]}" stroke-width="1.5"/>')
        parts.append(f'<text x="{left + 10 + 95 * k}" y="{top + 2}" fill="{colors[n]}">{n}</text>')
    parts.append(f'<text x="{w - 20}" y="{top + 2}" text-anchor="end" fill="#888">'
                 f'dashed: shard restarts</text></svg>')
    return "\n".join(parts) + "\n"


def write_docs(results, started, elapsed):
    r = results.get("bots") or {}
    j = r.get("rejoin") or {}
    lines = [
        "# The soak (`make soak`)", "",
        f"Written by `make soak` (`scripts/soak.py`) on {started}, in {elapsed:.0f} s, on "
        f"{os.cpu_count()} CPUs. {BOTS} `muta-bot --rejoin` players (echo {RATE:g}/s each) play "
        f"through two `muta-proxy` for {SECONDS:.0f} s, each leaving on purpose about every "
        f"{CHURN_EVERY:.0f} s and coming back; the shard is restarted every {EVERY:.0f} s "
        f"(at {', '.join(f'{t:.0f}' for t in results['restarts_at_s'])} s: every player is cut "
        f"and comes back) and each proxy gets a SIGHUP every {EVERY:.0f} s (at "
        f"{', '.join(f'{t:.0f}' for t in results['hups_at_s'])} s, every other one changing "
        "`client.idle_timeout_ms`). Raw figures: `target/soak/results.json`; logs: "
        "`target/soak/logs/`.", "",
        "| | |", "|---|---|",
        f"| verdict | {'pass' if not results['failed'] else 'FAIL: ' + '; '.join(results['failed'])} |",
        f"| echoes sent / received | {r.get('sent')} / {r.get('received')} |",
        f"| lost on connections not cut | {r.get('lost')} |",
        f"| duplicated / reordered | {j.get('duplicated')} / {j.get('reordered')} |",
        f"| connections cut (echoes in flight on them) | {j.get('cuts')} ({j.get('cut_in_flight')}) |",
        f"| bots back after a cut / still out at the end | {j.get('rejoins')} / {j.get('not_back')} |",
        f"| longest comeback | {j.get('comeback_max_ms')} ms |",
        f"| planned departures (churn) | {j.get('churns')} |",
        f"| bots failed | {r.get('errors')} |",
        f"| reloads applied (per proxy) | {', '.join(f'{k}: {v}' for k, v in results['reloads_applied'].items())} of {len(results['hups_at_s'])} |",
        "", "Why connections were cut: " + (", ".join(
            f"{why} ({n})" for why, n in (j.get("cut_reasons") or {}).items()) or "none") + ".",
        "", "RSS (KiB): after the first minute, at the end, the most seen; a proxy must end "
        f"within {RSS_TOLERANCE:.0%} of its level after the first minute.", "",
        "| process | after 1 min | end | max | within 5 % |", "|---|---|---|---|---|"]
    for name, e in results["rss"].items():
        ok = e.get("within_tolerance")
        lines.append(f"| {name} | {e['after_first_minute_kib']} | {e['end_kib']} | {e['max_kib']} "
                     f"| {'yes' if ok else ('no' if ok is False else '–')} |")
    lines += ["", "![RSS over time](soak-rss.svg)", "",
              "The bots keep every echo's round trip for their percentiles (4 bytes each), so "
              "their RSS grows with the run; it is not judged. `SOAK_RENDER_ONLY=1 python3 "
              "scripts/soak.py` writes this page again from `target/soak/results.json`.", ""]
    os.makedirs(DOCS, exist_ok=True)
    with open(os.path.join(DOCS, "soak.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(DOCS, "soak-rss.svg"), "w") as f:
        f.write(svg_plot(results["samples"], results["restarts_at_s"], results["hups_at_s"]))


def reloads_applied(name):
    try:
        with open(os.path.join(OUT, "logs", f"{name}.log")) as f:
            return sum(1 for line in f if "applied:" in line and "reload " in line)
    except OSError:
        return 0


def main():
    if os.environ.get("SOAK_RENDER_ONLY") == "1":
        with open(os.path.join(OUT, "results.json")) as f:
            results = json.load(f)
        write_docs(results, results.get("started", "?"), results.get("elapsed_s", 0))
        return 1 if results["failed"] else 0
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(os.path.join(OUT, "logs")) if os.path.isdir(os.path.join(OUT, "logs")) else []:
        os.remove(os.path.join(OUT, "logs", name))
    raise_fd_limit()
    started, t0 = time.strftime("%Y-%m-%d %H:%M"), time.time()
    soak = Soak()
    try:
        soak.start()
        samples = run_soak(soak)
        wait_for(lambda: soak.bot_report.last() is not None, 10, "the bots' report")
    finally:
        soak.stop()
    results = {"bots_count": BOTS, "seconds": SECONDS, "rate": RATE,
               "bots": soak.bot_report.last(), "samples": samples,
               "restarts_at_s": soak.restarts, "hups_at_s": soak.hups,
               "rss": rss_summary(samples),
               "reloads_applied": {f"proxy-{i}": reloads_applied(f"proxy-{i}") for i in range(2)}}
    results["failed"] = verdict(results)
    elapsed = time.time() - t0
    results["elapsed_s"] = round(elapsed, 1)
    results["started"] = started
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_docs(results, started, elapsed)
    say(f"== wrote {os.path.relpath(os.path.join(OUT, 'results.json'), ROOT)} and "
        f"{os.path.relpath(os.path.join(DOCS, 'soak.md'), ROOT)} ({elapsed:.0f} s)")
    for why in results["failed"]:
        say(f"FAIL: {why}")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
