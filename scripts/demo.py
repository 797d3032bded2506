#!/usr/bin/env python3
"""`make demo`: the whole MUTA system on loopback.

Builds the release binaries, then starts `muta-shard`, `muta-login`, two
`muta-proxy` and a handful of `muta-bot` players, and prints one line a
second: players per proxy, client and server messages per second, echo p99
latency. After DEMO_SECONDS (default 20), or at Ctrl-C, it stops everything
cleanly (SIGINT to the bots, which drain and report; SIGTERM to the servers)
and ends with the bots' JSON summary as its last line. Logs go to
target/demo/. Ports are chosen free at start.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "target", "demo")
BIN = os.path.join(ROOT, "target", "release")
SECONDS = max(5, int(os.environ.get("DEMO_SECONDS", "20")))
BOTS = int(os.environ.get("DEMO_BOTS", "24"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(text):
    print(text, flush=True)


class Lines(threading.Thread):
    """Reads a child's output, keeping the last JSON line (and all of them)."""

    def __init__(self, stream, log_path=None, key=None):
        super().__init__(daemon=True)
        self.stream, self.key = stream, key
        self.log = open(log_path, "w") if log_path else None
        self.last, self.all = None, []
        self.start()

    def run(self):
        for raw in self.stream:
            line = raw.decode(errors="replace").rstrip("\n")
            if self.log:
                self.log.write(line + "\n")
                self.log.flush()
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if self.key is None or obj.get(self.key):
                    self.last = obj
                self.all.append(line)


def main():
    t0 = time.time()
    say("== building the release binaries (cargo build --release; the first build takes "
        "a few minutes)")
    subprocess.run(["cargo", "build", "--locked", "--release", "--quiet"], cwd=ROOT, check=True)
    say(f"== built in {time.time() - t0:.0f} s; the system runs for about {SECONDS} s")
    run_started = time.time()
    os.makedirs(DEMO, exist_ok=True)

    shard_proxy, shard_login, login_port = free_port(), free_port(), free_port()
    proxy_ports = [free_port(), free_port()]
    with open(os.path.join(ROOT, "proxy.cfg")) as f:
        shipped = f.read()
    for i, port in enumerate(proxy_ports):
        cfg = shipped.replace('listen = "0.0.0.0:7702"', f'listen = "127.0.0.1:{port}"')
        cfg = cfg.replace('public_address = "127.0.0.1:7702"', f'public_address = "127.0.0.1:{port}"')
        with open(os.path.join(DEMO, f"proxy-{i}.cfg"), "w") as f:
            f.write(cfg)
    with open(os.path.join(DEMO, "shards.cfg"), "w") as f:
        f.write(f"shard = 127.0.0.1:{shard_proxy}\n")

    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    procs = []

    def spawn(name, args, stdout=subprocess.DEVNULL):
        log = open(os.path.join(DEMO, f"{name}.log"), "w")
        # A session of their own: Ctrl-C in the terminal reaches this script
        # and the bots, which drain and report, while the servers keep serving
        # until they are stopped, last.
        p = subprocess.Popen([os.path.join(BIN, args[0])] + args[1:], cwd=ROOT, env=env,
                             stdout=stdout, stderr=log, start_new_session=True)
        procs.append((name, p))
        return p

    say(f"== muta-shard: proxies on :{shard_proxy}, login servers on :{shard_login}")
    shard = spawn("shard", ["muta-shard", "--proxy-listen", f"127.0.0.1:{shard_proxy}",
                            "--login-listen", f"127.0.0.1:{shard_login}", "--stats-json"],
                  stdout=subprocess.PIPE)
    stats = Lines(shard.stdout)
    time.sleep(0.3)
    say(f"== muta-login on :{login_port} (accounts.txt, more created on demand)")
    spawn("login", ["muta-login", "--listen", f"127.0.0.1:{login_port}",
                    "--shard", f"127.0.0.1:{shard_login}", "--accounts", "accounts.txt",
                    "--create-accounts", "--pwhash-cost", "min"])
    for i, port in enumerate(proxy_ports):
        say(f"== muta-proxy {i} on :{port}")
        spawn(f"proxy-{i}", ["muta-proxy", "--config", os.path.join(DEMO, f"proxy-{i}.cfg"),
                             "--shards", os.path.join(DEMO, "shards.cfg")])
    deadline = time.time() + 10
    while time.time() < deadline and (stats.last is None or len(stats.last.get("proxies", [])) < 2):
        time.sleep(0.1)
    duration = max(3, SECONDS - 4)
    say(f"== {BOTS} bots: 10 echoes/s each and a chat line every 2 s (broadcast to all), for {duration} s")
    bots = subprocess.Popen(
        [os.path.join(BIN, "muta-bot"), "--login", f"127.0.0.1:{login_port}", "--clients", str(BOTS),
         "--rate", "10", "--chat-rate", "0.5", "--duration", str(duration), "--ramp", "2",
         "--progress", "--json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress = Lines(bots.stderr, os.path.join(DEMO, "bots.log"), key="progress")
    result = Lines(bots.stdout)

    started = time.time()
    interrupted = False
    while bots.poll() is None:
        try:
            time.sleep(1)
        except KeyboardInterrupt:
            if not interrupted:
                interrupted = True
                say("== Ctrl-C: the bots stop sending, drain and report")
                bots.send_signal(signal.SIGINT)
            continue
        s, p = stats.last or {}, progress.last or {}
        per_proxy = "  ".join(f"{x['address']}={x['players']}" for x in s.get("proxies", [])) or "-"
        say(f"[{time.time() - started:4.0f}s] players per proxy: {per_proxy} | "
            f"client msgs/s {p.get('sent_per_s', 0)} | server msgs/s {s.get('msgs_out', 0)} | "
            f"echo p99 {p.get('p99_us', 0) / 1000:.1f} ms | errors {p.get('errors', 0)}")
    bots.wait()
    result.join(timeout=5)

    say("== stopping the servers (SIGTERM)")
    for name, p in reversed(procs):
        p.send_signal(signal.SIGTERM)
    for name, p in procs:
        try:
            code = p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            code = "killed"
        say(f"   {name}: exit {code}")
    say(f"== logs in {os.path.relpath(DEMO, ROOT)}/; the system ran {time.time() - run_started:.1f} s "
        f"(build included: {time.time() - t0:.1f} s)")
    summary = result.all[-1] if result.all else '{"error":"the bots printed no report"}'
    print(summary, flush=True)
    return bots.returncode


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
