#!/usr/bin/env python3
"""What the run scripts share (`bench.py`, `attack.py`): starting and
watching the system's processes, free ports, /proc readings, HAProxy."""

import json
import os
import resource
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(text):
    print(text, flush=True)


def ephemeral_start():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_GIVEN = set()


def free_port():
    """A port free now, below the ephemeral range: the kernel gives ports in
    that range to outgoing connections (thousands of bots), and one may take
    a port picked there before our listener binds it. Never one this
    process gave before: a port picked and not yet bound is still free, and
    two front ends of one run given the same one refuse to start."""
    import random
    top = ephemeral_start() - 1
    for _ in range(200):
        port = random.randint(max(1024, top - 20000), top)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                _GIVEN.add(port)
                return port
            except OSError:
                continue
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        _GIVEN.add(s.getsockname()[1])
        return s.getsockname()[1]


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def steal_seconds():
    """CPU time the hypervisor gave other guests (all CPUs), in seconds: the
    `steal` column of /proc/stat. On a shared VM it is what makes one
    window's latency differ from the next."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) / CLK_TCK if len(fields) > 8 else 0.0


def scrape_metrics(port):
    """The proxy's `/metrics` text from its [admin] port; an OSError if
    there is no answer."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def gauge(text, name):
    """The value of `muta_proxy_NAME` (a metric without labels) in a
    `/metrics` text, or None."""
    return next((float(l.split()[-1]) for l in text.splitlines()
                 if l.startswith(f"muta_proxy_{name} ")), None)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Lines(threading.Thread):
    """Collects a child's JSON output lines, with the time each arrived."""

    def __init__(self, stream, log_path):
        super().__init__(daemon=True)
        self.stream = stream
        self.log = open(log_path, "w")
        self.lines = []
        self.start()

    def run(self):
        for raw in self.stream:
            line = raw.decode(errors="replace").rstrip("\n")
            self.log.write(line + "\n")
            self.log.flush()
            if line.startswith("{"):
                try:
                    self.lines.append((time.time(), json.loads(line)))
                except ValueError:
                    pass

    def last(self):
        return self.lines[-1][1] if self.lines else None


def ensure_haproxy():
    if shutil.which("haproxy"):
        return True
    say("== haproxy is not installed: installing Debian's package")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "haproxy"]):
        subprocess.run(sudo + cmd, env=env, stdout=subprocess.DEVNULL)
    return shutil.which("haproxy") is not None


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for(cond, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def finish(proc, seconds, what):
    """Waits for a process we have asked to end; kills it if it does not."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        say(f"   {what} did not finish in {seconds} s; killed")
        proc.kill()
        proc.wait()


def raise_fd_limit():
    """Raises the open-file limit the processes of a run inherit, as far as
    this process may; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    inf = resource.RLIM_INFINITY
    if soft != inf and soft < want:
        for new in ((want, hard if hard == inf or hard >= want else want), (min(want, hard), hard)):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, new)
                break
            except (ValueError, OSError):
                continue
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 30 if soft == inf else soft
