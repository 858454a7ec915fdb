"""Attributes an application set on a ``Client`` or ``Server`` (or their
asyncio wrappers) that do nothing: a misspelt setting, a paho-style
``on_message`` hook."""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from collections.abc import Callable, Collection
from types import FrameType

from ._callbacks import normalise_event

_PACKAGE = os.path.dirname(__file__) + os.sep
_PACKAGE_NAME = __name__.partition(".")[0]


def warn_stray_attributes(
    obj: object, settings: Collection[str], events: Collection[str], subscribed: Callable[[str], Collection[object]]
) -> None:
    """Warn of attributes set on ``obj`` (``client.heartbeat_intervall = 2``,
    ``client.on_message = f``), or defined by the application's subclass of
    its class (``def on_message(self, message)``), that look meant as a
    setting or a callback but are neither, so did nothing: the constructor
    refuses such names, an assignment cannot without a ``__setattr__`` that
    every attribute of a connection would pay for, so ``connect()`` and
    ``start()`` look once.  Names close to nothing known are left alone (a
    subclass's own), as are a subclass's methods but for ``on<event>``, and
    an ``on_message`` whose callback is ``subscribed`` to that event."""
    api = type(obj).__name__
    said: list[str] = []
    # The instance's attributes, then what the application's subclasses
    # define (``def on_message(self, message)``, as in paho's subclasses).
    own = [(name, value, False) for name, value in vars(obj).items()]
    seen = set(vars(obj))
    for klass in type(obj).__mro__:
        if klass.__module__.partition(".")[0] in (_PACKAGE_NAME, "builtins"):
            continue
        own += [(name, value, True) for name, value in vars(klass).items() if name not in seen]
        seen.update(vars(klass))
    for name, value, defined in own:
        if name.startswith("_") or name in settings:
            continue
        method = defined and hasattr(type(value), "__get__")
        if name.lower().startswith("on") and (callable(value) or not defined):
            try:
                event = normalise_event(name, events)
            except ValueError:
                pass
            else:
                if getattr(obj, name) in subscribed(event):
                    continue  # kept at hand and subscribed too: it does something
                said.append(
                    f"{api}.{name} is not a callback hook, so defining it did nothing:"
                    f" subscribe({event!r}, self.{name}) subscribes it"
                    if method
                    else f"{api}.{name} is not a callback hook, so setting it did nothing:"
                    f" subscribe({event!r}, callback) subscribes one"
                )
                continue
        if method:
            continue  # a method of the application's own, whatever its name
        close = difflib.get_close_matches(name.lower(), settings, n=1, cutoff=0.8)
        if close:
            said.append(f"{api}.{name} is not a setting, so setting it did nothing (did you mean {close[0]!r}?)")
    if said:
        # Said where the application called (its ``connect()``, its ``async with``), not in here.
        frame: FrameType | None = sys._getframe(1)
        level = 2
        while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
            frame, level = frame.f_back, level + 1
        for text in said:
            warnings.warn(text, stacklevel=level)
