"""Instructions per echo round trip, counted by callgrind: a figure that does
not move with the machine's load (bench/RESULTS.md, "To judge a change").

    python3 bench/instructions.py [--inline]

Runs an echo (client and server in one process, loopback) under
``valgrind --tool=callgrind`` for 500 and for 2,500 round trips and prints
(instructions for 2,500 - for 500) / 2,000: start-up and shutdown cancel out.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ECHO = """
import sys, threading
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


def count(round_trips: int, inline: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={os.path.join(tmp, 'out')}",
                sys.executable,
                "-c",
                ECHO,
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
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("needs valgrind (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    small, large = count(500, args.inline), count(2500, args.inline)
    print(f"{(large - small) / 2000:,.0f} instructions per echo round trip ({'inline' if args.inline else 'default'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
