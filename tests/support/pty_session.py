"""Drive a terminal program through a pseudo-terminal, as a person would."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


_TAKE_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execvp(sys.argv[1], sys.argv[1:])"
)


class PtySession:
    def __init__(self, argv: list[str], env: dict[str, str], columns: int = 160, lines: int = 40) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        # Through a few lines of Python that make the terminal the new
        # session's controlling one, as a person's is (Ctrl-C typed at it
        # interrupts the program), then become the program.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TAKE_TERMINAL, *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm"},
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.raw = ""

    @property
    def text(self) -> str:
        return _ANSI.sub("", self.raw)

    def expect(self, needle: str, timeout: float = 20.0, start: int = 0) -> int:
        """Wait until ``needle`` shows up after offset ``start`` of the clean text; return its end."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.text.find(needle, start)
            if found >= 0:
                return found + len(needle)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} did not appear; screen:\n{self.text[-3000:]}\n{self.signal_state()}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the program ended before {needle!r}; screen:\n{self.text[-3000:]}")
                self.raw += chunk.decode(errors="replace")

    def signal_state(self) -> str:
        """Where a Ctrl-C typed at the terminal would go, for a failure's
        message: the terminal's foreground group and ISIG, and each of the
        program's threads' blocked, ignored, caught and pending signals
        (Ctrl-C was lost twice in one run on 3.13, never again since)."""
        lines = []
        try:
            lflag = termios.tcgetattr(self.master)[3]
            lines.append(
                f"terminal: foreground group {os.tcgetpgrp(self.master)} (program {self.proc.pid}),"
                f" ISIG {'on' if lflag & termios.ISIG else 'off'}"
            )
        except OSError as exc:
            lines.append(f"terminal: {exc}")
        tasks = f"/proc/{self.proc.pid}/task"
        for tid in sorted(os.listdir(tasks)) if os.path.isdir(tasks) else []:
            try:
                with open(f"{tasks}/{tid}/status") as status:
                    fields = dict(line.split(":\t", 1) for line in status if ":\t" in line)
            except OSError:
                continue
            kinds = ("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
            sig = " ".join(f"{k}={fields.get(k, '?').strip()}" for k in kinds)
            lines.append(f"thread {tid} {fields.get('Name', '?').strip()}: {sig}")
        return "\n".join(lines)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def line(self, text: str) -> None:
        self.type(text + "\r")

    def wait(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.raw += os.read(self.master, 65536).decode(errors="replace")
                except OSError:
                    break
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)
