"""Received messages, to whoever handles them: the one copy of the rule
for Client and Server.

What one read brought arrives as a run of ``MessageReceived`` events.  A
resume's duplicates are dropped; plain messages go to the ``message``
callbacks in runs (one hand-over for many, ``Callbacks.emit_messages``);
a request goes to the ``request`` callbacks and a reply to the request
waiting for it, each in its place among the messages, so everything is
handled, and acknowledged, in the order it was sent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._frames import meta_suffix
from ._message import Message, RedeliveredMessage

if TYPE_CHECKING:
    from ._callbacks import Callbacks, Run
    from ._events import MessageReceived
    from ._inbox import Inbox
    from ._requests import Requests

#: ``send_reply(*peer, request_id, request, result, exc)``: a Client's or
#: Server's way to send the reply to one request (not ``_callbacks.Answer``,
#: which decides who answers).
SendReply = Callable[..., None]


def deliver(
    callbacks: Callbacks,
    requests: Requests,
    inbox: Inbox,
    events: list[MessageReceived],
    peer: tuple[str, ...],
    answer: SendReply,
) -> None:
    """A run of received messages, to their handlers (``message`` callbacks
    are called with ``*peer, message``); a message a node that died may
    have handed over already comes as a ``RedeliveredMessage``."""
    accept = inbox.stream.accept
    run: Run | None = None
    messages: list[Message]
    sizes: list[int]
    for event in events:
        seq = event.seq
        if not accept(seq):
            continue
        if event.meta is not None:
            if run is not None:
                callbacks.emit_messages(inbox, run)
                run = None
            hand_over(callbacks, requests, inbox, event, peer, answer)
            continue
        if run is None:
            messages, sizes = [], []
            run = (seq, peer, messages, sizes)
        kind = Message if seq > inbox.redelivered_upto else RedeliveredMessage
        encoded = event.encoded
        messages.append(kind._from_wire(event.subject, event.payload, encoded))
        sizes.append(len(encoded))
    if run is not None:
        callbacks.emit_messages(inbox, run)


def hand_over(
    callbacks: Callbacks,
    requests: Requests,
    inbox: Inbox,
    event: MessageReceived,
    peer: tuple[str, ...],
    answer: SendReply,
) -> None:
    """A received request or reply (``event.meta`` set), to its handler, in
    order with the messages: a reply to the request waiting for it, a
    request to the ``request`` callbacks (called with ``*peer, message``)
    and their result to ``answer`` (with ``*peer`` first)."""
    meta = event.meta
    assert meta is not None
    size = len(event.encoded)
    encoded = None
    request_id = meta.get("request")
    if request_id is not None:
        # A request as with_id wrote it: its [subject, payload] is the body
        # without the meta, so a reply that is the request needs no encoding.
        suffix = meta_suffix("request", request_id)
        body = event.encoded
        if body[-len(suffix) :] == suffix:  # a memoryview compares too
            encoded = bytes(body[: -len(suffix)]) + b"]"
    # A request a node that died may have handed to its responder already is
    # marked as a message is: the responder may have acted on it.
    kind = Message if event.seq > inbox.redelivered_upto else RedeliveredMessage
    message = kind._from_wire(event.subject, event.payload, encoded)
    if "reply" in meta:
        request_id = meta["reply"]
        asker = peer[0] if peer else ""  # the registry's name for the peer: "" on a client
        now = requests.asked_in_a_callback(asker, request_id)
        callbacks.emit_reply(
            inbox, event.seq, size, requests.resolve, asker, request_id, message, meta.get("error"), now=now
        )
    else:
        reply = functools.partial(answer, *peer, meta["request"], message)
        callbacks.emit_request(inbox, event.seq, size, (*peer, message), reply)
