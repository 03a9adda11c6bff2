"""irctest controller for chatd's IRC door.

Lives outside the irctest checkout (run.sh beside it makes it importable with PYTHONPATH and
selects it with ``pytest --controller chatd_controller``).

Environment:
  CHATD_BIN         the chatd binary (run.sh sets it: target/release/chatd by default)
  CHATD_EXTRA_ARGS  extra arguments appended to `chatd serve` (shell-split)
  CHATD_NO_GUESTS   if set to 1, never pass --irc-guests even if supported
  CHATD_AUTO_ACCOUNTS=1  EXPERIMENT, not standard irctest: every
                    connectClient(nick) first creates the account <nick> (via
                    NickServ REGISTER) and then logs in with `PASS <pw>` before
                    NICK/USER, so test clients are account holders instead of
                    guests.  Tests that send NICK/USER by hand stay guests.
  IRCTEST_DEBUG_LOGS=1  stream chatd's stdout/stderr into the pytest output
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from typing import Optional, Set, Type

from irctest.basecontrollers import (
    BaseServerController,
    DirectoryBasedController,
    NotImplementedByController,
)
from irctest import cases
from irctest.specifications import Capabilities, OptionalBehaviors

CHATD_BIN = os.environ.get("CHATD_BIN", "chatd")
# What irctest's OPER tests send: `OPER operuser operpassword`.
OPER_NAME, OPER_PASSWORD = "operuser", "operpassword"


@functools.lru_cache()
def serve_help() -> str:
    try:
        return subprocess.run(
            [CHATD_BIN, "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except Exception:
        return ""


def has_guests_flag() -> bool:
    if os.environ.get("CHATD_NO_GUESTS", "0") in ("1", "true"):
        return False
    return "--irc-guests" in serve_help()


class ChatdController(BaseServerController, DirectoryBasedController):
    software_name = "chatd"
    supported_sasl_mechanisms: Set[str] = {"PLAIN"}
    supports_sts = False
    nickserv = "NickServ"
    # chatd answers a connection's commands in order (PING after the commit of
    # the previous line), so irctest's PING/PONG synchronisation is enough.
    sync_sleep_time = 0.0

    # CAP LS 302 (protocol.md "Capabilities"): account-tag batch cap-notify
    # draft/chathistory draft/read-marker echo-message message-tags
    # multi-prefix sasl=PLAIN server-time
    capabilities = frozenset(
        [
            Capabilities.ACCOUNT_TAG,
            Capabilities.BATCH,
            Capabilities.ECHO_MESSAGE,
            Capabilities.MESSAGE_TAGS,
            Capabilities.MULTI_PREFIX,
            Capabilities.READ_MARKER,
            Capabilities.SERVER_TIME,
        ]
    )

    # Documented in protocol.md: `JOIN #a,#b`; PRIVMSG "Up to 4 targets";
    # KICK up to 4 (TARGMAX); NAMES one channel; +b +e +I on local channels.
    optional_behaviors = frozenset(
        [
            OptionalBehaviors.MULTI_JOIN,
            OptionalBehaviors.MULTI_PRIVMSG,
        ]
    )

    # Values protocol.md promises in 005 (checked by isupport.py::testValues).
    isupport = {
        "CASEMAPPING": "ascii",
        "UTF8ONLY": None,
        "CHATHISTORY": "100",
        "MSGREFTYPES": "msgid,timestamp",
    }

    def __init__(self, *args, **kwargs):  # type: ignore
        super().__init__(*args, **kwargs)
        self.password: Optional[str] = None
        self.auto_accounts: dict = {}  # nick -> password (CHATD_AUTO_ACCOUNTS)
        self._oper_made = True  # until run() starts a server

    def run(
        self,
        hostname: str,
        port: int,
        *,
        password: Optional[str],
        ssl: bool,
        run_services: bool,
        faketime: Optional[str],
        websocket_hostname: Optional[str],
        websocket_port: Optional[int],
    ) -> None:
        if ssl:
            raise NotImplementedByController("TLS")
        if websocket_hostname is not None or websocket_port is not None:
            raise NotImplementedByController("Websocket")
        assert self.proc is None
        self.port = port
        self.hostname = hostname
        self.password = password
        self.create_config()
        assert self.directory

        cmd = [
            CHATD_BIN,
            "serve",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--no-http",
            "--irc-port",
            str(port),
            "--irc-server-name",
            "My.Little.Server",
            "--db",
            f"sqlite://{self.directory}/chatd.db",
            "--max-send-rate",
            "0",
        ]
        if has_guests_flag():
            cmd.append("--irc-guests")
        # irctest's operator: the account operuser (made once the server is up,
        # see wait_for_port), named an operator here.
        self._oper_made = False
        cmd += ["--irc-oper", OPER_NAME]
        if password is not None:
            cmd += ["--irc-password", password]
        cmd += shlex.split(os.environ.get("CHATD_EXTRA_ARGS", ""))

        # stdout is piped to us: the banner says the line-protocol port
        # ("telnet 127.0.0.1 <port>", as --port 0 picks one), used by
        # registerUser. A thread keeps draining it (and echoes it in debug mode).
        self.line_port = None
        self._banner_seen = threading.Event()
        self.proc = self.execute(
            cmd, proc_name="chatd", stdout=subprocess.PIPE,
            stderr=None if self.debug_mode else subprocess.DEVNULL,
        )
        threading.Thread(
            target=self._read_stdout, args=(self.proc,), daemon=True
        ).start()
        # irctest's wait_for_port (called by addClient) then waits for the
        # IRC port to accept connections.

    def _read_stdout(self, proc) -> None:  # type: ignore
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            if self.debug_mode:
                sys.stdout.write(f"{time.time():.3f} chatd {line}")
            m = re.search(r"telnet\s+\S+\s+(\d+)", line)
            if m and self.line_port is None:
                self.line_port = int(m.group(1))
            if "Stop with Ctrl-C" in line or m:
                self._banner_seen.set()
        self._banner_seen.set()

    def wait_for_port(self) -> None:
        super().wait_for_port()
        if not self._oper_made:
            self._oper_made = True
            self._banner_seen.wait(10)
            if self.line_port is not None:
                self._register_line(OPER_NAME, OPER_PASSWORD)

    # chatd has its NickServ built in: nothing else to start or wait for.
    def wait_for_services(self) -> None:
        self.wait_for_port()

    def registerUser(self, case, username: str, password: Optional[str] = None) -> None:  # type: ignore
        """Create a chatd account: on the line protocol (`REGISTER <name>
        <password>` answered `OK ...`), which takes long passwords (an IRC
        line is 512 bytes); or, if its port is unknown, through the IRC
        door's NickServ."""
        assert password, "chatd accounts need a password"
        self.wait_for_port()
        self._banner_seen.wait(10)
        if self.line_port is not None:
            self._register_line(username, password)
        else:
            self._register_irc(username, password)

    def _register_line(self, username: str, password: str) -> None:
        s = socket.create_connection(("127.0.0.1", self.line_port), timeout=60)
        try:
            s.sendall(f"REGISTER {username} {password}\n".encode())
            buf = b""
            while True:
                data = s.recv(4096)
                if not data:
                    raise AssertionError(f"registerUser({username}): closed: {buf!r}")
                buf += data
                for line in buf.decode(errors="replace").splitlines():
                    if line.startswith("OK"):
                        return
                    if line.startswith("ERR"):
                        raise AssertionError(f"registerUser({username}) failed: {line}")
        finally:
            s.close()

    def _register_irc(self, username: str, password: str) -> None:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        try:
            buf = b""

            def send(line: str) -> None:
                s.sendall(line.encode() + b"\r\n")

            def read_until(pred, timeout: float = 60.0) -> list:  # type: ignore
                nonlocal buf
                deadline = time.time() + timeout
                seen = []
                while time.time() < deadline:
                    while b"\r\n" in buf:
                        line, buf = buf.split(b"\r\n", 1)
                        text = line.decode(errors="replace")
                        seen.append(text)
                        if text.startswith("PING "):
                            send("PONG " + text[5:])
                        if pred(text):
                            return seen
                    s.settimeout(max(0.1, deadline - time.time()))
                    data = s.recv(4096)
                    if not data:
                        raise AssertionError(f"registerUser: closed; got {seen}")
                    buf += data
                raise AssertionError(f"registerUser({username}) timed out; got {seen}")

            if self.password is not None:
                send(f"PASS {self.password}")
            send(f"NICK {username}")
            send("USER u 0 * :r")
            read_until(lambda t: " 376 " in t or " 422 " in t)
            # Drain NickServ's greeting after the MOTD ("You are not logged
            # in..." or, with --irc-guests, "Welcome, guest ..."): it comes
            # before the PONG.
            send("PING :drain")
            read_until(lambda t: " PONG " in t and "drain" in t)
            send(f"PRIVMSG {self.nickserv} :REGISTER {password}")
            # Success is "NOTICE <nick> :Account <name> registered" then 900;
            # any other NickServ notice is a refusal.
            seen = read_until(
                lambda t: " 900 " in t
                or (
                    t.startswith(":NickServ!")
                    and " NOTICE " in t
                    and "registered" not in t
                )
            )
            last = seen[-1]
            if " 900 " not in last:
                raise AssertionError(f"registerUser({username}) failed: {last}")
            send("QUIT :registered")
            try:
                read_until(lambda t: t.startswith("ERROR"), timeout=5)
            except Exception:
                pass
        finally:
            s.close()


AUTO_ACCOUNTS = os.environ.get("CHATD_AUTO_ACCOUNTS", "0") in ("1", "true")

if AUTO_ACCOUNTS:
    _orig_connectClient = cases.BaseServerTestCase.connectClient

    def _connectClient_as_account(self, nick, name=None, capabilities=None,  # type: ignore
                                  skip_if_cap_nak=False, account=None,
                                  password=None, ident="username", **kwargs):
        ctl = self.controller
        if (
            isinstance(ctl, ChatdController)
            and self.password is None  # server password tests: leave alone
            and password is None  # the test does its own SASL
        ):
            pw = ctl.auto_accounts.get(nick)
            if pw is None:
                pw = "autopw-" + nick
                try:
                    ctl.registerUser(self, nick, pw)
                    ctl.auto_accounts[nick] = pw
                except Exception as e:  # e.g. a nick chatd refuses as a name
                    print(f"CHATD_AUTO_ACCOUNTS: could not register {nick}: {e}")
                    pw = None
            if pw is not None:
                orig_add = self.addClient

                def add(name=None, **kw):  # type: ignore
                    c = orig_add(name, **kw)
                    self.sendLine(c, f"PASS {pw}")
                    return c

                self.addClient = add
                try:
                    return _orig_connectClient(
                        self, nick, name, capabilities, skip_if_cap_nak,
                        account, password, ident, **kwargs)
                finally:
                    del self.addClient
        return _orig_connectClient(self, nick, name, capabilities,
                                   skip_if_cap_nak, account, password, ident,
                                   **kwargs)

    cases.BaseServerTestCase.connectClient = _connectClient_as_account


def get_irctest_controller_class() -> Type[ChatdController]:
    return ChatdController
