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


def warn_stray_attributes(
    obj: object, settings: Collection[str], events: Collection[str], subscribed: Callable[[str], Collection[object]]
) -> None:
    """Warn of attributes set on ``obj`` (``client.heartbeat_intervall = 2``,
    ``client.on_message = f``) that look meant as a setting or a callback
    but are neither, so did nothing: the constructor refuses such names,
    an assignment cannot without a ``__setattr__`` that every attribute of
    a connection would pay for, so ``connect()`` and ``start()`` look once.
    Names close to nothing known are left alone (a subclass's own), as is
    an ``on_message`` that holds a callback ``subscribed`` to that event."""
    api = type(obj).__name__
    said: list[str] = []
    for name, value in list(vars(obj).items()):
        if name.startswith("_") or name in settings:
            continue
        if name.lower().startswith("on"):
            try:
                event = normalise_event(name, events)
            except ValueError:
                pass
            else:
                if value in subscribed(event):
                    continue  # kept at hand and subscribed too: it does something
                said.append(
                    f"{api}.{name} is not a callback hook, so setting it did nothing:"
                    f" subscribe({event!r}, callback) subscribes one"
                )
                continue
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
