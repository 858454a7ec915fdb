"""mcd's entry point: signal handlers before anything else loads.

A SIGTERM (systemd's stop) or SIGINT (Ctrl-C) may come at any moment of
start-up.  Until ``main`` takes over, they are only noted here; ``main``
then stops cleanly, as for a signal at any later moment.  This module and
the package's ``__init__`` import nothing else, to keep the time before the
handlers exist as short as the interpreter allows.
"""

import signal
import sys

_received: list[int] = []


def _note(signum: int, _frame: object) -> None:
    _received.append(signum)


def run() -> int:
    """The ``mcd`` command."""
    signal.signal(signal.SIGTERM, _note)
    signal.signal(signal.SIGINT, _note)
    import time  # noqa: PLC0415 - after the handlers, as everything else

    since = time.monotonic()
    from .main import main  # noqa: PLC0415 - after the handlers, on purpose

    return main(sys.argv[1:], early_signals=_received, handlers_since=since)
