"""The daemon's core in the calling process, behind ControlClient's interface.

mcctl's shell uses it when no daemon answers: the same commands and answers
as over the socket, without a socket, and without saving state (the
instances live as long as the shell).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mc_control import schema
from mc_control.client import ControlError, DaemonUnreachable

from .core import CoreError, DaemonCore
from .dispatch import Dispatcher


class EmbeddedDaemon:
    """``request`` and ``subscribe`` as ``mc_control.ControlClient`` has them."""

    def __init__(self) -> None:
        self.core = DaemonCore(store=None)
        self.stopped = False
        #: As ControlClient's: how long a stream may stay silent; None: forever.
        self.stream_timeout: float | None = None
        self.dispatcher = Dispatcher(self.core, self.close, {"socket": None, "state_dir": None, "embedded": True})

    def request(self, cmd: str, **params: Any) -> dict[str, Any]:
        if cmd == "daemon.shutdown":
            # There is no daemon to stop: the instances live in this shell.
            raise ControlError(
                "state_error",
                "no mcd is running: this shell hosts the clients and servers itself, and leaving it "
                "(exit, or Ctrl-D) stops them",
            )
        try:
            return self.dispatcher.run(self.dispatcher.parse({"cmd": cmd, **params}))
        except CoreError as exc:
            raise ControlError(exc.code.value, exc.message, exc.details) from None

    def subscribe(self, **params: Any) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
        try:
            req = self.dispatcher.parse({"cmd": "subscribe", **params})
        except CoreError as exc:
            raise ControlError(exc.code.value, exc.message, exc.details) from None
        assert isinstance(req, schema.Subscribe)
        instances = [(i.kind, i.name) for i in req.instances] if req.instances is not None else None
        since = (req.since.boot_id, req.since.seq) if req.since is not None else None
        sub, answer = self.core.subscribe(instances, req.events, since)

        def events() -> Iterator[dict[str, Any]]:
            try:
                while True:
                    try:
                        event = sub.get(timeout=self.stream_timeout)
                    except OverflowError:
                        yield {"type": "overflow", "message": "missed events"}
                        return
                    except EOFError:
                        return
                    if event is None:
                        raise DaemonUnreachable("timeout", "(embedded)", "no event in time", "")
                    yield event
            finally:
                self.core.unsubscribe(sub)

        return answer, events()

    def close(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.core.shutdown()
