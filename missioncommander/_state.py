"""``ClientState`` and ``ClientStateTransition``."""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

__all__ = ["ClientState", "ClientStateTransition"]


def _names(state: int) -> str:
    """The names of the bits set in ``state``, lowest first, joined by ``' | '``.

    >>> ClientState.get_name(ClientState.STATE_OK | ClientState.STATE_CONNECTED)
    'STATE_OK | STATE_CONNECTED'
    >>> ClientState.get_name(0)
    'STATE_UNDEFINED'
    >>> (ClientState.STATE_OK | ClientState.STATE_CONNECTED).get_name()
    'STATE_OK | STATE_CONNECTED'
    """
    value = int(state)
    if value == 0:
        return "STATE_UNDEFINED"
    names = [member.name for member in _BITS if value & member.value]
    unknown = value & ~_ALL_BITS
    if unknown:
        names.append(hex(unknown))
    return " | ".join(n for n in names if n)


class _NamesOf(Protocol):
    def __call__(self, other: int | None = None) -> str: ...


class _OnClassOrState:
    """``get_name``: ``ClientState.get_name(state)`` as documented, and
    ``state.get_name()`` too, which is what people try first."""

    @overload
    def __get__(self, state: None, owner: type[Any]) -> Callable[[int], str]: ...
    @overload
    def __get__(self, state: int, owner: type[Any]) -> _NamesOf: ...
    def __get__(self, state: int | None, owner: type[Any]) -> Callable[..., str]:
        if state is None:
            return _names
        # On a state, the state is the default: `s.get_name(other)` still
        # names `other`, as it did when get_name was a static method.
        return functools.partial(_of_state_or, state)


def _of_state_or(state: int, other: int | None = None) -> str:
    return _names(state if other is None else other)


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

    def __str__(self) -> str:
        """The names of the bits set, as ``get_name()`` gives them:
        ``print(client.state)`` showed ``38``. ``int(state)``, ``%d`` and
        ``f"{state:d}"`` give the number; JSON writes the number."""
        return _names(self._value_)

    #: ``ClientState.get_name(state)`` (or ``state.get_name()``): the names
    #: of the bits set, lowest first, joined by ``' | '``, e.g.
    #: ``'STATE_OK | STATE_RUNNING | STATE_CONNECTED'``; ``'STATE_UNDEFINED'`` for 0.
    #: (Set below the class: a value in an enum's body would read to a type
    #: checker as one more member.)
    get_name: _OnClassOrState


ClientState.get_name = _OnClassOrState()
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
