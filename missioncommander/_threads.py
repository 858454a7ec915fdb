"""The library's threads, started so that they never take the process's signals.

Python runs signal handlers on the main thread only, and the kernel gives
a signal sent to the process to any thread that does not block it when
the main thread cannot take it at once (one already pending there, say).
Had one of ours taken a Ctrl-C in its own wait, the program's main thread
would go on waiting in ``queue.get()`` or ``input()`` as if nothing had
come.  Blocked here, such signals always go to a thread of the program's.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

#: The signals a process is sent to ask its program something: stop,
#: reload, a timer, a resized terminal.  Not the faults a thread causes
#: itself (SIGSEGV and the like), which must reach that thread.
_PROGRAM_SIGNALS = frozenset(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGWINCH")
    if hasattr(signal, name)
)


def start_thread(target: Callable[..., Any], name: str, args: tuple[Any, ...] = ()) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` with the program's
    signals blocked from its first instruction (a thread inherits the mask
    of the thread that starts it: blocked here for the moment of the start)."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    if not hasattr(signal, "pthread_sigmask"):
        thread.start()
        return thread
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _PROGRAM_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    return thread
