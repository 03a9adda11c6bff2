#!/usr/bin/env python3
"""chatd under attack: each attack of issue 9 against two chatd binaries, side by side.

For every attack and every binary (they alternate, so both see the same machine) a fresh
server on a fresh SQLite file is started, the attack's victims are set up, and then, while the
attack runs and for a while after it stopped, the driver:

- samples the server's RSS every 100 ms (before = just before the attack, peak = the highest
  sample, after = the last sample, AFTER seconds after the attacker left);
- runs a bystander with the project's load generator in its own process (`chatd load ping
  --conns 1 --rate 50`, or `chatd load chat --users 2 --rate 50` where the attack is on the
  SEND path): its p99, and whether it failed;
- opens a new line connection and a new HTTP request a few times: what a newcomer gets
  within 2 s (HELLO, ERR SERVER_BUSY, 503, or nothing);
- for the login attacks, what the attack achieved (how many guesses were checked, how long a
  login from another address took).

The attackers run in child processes of this script (`bench-attack.py attacker ...`), so the
driver's own timing is not delayed by their sockets. Everything goes to 127.0.0.0/8, every
attack is bounded in connections and time, and every process started here is ended by pid.

Usage: scripts/bench-attack.py OLD_BINARY NEW_BINARY [--only NAME[,NAME]] [--out DIR]
The load generator used for the bystanders is NEW_BINARY's (`chatd load`), for both servers.
"""

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BIG = 64 * 1024  # the largest message text both servers accept
HOLD = 15.0  # seconds each attack is held
AFTER = 10.0  # seconds after the attacker left before RSS is read for "after"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


# ---------------------------------------------------------------- small clients


async def open_conn(host, port, rcvbuf=None, source=None, timeout=10.0):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if source:
        sock.bind((source, 0))
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def http(addr, method, path, body=None, token=None, timeout=30.0):
    """One request on its own connection; returns (status, parsed JSON or None)."""
    host, port = addr
    r, w = await open_conn(host, port)
    try:
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(data)}\r\n\r\n"
        w.write(head.encode() + data)
        await w.drain()
        raw = await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, rest2 = b"", rest
        while rest2:
            size_line, _, rest2 = rest2.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest2 = out + rest2[:size], rest2[size + 2:]
        rest = out
    try:
        return status, json.loads(rest)
    except ValueError:
        return status, None


async def register_and_login(haddr, user, password="pw"):
    creds = {"username": user, "password": password}
    for _ in range(100):
        status, _ = await http(haddr, "POST", "/register", creds)
        if status in (201, 409):
            break
        await asyncio.sleep(0.2)
    for _ in range(100):
        status, body = await http(haddr, "POST", "/auth", creds)
        if status == 200:
            return body["token"]
        await asyncio.sleep(0.2)
    raise RuntimeError(f"could not log in {user}: {status} {body}")


async def post_many(haddr, token, recipient, count, size=BIG, parallel=8):
    text = "x" * size
    left = iter(range(count))

    async def worker():
        host, port = haddr
        r, w = await open_conn(host, port)
        body = json.dumps({"recipient": recipient, "message": text}).encode()
        head = (f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        for _ in left:
            w.write(head + body)
            await w.drain()
            line = await r.readuntil(b"\r\n\r\n")
            length = 0
            for h in line.split(b"\r\n"):
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":")[1])
            await r.readexactly(length)
            if not line.startswith(b"HTTP/1.1 201"):
                raise RuntimeError(f"POST / answered {line[:40]!r}")
        w.close()

    await asyncio.gather(*(worker() for _ in range(parallel)))


async def line_session(laddr, user=None, password="pw", rcvbuf=None, source=None):
    """A line connection past its HELLO, logged in as user if given (retrying when busy)."""
    r, w = await open_conn(*laddr, rcvbuf=rcvbuf, source=source)
    hello = await asyncio.wait_for(r.readline(), 10)
    if not hello.startswith(b"HELLO"):
        raise RuntimeError(f"greeting {hello!r}")
    if user:
        for _ in range(200):
            w.write(f"AUTH {user} {password}\r\n".encode())
            await w.drain()
            reply = await asyncio.wait_for(r.readline(), 30)
            if reply.startswith(b"OK"):
                break
            if b"RATE_LIMITED" in reply or b"SERVER_BUSY" in reply:
                await asyncio.sleep(0.2)
                continue
            raise RuntimeError(f"AUTH {user}: {reply!r}")
        else:
            raise RuntimeError(f"AUTH {user}: still refused")
    return r, w


async def newcomer(laddr, haddr):
    """What a new line client and a new HTTP client get within 2 s."""
    out = {}
    try:
        r, w = await open_conn(*laddr, timeout=2)
        try:
            first = await asyncio.wait_for(r.readline(), 2)
            word = first.split(b" ")[0].decode(errors="replace").strip()
            if word == "ERR":
                word = "ERR " + first.split(b" ")[1].decode(errors="replace").strip()
            out["line"] = word or "closed"
        finally:
            w.close()
    except (asyncio.TimeoutError, OSError):
        out["line"] = "nothing in 2 s"
    try:
        status, _ = await http(haddr, "GET", "/info", timeout=2)
        out["http"] = str(status)
    except (asyncio.TimeoutError, OSError, IndexError, ValueError):
        out["http"] = "nothing in 2 s"
    return out


# ---------------------------------------------------------------- the attackers
# Each runs in its own process: `bench-attack.py attacker KIND JSON-ARGS`. It prints one JSON
# line with what it saw, then exits; it holds what it opened for a.hold seconds.


async def hold_open(conns, hold):
    """Holds the connections; returns how many the server closed meanwhile."""
    end = time.monotonic() + hold
    closed = 0

    async def watch(r):
        nonlocal closed
        try:
            while time.monotonic() < end:
                left = end - time.monotonic()
                chunk = await asyncio.wait_for(r.read(65536), max(left, 0.01))
                if not chunk:
                    closed += 1
                    return
        except (asyncio.TimeoutError, OSError):
            return

    await asyncio.gather(*(watch(r) for r, _ in conns))
    return closed


async def connect_many(addr, n, rcvbuf=None, parallel=500):
    conns, failed = [], 0
    sem = asyncio.Semaphore(parallel)

    async def one():
        nonlocal failed
        async with sem:
            try:
                conns.append(await open_conn(*addr, rcvbuf=rcvbuf, timeout=5))
            except (OSError, asyncio.TimeoutError):
                failed += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return conns, failed


async def attack_idle_http(a):
    conns, failed = await connect_many(tuple(a["http"]), a["n"])
    closed = await hold_open(conns, a["hold"])
    return {"opened": len(conns), "failed": failed, "closed_by_server": closed}


async def attack_stall_body(a):
    conns, failed = await connect_many(tuple(a["http"]), a["n"])
    head = (f"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {256 * 1024}\r\n\r\n").encode()
    chunk = b"a" * (200 * 1024)
    for _, w in conns:
        w.write(head + chunk)
    await asyncio.gather(*(w.drain() for _, w in conns), return_exceptions=True)
    closed = await hold_open(conns, a["hold"])
    return {"opened": len(conns), "failed": failed, "closed_by_server": closed}


async def attack_unread_get(a):
    conns, failed = await connect_many(tuple(a["http"]), a["n"], rcvbuf=4096)
    req = (f"GET /get_messages?limit={a['limit']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           f"Authorization: Bearer {a['token']}\r\n\r\n").encode()
    for _, w in conns:
        w.write(req)
    await asyncio.gather(*(w.drain() for _, w in conns), return_exceptions=True)
    # Never read: just wait, and count the ones the server gave up on.
    await asyncio.sleep(a["hold"])
    return {"opened": len(conns), "failed": failed}


async def attack_unread_inbox(a):
    users, per = a["users"], a["per_user"]
    sem = asyncio.Semaphore(4)
    conns = []

    async def one(user):
        async with sem:
            r, w = await line_session(tuple(a["line"]), user, rcvbuf=4096)
        w.write(b"INBOX\r\n")
        await w.drain()
        conns.append((r, w))

    await asyncio.gather(*(one(u) for u in users for _ in range(per)))
    await asyncio.sleep(a["hold"])
    return {"opened": len(conns)}


async def attack_cache_fill(a):
    """Many accounts, each filled with large messages and read back: the inbox cache's food."""
    haddr = tuple(a["http"])
    tokens = []
    for i in range(a["users"]):
        tokens.append(await register_and_login(haddr, f"{a['prefix']}{i}"))
    for i, token in enumerate(tokens):
        await post_many(haddr, token, f"{a['prefix']}{i}", a["messages"])
    for token in tokens:
        after = 0
        while True:
            status, body = await http(haddr, "GET", f"/get_messages?limit=1000&after={after}", token=token)
            if status != 200 or not body["messages"]:
                break
            after = body["messages"][-1]["id"]
    return {"users": len(tokens), "messages_each": a["messages"]}


async def attack_push_flood(a):
    """Logged-in line sessions that never read, and large messages sent to them over HTTP."""
    haddr, laddr = tuple(a["http"]), tuple(a["line"])
    readers = [await line_session(laddr, u, rcvbuf=4096) for u in a["users"]]
    sender = a["sender_token"]
    await asyncio.gather(*(post_many(haddr, sender, u, a["messages"], parallel=2) for u in a["users"]))
    closed = await hold_open(readers, a["hold"])
    return {"readers": len(readers), "closed_by_server": closed}


async def attack_auth_flood(a):
    """Connections that AUTH with the right password again and again."""
    end = time.monotonic() + a["hold"]
    counts = {"ok": 0, "refused": 0, "other": 0}

    async def one():
        try:
            r, w = await line_session(tuple(a["line"]))
        except (OSError, RuntimeError, asyncio.TimeoutError):
            counts["other"] += 1
            return
        line = f"AUTH {a['user']} {a['password']}\r\n".encode()
        while time.monotonic() < end:
            w.write(line)
            try:
                await w.drain()
                reply = await asyncio.wait_for(r.readline(), max(end - time.monotonic(), 0.01))
            except (OSError, asyncio.TimeoutError):
                break
            if reply.startswith(b"OK"):
                counts["ok"] += 1
            elif b"RATE_LIMITED" in reply or b"SERVER_BUSY" in reply:
                counts["refused"] += 1
                await asyncio.sleep(0.05)
            elif not reply:
                break
            else:
                counts["other"] += 1
        w.close()

    await asyncio.gather(*(one() for _ in range(a["n"])))
    return counts


async def attack_guesses(a):
    """a.n AUTHs at once from one address, all wrong but one: the right password is guess n/2."""
    conns, failed = await connect_many(tuple(a["line"]), a["n"])
    for r, _ in conns:
        await r.readline()  # HELLO
    right = a["n"] // 2
    for i, (_, w) in enumerate(conns):
        pw = a["password"] if i == right else f"wrong{i}"
        w.write(f"AUTH {a['user']} {pw}\r\n".encode())
    await asyncio.gather(*(w.drain() for _, w in conns), return_exceptions=True)
    counts = {"checked": 0, "refused": 0, "found": False, "other": 0}

    async def answer(i, r):
        try:
            reply = await asyncio.wait_for(r.readline(), 120)
        except (asyncio.TimeoutError, OSError):
            counts["other"] += 1
            return
        if reply.startswith(b"OK"):
            counts["checked"] += 1
            counts["found"] = True
        elif b"BAD_CREDENTIALS" in reply:
            counts["checked"] += 1
        elif b"RATE_LIMITED" in reply or b"SERVER_BUSY" in reply:
            counts["refused"] += 1
        else:
            counts["other"] += 1

    await asyncio.gather(*(answer(i, r) for i, (r, _) in enumerate(conns)))
    counts["sent"] = len(conns)
    counts["connect_failed"] = failed
    return counts


async def attack_events(a):
    """a.n /events streams for one user, never read, while messages to that user arrive."""
    host, port = a["http"]
    conns, failed = await connect_many((host, port), a["n"], rcvbuf=4096)
    req = (f"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
           f"Authorization: Bearer {a['token']}\r\n\r\n").encode()
    for _, w in conns:
        w.write(req)
    await asyncio.gather(*(w.drain() for _, w in conns), return_exceptions=True)
    statuses = {}

    async def status(r):
        try:
            line = await asyncio.wait_for(r.readline(), 20)
            code = line.split(b" ")[1].decode() if line else "closed"
        except (asyncio.TimeoutError, OSError, IndexError):
            code = "none"
        statuses[code] = statuses.get(code, 0) + 1

    await asyncio.gather(*(status(r) for r, _ in conns))
    # Messages to the crowd's user, 20 a second, while the streams are held unread.
    end = time.monotonic() + a["hold"]
    sent = 0
    while time.monotonic() < end:
        await post_many((host, port), a["sender_token"], a["user"], 1, size=100, parallel=1)
        sent += 1
        await asyncio.sleep(0.05)
    return {"opened": len(conns), "failed": failed, "statuses": statuses, "sent": sent}


ATTACKERS = {
    "idle-http": attack_idle_http,
    "stall-body": attack_stall_body,
    "unread-get": attack_unread_get,
    "unread-inbox": attack_unread_inbox,
    "cache-fill": attack_cache_fill,
    "push-flood": attack_push_flood,
    "auth-flood": attack_auth_flood,
    "guesses": attack_guesses,
    "events": attack_events,
}


def attacker_main(kind, args_json):
    raise_nofile()
    result = asyncio.run(ATTACKERS[kind](json.loads(args_json)))
    print(json.dumps(result), flush=True)
    # Leave at once: closing thousands of sockets one by one is the kernel's job.
    os._exit(0)


# ---------------------------------------------------------------- the driver


class Server:
    def __init__(self, binary, name, tmp):
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir)
        self.out = open(os.path.join(self.dir, "out"), "w+")
        self.err = open(os.path.join(self.dir, "err"), "w")
        # The attacks' set-up fills inboxes with large messages from one sender, far beyond a
        # send budget (servers without one ignore the variable).
        env = dict(os.environ, RUST_LOG="warn", CHATD_MAX_SEND_RATE="0")
        self.proc = subprocess.Popen(
            [binary, "serve", "--bind", "127.0.0.1", "--port", "0", "--http-port", "0",
             "--db", f"sqlite://{self.dir}/chatd.db"],
            stdout=self.out, stderr=self.err, env=env, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.line = self.http = None
        for _ in range(200):
            time.sleep(0.05)
            with open(self.out.name) as f:
                text = f.read()
            if "Store:" in text:
                for line in text.splitlines():
                    parts = line.split()
                    if len(parts) == 3 and parts[0] == "telnet" and parts[1] == "127.0.0.1" and not self.line:
                        self.line = ("127.0.0.1", int(parts[2]))
                    if line.strip().startswith("http://127.0.0.1:") and not self.http:
                        self.http = ("127.0.0.1", int(line.strip().rstrip("/").rsplit(":", 1)[1]))
                break
        if not (self.line and self.http):
            self.stop()
            raise RuntimeError(f"{binary} did not start: {open(self.err.name).read()[-2000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn_attacker(kind, args):
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "attacker", kind, json.dumps(args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def bystander(loader, server, kind, duration, out):
    if kind == "send":
        cmd = [loader, "load", "chat", "--addr", f"{server.line[0]}:{server.line[1]}", "--users", "2",
               "--rate", "50", "--duration", str(duration), "--json"]
    else:
        cmd = [loader, "load", "ping", "--addr", f"{server.line[0]}:{server.line[1]}", "--conns", "1",
               "--rate", "50", "--duration", str(duration), "--json"]
    return cmd, subprocess.Popen(cmd, stdout=open(out, "w"), stderr=subprocess.DEVNULL)


def read_bystander(path):
    try:
        with open(path) as f:
            rep = json.load(f)
    except (OSError, ValueError):
        return {"p99_ms": None, "passed": False, "note": "no report"}
    run = rep.get("run", {})
    lat = run.get("latency", {})
    return {
        "p99_ms": lat.get("p99_us", 0) / 1000 if lat else None,
        "max_ms": lat.get("max_us", 0) / 1000 if lat else None,
        "count": run.get("count"),
        "errors": run.get("errors"),
        "passed": rep.get("passed"),
        "problems": rep.get("problems", []),
    }


async def timed_login(laddr, user, source):
    t0 = time.monotonic()
    try:
        r, w = await line_session(laddr, source=source)
        w.write(f"AUTH {user} pw\r\n".encode())
        await w.drain()
        reply = await asyncio.wait_for(r.readline(), 30)
        w.close()
        return time.monotonic() - t0, reply.decode(errors="replace").strip()
    except (OSError, asyncio.TimeoutError, RuntimeError) as e:
        return time.monotonic() - t0, f"failed: {e}"


# setup(server) -> (attacker processes' (kind, args, count), bystander kind, extra probe)
async def setup_attack(name, server):
    L, H = list(server.line), list(server.http)
    if name == "idle-http":
        # Two attacker processes: more sockets than one process (or the server) may hold.
        return [("idle-http", {"http": H, "n": 10500, "hold": HOLD}, 2)], "ping", None
    if name == "stall-body":
        return [("stall-body", {"http": H, "n": 2000, "hold": HOLD}, 1)], "ping", None
    if name == "unread-get":
        token = await register_and_login(server.http, "victim")
        await post_many(server.http, token, "victim", 1000)
        return [("unread-get", {"http": H, "n": 4, "limit": 1000, "token": token, "hold": HOLD}, 1)], "ping", None
    if name == "unread-inbox":
        users = [f"reader{i}" for i in range(3)]
        for u in users:
            token = await register_and_login(server.http, u)
            await post_many(server.http, token, u, 100)
        return [("unread-inbox", {"line": L, "users": users, "per_user": 50, "hold": HOLD}, 1)], "ping", None
    if name == "cache-fill":
        return [("cache-fill", {"http": H, "users": 50, "messages": 64, "prefix": "cache"}, 1)], "ping", None
    if name == "push-flood":
        users = [f"slow{i}" for i in range(4)]
        for u in users:
            await register_and_login(server.http, u)
        sender = await register_and_login(server.http, "flooder")
        return [("push-flood", {"http": H, "line": L, "users": users, "messages": 1024,
                                "sender_token": sender, "hold": HOLD}, 1)], "ping", None
    if name == "auth-flood":
        await register_and_login(server.http, "flood")
        # The victims are registered but have not logged in: their logins are real checks,
        # not remembered ones.
        for i in range(3):
            assert (await http(server.http, "POST", "/register", {"username": f"victim{i}", "password": "pw"}))[0] == 201
        return [("auth-flood", {"line": L, "n": 200, "user": "flood", "password": "pw", "hold": HOLD}, 1)], \
            "ping", "login"
    if name == "guesses":
        await register_and_login(server.http, "victim", "the-right-one")
        return [("guesses", {"line": L, "n": 1500, "user": "victim", "password": "the-right-one"}, 1)], "ping", None
    if name == "events":
        token = await register_and_login(server.http, "crowd")
        sender = await register_and_login(server.http, "sender")
        return [("events", {"http": H, "n": 9000, "token": token, "user": "crowd",
                            "sender_token": sender, "hold": HOLD}, 1)], "send", None
    raise ValueError(name)


ATTACKS = {
    "idle-http": "21,000 idle HTTP connections (two processes), no byte sent",
    "stall-body": "2,000 HTTP bodies of 256 KiB, 200 KiB sent then stalled",
    "unread-get": "4 x GET /get_messages?limit=1000 over 1,000 x 64 KiB messages, never read",
    "unread-inbox": "150 line clients: INBOX of 100 x 64 KiB messages, never read",
    "cache-fill": "50 accounts each get 64 x 64 KiB messages and read them, then leave",
    "push-flood": "4 logged-in sessions that never read, 1,024 x 64 KiB messages sent to each",
    "auth-flood": "200 connections repeating AUTH with a correct password",
    "guesses": "1,500 AUTHs at once from one address, the right password as guess 750",
    "events": "9,000 /events streams for one user, 20 messages/s to that user",
}


async def run_one(name, binary, loader, tmp, label, outdir):
    server = Server(binary, f"{name}-{label}", tmp)
    try:
        attackers, by_kind, extra = await setup_attack(name, server)
        await asyncio.sleep(1)
        before = rss_mib(server.pid)
        samples = [before]
        sampling = True

        async def sample():
            while sampling:
                v = rss_mib(server.pid)
                if v is not None:
                    samples.append(v)
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        by_out = os.path.join(outdir, f"{name}.{label}.bystander.json")
        by_cmd, by_proc = bystander(loader, server, by_kind, HOLD + 12, by_out)
        await asyncio.sleep(2)  # the bystander is connected (and logged in) before the attack
        t0 = time.monotonic()
        procs = [spawn_attacker(kind, args) for kind, args, count in attackers for _ in range(count)]
        newcomers, logins = [], []
        await asyncio.sleep(4)
        for i in range(3):
            newcomers.append(await newcomer(server.line, server.http))
            if extra == "login":
                logins.append(await timed_login(server.line, f"victim{i}", "127.0.0.2"))
            await asyncio.sleep(2)
        results = []
        for p in procs:
            while p.poll() is None:
                await asyncio.sleep(0.2)
            out, err = p.communicate()
            try:
                results.append(json.loads(out.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                results.append({"error": err.strip()[-300:]})
        attack_secs = time.monotonic() - t0
        await asyncio.sleep(AFTER)
        sampling = False
        await sampler
        after = rss_mib(server.pid)
        while by_proc.poll() is None:
            await asyncio.sleep(0.2)
        alive = server.proc.poll() is None
        row = {
            "attack": name, "binary": label, "rss_before_mib": before, "rss_peak_mib": max(samples),
            "rss_after_mib": after, "server_alive": alive, "attack_secs": attack_secs,
            "bystander": read_bystander(by_out), "bystander_command": " ".join(by_cmd[1:]),
            "newcomers": newcomers, "attackers": results,
        }
        if logins:
            row["logins"] = [{"secs": s, "reply": r} for s, r in logins]
        return row
    finally:
        server.stop()


def summarise(rows):
    def fmt_mib(v):
        return "–" if v is None else f"{v:,.0f}"

    out = ["| attack | build | RSS before MiB | peak | after | bystander p99 | newcomer (line / HTTP) | what the attack got |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["bystander"]
        by = "–" if b["p99_ms"] is None else f"{b['p99_ms']:.1f} ms"
        if not b.get("passed"):
            by += " (failed)"
        seen = sorted({f"{n['line']} / {n['http']}" for n in r["newcomers"]})
        got = []
        for a in r["attackers"]:
            if "error" in a:
                got.append("attacker error: " + a["error"][:60])
            elif r["attack"] == "guesses":
                got.append(f"{a['checked']} of {a['sent']} checked, {a['refused']} refused, "
                           f"password {'found' if a['found'] else 'not found'}")
            elif r["attack"] == "auth-flood":
                got.append(f"{a['ok']} logins, {a['refused']} refused")
            elif r["attack"] == "events":
                got.append(", ".join(f"{k}: {v}" for k, v in sorted(a["statuses"].items())))
            elif "closed_by_server" in a:
                got.append(f"{a.get('opened', a.get('readers'))} open, {a['closed_by_server']} closed by server")
        if "logins" in r:
            got.append("login from 127.0.0.2: " + ", ".join(f"{x['secs'] * 1000:.0f} ms" for x in r["logins"]))
        if not r["server_alive"]:
            got.append("**server died**")
        out.append(f"| {r['attack']} | {r['binary']} | {fmt_mib(r['rss_before_mib'])} | {fmt_mib(r['rss_peak_mib'])} | "
                   f"{fmt_mib(r['rss_after_mib'])} | {by} | {'; '.join(seen)} | {'; '.join(got)} |")
    return "\n".join(out)


async def driver(args):
    raise_nofile()
    names = args.only.split(",") if args.only else list(ATTACKS)
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="chatd-attack-")
    rows = []
    try:
        for name in names:
            for label, binary in (("old", args.old), ("new", args.new)):
                load = os.getloadavg()[0]
                print(f"[{time.strftime('%T')}] {name} on {label} (load {load:.1f}): {ATTACKS[name]}",
                      file=sys.stderr, flush=True)
                row = await run_one(name, binary, args.new, tmp, label, args.out)
                row["load_before"] = load
                rows.append(row)
                print(summarise([row]).splitlines()[-1], file=sys.stderr, flush=True)
                with open(os.path.join(args.out, "attack.json"), "w") as f:
                    json.dump(rows, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = summarise(rows)
    with open(os.path.join(args.out, "attack.md"), "w") as f:
        f.write(table + "\n")
    print(table)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "attacker":
        attacker_main(sys.argv[2], sys.argv[3])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--only", help="comma-separated attacks: " + ", ".join(ATTACKS))
    p.add_argument("--out", default="target/bench/attack")
    args = p.parse_args()
    args.old, args.new = os.path.abspath(args.old), os.path.abspath(args.new)
    asyncio.run(driver(args))


if __name__ == "__main__":
    main()
