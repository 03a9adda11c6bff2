"""Two IRC clients written with the Python `irc` library (jaraco), against chatd's IRC door.

alice logs in with SASL PLAIN, bob with PASS; both join #py; they talk in the room and one to
one; alice, the room's owner, sets a topic and kicks bob; bob asks for a mode no room holds.
Prints one JSON object: what each client saw, as the library parsed it.

Usage: python3 irc_library.py HOST PORT
"""

import json
import sys
import time

import irc.client

host, port = sys.argv[1], int(sys.argv[2])
seen = {"alice": [], "bob": []}
reactor = irc.client.Reactor()


def record(connection, event):
    # Handlers are the reactor's, for every connection: file each event under its client.
    name = "alice" if connection is alice else "bob"
    seen[name].append(
        {
            "type": event.type,
            "source": str(event.source or ""),
            "target": str(event.target or ""),
            "arguments": [str(a) for a in event.arguments],
        }
    )


alice = reactor.server().connect(host, port, "alice", password="pw", sasl_login="alice")
bob = reactor.server().connect(host, port, "bob", password="pw")
for kind in (
    "welcome", "join", "namreply", "pubmsg", "privmsg", "kick", "topic",
    "unknownmode", "currenttopic", "loggedin", "saslsuccess", "part",
):
    reactor.add_global_handler(kind, record)


def pump(seconds):
    end = time.time() + seconds
    while time.time() < end:
        reactor.process_once(0.05)


def wait_for(name, kind, seconds=10):
    end = time.time() + seconds
    while time.time() < end:
        if any(e["type"] == kind for e in seen[name]):
            return
        reactor.process_once(0.05)
    raise SystemExit(f"{name} never saw {kind}: {json.dumps(seen[name])}")


wait_for("alice", "welcome")
wait_for("bob", "welcome")
alice.join("#py")
wait_for("alice", "namreply")
alice.topic("#py", "Python lab")
wait_for("alice", "topic")
bob.join("#py")
wait_for("bob", "currenttopic")
wait_for("alice", "join")
alice.privmsg("#py", "hello bob")
wait_for("bob", "pubmsg")
bob.privmsg("alice", "hi alice, privately")
wait_for("alice", "privmsg")
bob.mode("#py", "+k secret")
wait_for("bob", "unknownmode")
alice.kick("#py", "bob", "lab is over")
wait_for("bob", "kick")
pump(0.3)
alice.quit("bye")
bob.quit("bye")
pump(0.3)
print(json.dumps(seen))
