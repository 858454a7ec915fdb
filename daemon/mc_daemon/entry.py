"""mcd's entry point: signal handlers before anything else loads.

A SIGTERM (systemd's stop), SIGINT (Ctrl-C) or SIGHUP (the terminal mcd
runs in closed) may come at any moment of start-up.  Until ``main`` takes
over, they are only noted here; ``main`` then stops cleanly, as for a
signal at any later moment.  This module and
the package's ``__init__`` import nothing else, to keep the time before the
handlers exist as short as the interpreter allows.
"""

import signal
import sys

_received: list[int] = []

#: The signals that stop mcd cleanly: systemd's stop, Ctrl-C, and the
#: hang-up of the terminal a foreground mcd runs in (which killed it on the
#: spot, its servers' clients unwarned and its socket left behind).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _note(signum: int, _frame: object) -> None:
    _received.append(signum)


def run() -> int:
    """The ``mcd`` command."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _note)
    import time  # noqa: PLC0415 - after the handlers, as everything else

    since = time.monotonic()
    from .main import main  # noqa: PLC0415 - after the handlers, on purpose

    return main(sys.argv[1:], early_signals=_received, handlers_since=since)
