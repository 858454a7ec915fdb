"""Instructions per echo round trip, broadcast delivery, request or client
connected, counted by callgrind: a figure that does not move with the
machine's load (bench/RESULTS.md, "To judge a change").

    python3 bench/instructions.py [--inline] [--broadcast | --request | --connect | --async-echo
                                  | --async-callback-echo | --async-request | --async-broadcast
                                  | --asyncio-echo] [--repeat N]

Runs an echo (client and server in one process, loopback) under
``valgrind --tool=callgrind`` for 500 and for 2,500 round trips and prints
(instructions for 2,500 - for 500) / 2,000: start-up and shutdown cancel out.
``--broadcast``: 100 clients, the server sends to ``'*'`` 20 and 100 times,
per delivery.  ``--request``: ``client.request()`` answered by a ``request``
callback that returns the payload, per round trip (as the echo).
``--async-broadcast``: as ``--broadcast`` with the asyncio API, one loop,
the clients reading ``messages()``; ``--async-echo`` and ``--async-request``:
the echo (both sides reading ``messages()``) and the request with the asyncio
API, one loop; ``--async-callback-echo``: the echo as run.py's mc-async
system runs it (the server answers from a plain ``message`` callback with
``send_nowait``, the client reads ``messages()``); ``--asyncio-echo``: the
same echo on bare asyncio Protocols, no library, the floor the asyncio
API's figures compare with (its server answers inside ``data_received``, as
``--async-callback-echo``'s does; ``--async-echo``'s reading task takes a
loop turn more).  ``--connect``: clients connected at once (``connect(wait=False)``) and
then disconnected, 200 and 1,000 of them, per client.  How the
threads take turns moves one count: the scripts
set Python's switch interval to a second, so a thread hands the GIL over
when it waits (as every step of an echo does) rather than at a random
point (which spread repeated counts of one commit over +-8%; now about
+-2%), and ``--repeat`` prints each run and their median.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ECHO = """
import sys, threading
sys.setswitchinterval(1.0)  # threads hand over when they wait, not mid-way (see the docstring)
from missioncommander import Client, Message, Server
n, inline = int(sys.argv[1]), sys.argv[2] == "1"
server = Server(interface="127.0.0.1", port=0, inline_callbacks=inline)
server.subscribe("message", lambda cid, msg: server.send(cid, msg))
server.start()
got = threading.Semaphore(0)
client = Client(address="127.0.0.1", port=server.port, inline_callbacks=inline)
client.subscribe("message", lambda msg: got.release())
client.connect()
message = Message("echo", {"n": 1, "text": "hello"})
for _ in range(n):
    client.send(message)
    if not got.acquire(timeout=30):
        sys.exit("echo timed out")
client.disconnect()
server.stop()
"""


BROADCAST = """
import sys, threading
sys.setswitchinterval(1.0)
from missioncommander import Client, Message, Server
rounds, inline = int(sys.argv[1]), sys.argv[2] == "1"
CLIENTS = 100
server = Server(interface="127.0.0.1", port=0, inline_callbacks=inline, max_connection_rate=None)
server.start()
lock, done = threading.Lock(), threading.Event()
left = [CLIENTS * rounds]
def got(msg):
    with lock:
        left[0] -= 1
        if left[0] == 0:
            done.set()
clients = []
for _ in range(CLIENTS):
    client = Client(address="127.0.0.1", port=server.port, inline_callbacks=inline)
    client.subscribe("message", got)
    client.connect()
    clients.append(client)
message = Message("tick", {"n": 1, "text": "hello"})
for _ in range(rounds):
    server.send("*", message)
if not done.wait(120):
    sys.exit("broadcast timed out")
for client in clients:
    client.disconnect()
server.stop()
"""


REQUEST = """
import sys
sys.setswitchinterval(1.0)
from missioncommander import Client, Message, Server
n, inline = int(sys.argv[1]), sys.argv[2] == "1"
server = Server(interface="127.0.0.1", port=0, inline_callbacks=inline)
server.subscribe("request", lambda cid, msg: msg.payload)
server.start()
client = Client(address="127.0.0.1", port=server.port, inline_callbacks=inline)
client.connect()
message = Message("echo", {"n": 1, "text": "hello"})
for _ in range(n):
    client.request(message, timeout=30)
client.disconnect()
server.stop()
"""


ASYNC_BROADCAST = """
import asyncio, sys
sys.setswitchinterval(1.0)
from missioncommander import Message
from missioncommander.aio import AsyncClient, AsyncServer
rounds = int(sys.argv[1])
CLIENTS = 100
async def receive(messages):
    seen = 0
    async for _ in messages:
        seen += 1
        if seen == rounds:
            return
async def main():
    async with AsyncServer(interface="127.0.0.1", port=0, max_connection_rate=None) as server:
        clients = [AsyncClient(address="127.0.0.1", port=server.port) for _ in range(CLIENTS)]
        await asyncio.gather(*(c.connect() for c in clients))
        readers = [asyncio.create_task(receive(c.messages())) for c in clients]
        message = Message("tick", {"n": 1, "text": "hello"})
        for _ in range(rounds):
            await server.send("*", message)
        async with asyncio.timeout(120):
            await asyncio.gather(*readers)
        await asyncio.gather(*(c.disconnect() for c in clients))
asyncio.run(main())
"""


# The asyncio echo; ANSWER is how the server answers: a task reading
# messages() (ASYNC_ECHO), or a plain message callback, as bench/run.py's
# mc-async system answers (systems.mc_async_serve; ASYNC_CALLBACK_ECHO).
_ASYNC_ECHO = """
import asyncio, sys
from missioncommander import Message
from missioncommander.aio import AsyncClient, AsyncServer
n = int(sys.argv[1])
async def serve(server):
    async for client_id, message in server.messages():
        await server.send(client_id, message)
async def main():
    async with AsyncServer(interface="127.0.0.1", port=0) as server:
        ANSWER
        async with AsyncClient(address="127.0.0.1", port=server.port) as client:
            messages = client.messages()
            message = Message("echo", {"n": 1, "text": "hello"})
            async with asyncio.timeout(120):
                for _ in range(n):
                    await client.send(message)
                    await anext(messages)
asyncio.run(main())
"""
# The reading task ends with the server (its messages() ends).
ASYNC_ECHO = _ASYNC_ECHO.replace("ANSWER", "echo = asyncio.create_task(serve(server))")
ASYNC_CALLBACK_ECHO = _ASYNC_ECHO.replace(
    "ANSWER", 'server.subscribe("message", lambda client_id, message: server.send_nowait(client_id, message))'
)


ASYNC_REQUEST = """
import asyncio, sys
from missioncommander import Message
from missioncommander.aio import AsyncClient, AsyncServer
n = int(sys.argv[1])
async def main():
    async with AsyncServer(interface="127.0.0.1", port=0) as server:
        server.subscribe("request", lambda client_id, message: message.payload)
        async with AsyncClient(address="127.0.0.1", port=server.port) as client:
            message = Message("echo", {"n": 1, "text": "hello"})
            for _ in range(n):
                await client.request(message, timeout=30)
asyncio.run(main())
"""


#: The floor of ASYNC_ECHO: the same echo with bare asyncio Protocols (a
#: length prefix and a JSON body, as the benchmark's plain sockets), so the
#: difference is what the library adds over asyncio's own loop.
ASYNCIO_ECHO = """
import asyncio, json, struct, sys
n = int(sys.argv[1])
LEN = struct.Struct("!I")
class Framed(asyncio.Protocol):
    def __init__(self, on_message):
        self.buf, self.on_message = bytearray(), on_message
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        buf = self.buf
        buf += data
        while len(buf) >= 4 and len(buf) >= 4 + LEN.unpack_from(buf)[0]:
            size = LEN.unpack_from(buf)[0]
            body = bytes(buf[4 : 4 + size])
            del buf[: 4 + size]
            self.on_message(self, json.loads(body))
def send(proto, obj):
    body = json.dumps(obj).encode()
    proto.transport.write(LEN.pack(len(body)) + body)
async def main():
    loop = asyncio.get_running_loop()
    inbox = asyncio.Queue()
    server = await loop.create_server(lambda: Framed(send), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(lambda: Framed(lambda p, m: inbox.put_nowait(m)), "127.0.0.1", port)
    message = ["echo", {"n": 1, "text": "hello"}]
    async with asyncio.timeout(120):
        for _ in range(n):
            send(client, message)
            await inbox.get()
    client.transport.close()
    server.close()
asyncio.run(main())
"""


CONNECT = """
import sys, threading
sys.setswitchinterval(1.0)
from missioncommander import Client, Server
n, inline = int(sys.argv[1]), sys.argv[2] == "1"
server = Server(interface="127.0.0.1", port=0, inline_callbacks=inline, max_connection_rate=None)
server.start()
lock, done = threading.Lock(), threading.Event()
left = [n]
def up():
    with lock:
        left[0] -= 1
        if left[0] == 0:
            done.set()
clients = []
for i in range(n):
    client = Client(address="127.0.0.1", port=server.port, client_id=f"c{i}", inline_callbacks=inline)
    client.subscribe("connect", up)
    client.connect(wait=False)
    clients.append(client)
if not done.wait(300):
    sys.exit("connect timed out")
for client in clients:
    client.disconnect()
server.stop()
"""


def count(round_trips: int, inline: bool, script: str = ECHO) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={os.path.join(tmp, 'out')}",
                sys.executable,
                "-c",
                script,
                str(round_trips),
                "1" if inline else "0",
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
    match = re.search(r"Collected : (\d+)", out.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inline", action="store_true", help="inline_callbacks=True on both sides")
    parser.add_argument("--broadcast", action="store_true", help="per delivery of a broadcast to 100 clients")
    parser.add_argument("--request", action="store_true", help="per request/reply round trip")
    parser.add_argument("--connect", action="store_true", help="per client connected (and disconnected)")
    parser.add_argument(
        "--async-broadcast", action="store_true", help="per broadcast delivery, the asyncio API (100 clients)"
    )
    parser.add_argument("--async-echo", action="store_true", help="per echo round trip, the asyncio API")
    parser.add_argument(
        "--async-callback-echo",
        action="store_true",
        help="per echo round trip, the asyncio API, the server answering from a callback (run.py's mc-async)",
    )
    parser.add_argument("--async-request", action="store_true", help="per request/reply round trip, the asyncio API")
    parser.add_argument(
        "--asyncio-echo", action="store_true", help="per echo round trip, bare asyncio Protocols (the floor)"
    )
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="runs, and their median (default 1)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("needs valgrind (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    if args.broadcast:
        script, small, large, per, what = BROADCAST, 20, 100, 80 * 100, "broadcast delivery (100 clients)"
    elif args.async_broadcast:
        script, small, large, per, what = ASYNC_BROADCAST, 20, 100, 80 * 100, "asyncio broadcast delivery (100 clients)"
    elif args.async_echo:
        script, small, large, per, what = ASYNC_ECHO, 500, 2500, 2000, "asyncio echo round trip"
    elif args.async_callback_echo:
        script, small, large, per, what = (
            ASYNC_CALLBACK_ECHO,
            500,
            2500,
            2000,
            "asyncio echo round trip (callback server)",
        )
    elif args.async_request:
        script, small, large, per, what = ASYNC_REQUEST, 500, 2500, 2000, "asyncio request/reply round trip"
    elif args.asyncio_echo:
        script, small, large, per, what = ASYNCIO_ECHO, 500, 2500, 2000, "bare asyncio echo round trip"
    elif args.connect:
        script, small, large, per, what = CONNECT, 200, 1000, 800, "client connected and disconnected"
    elif args.request:
        script, small, large, per, what = REQUEST, 500, 2500, 2000, "request/reply round trip"
    else:
        script, small, large, per, what = ECHO, 500, 2500, 2000, "echo round trip"
    mode = "inline" if args.inline else "default"
    runs = []
    for _ in range(max(1, args.repeat)):
        runs.append((count(large, args.inline, script) - count(small, args.inline, script)) / per)
        if args.repeat > 1:
            print(f"  run {len(runs)}: {runs[-1]:,.0f}", flush=True)
    print(f"{statistics.median(runs):,.0f} instructions per {what} ({mode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
