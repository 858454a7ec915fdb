"""``ClientState`` and ``ClientStateTransition``."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

__all__ = ["ClientState", "ClientStateTransition"]


class ClientState(enum.IntFlag):
    """The state of a :class:`~missioncommander.Client`, as a bitfield.

    A client's state combines several bits; the combinations it passes
    through are listed in the README and in ``Client``'s docstring.  The values
    are part of the public contract and never change.
    """

    STATE_UNDEFINED = 0
    STATE_NEEDS_INIT = 1
    STATE_OK = 2
    STATE_RUNNING = 4
    STATE_NOT_CONNECTED = 8
    STATE_CONNECTING = 16
    STATE_CONNECTED = 32
    STATE_CONNECT_FAILED = 64
    STATE_RECONNECTING = 128
    STATE_RECONNECT_FAILED = 256
    STATE_DISCONNECTING = 512
    STATE_DISCONNECT_FAILED = 1024
    STATE_UNEXP_CLOSED = 2048

    @staticmethod
    def get_name(state: int) -> str:
        """The names of the bits set in ``state``, lowest first, joined by ``' | '``.

        >>> ClientState.get_name(ClientState.STATE_OK | ClientState.STATE_CONNECTED)
        'STATE_OK | STATE_CONNECTED'
        >>> ClientState.get_name(0)
        'STATE_UNDEFINED'
        """
        value = int(state)
        if value == 0:
            return "STATE_UNDEFINED"
        names = [member.name for member in _BITS if value & member.value]
        unknown = value & ~_ALL_BITS
        if unknown:
            names.append(hex(unknown))
        return " | ".join(n for n in names if n)


_BITS = [m for m in ClientState if m.value]
_ALL_BITS = sum(m.value for m in _BITS)


@dataclass(frozen=True, slots=True)
class ClientStateTransition:
    """One change of a client's state, passed to ``statechange`` callbacks."""

    old_state: ClientState
    new_state: ClientState
    timestamp: float = field(default_factory=time.time)

    def __repr__(self) -> str:
        return (
            f"ClientStateTransition({ClientState.get_name(self.old_state)} -> "
            f"{ClientState.get_name(self.new_state)} at {self.timestamp:.6f})"
        )
