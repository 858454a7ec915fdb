"""``Message``: a subject and a read-only JSON payload."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

__all__ = ["FrozenDict", "FrozenList", "Message"]

# Compact separators: the encoded body is what travels, once per broadcast.
_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# JSONEncoder.encode builds a fresh C encoder on every call; making it once
# halves the cost of encoding a small message.  Payloads are validated plain
# JSON by then, so the C encoder needs no ``default``.


def _make_c_encoder() -> Callable[[Any, int], Any] | None:
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or basestring is None:  # pragma: no cover - CPython has both
        return None
    try:
        # (markers, default, encoder, indent, key_sep, item_sep, sort_keys, skipkeys, allow_nan)
        encoder: Callable[[Any, int], Any] = make(None, None, basestring, None, ":", ",", False, False, False)
    except TypeError:  # pragma: no cover - a CPython whose private signature moved
        return None
    return encoder


_c_encode = _make_c_encoder()


# The optional ``fast`` extra: orjson encodes many times faster than the
# standard library (a 1 MiB string: 0.2 ms against 4 ms) and writes the same
# JSON.  Only for encoding: its decoder reads integers beyond 64 bits as
# floats, which would change a payload silently.
def _load_fast_dumps() -> Callable[[Any], bytes] | None:
    try:
        import orjson  # noqa: PLC0415  # optional: only when the extra is installed
    except ImportError:  # the default: pure Python
        return None
    dumps: Callable[[Any], bytes] = orjson.dumps
    return dumps


_fast_dumps = _load_fast_dumps()


def _encode(pair: list[Any]) -> bytes:
    if _fast_dumps is not None:
        try:
            return _fast_dumps(pair)
        except TypeError:
            pass  # what orjson cannot write (integers beyond 64 bits): the standard library can
    return encode_json(pair)


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON of plain, already valid JSON values (the standard
    library's encoder, made once): message bodies and control frames."""
    if _c_encode is not None:
        return "".join(_c_encode(value, 0)).encode("utf-8")
    return _encoder.encode(value).encode("utf-8")  # pragma: no cover - CPython has the C encoder


_set = object.__setattr__  # Message refuses setattr; it sets its own slots this way


def _read_only(*_args: object, **_kwargs: object) -> NoReturn:
    raise TypeError("a Message payload is read-only; build a new Message instead")


class FrozenDict(dict[str, Any]):
    """A ``dict`` that refuses every change.

    It stays a real ``dict`` subclass so that ``json`` encodes it at C speed
    and it compares equal to an ordinary dict with the same items.  Only the
    library builds them, from validated JSON, so a ``Message`` takes one as
    it is.
    """

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __repr__(self) -> str:
        return dict.__repr__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, _memo: object) -> FrozenDict:
        return self


class FrozenList(list[Any]):
    """A ``list`` that refuses every change (see :class:`FrozenDict`)."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def __init__(self, items: Iterable[Any] = ()) -> None:
        list.extend(self, items)

    def __hash__(self) -> int:  # type: ignore[override]
        raise TypeError("unhashable type: 'FrozenList'")

    def __repr__(self) -> str:
        return list.__repr__(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self),))

    def __copy__(self) -> FrozenList:
        return self

    def __deepcopy__(self, _memo: object) -> FrozenList:
        return self


def _check_text(text: str, where: str) -> None:
    """Refuse a str that UTF-8 cannot carry (a lone surrogate, e.g. from
    ``os.fsdecode``): it would fail later, on the wire, far from its cause."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{where} holds a lone surrogate {exc.object[exc.start]!r} at {exc.start}; JSON text must be UTF-8"
            ) from None


def _freeze(value: Any, path: str) -> Any:
    """Validate that ``value`` is plain JSON and return a read-only deep copy."""
    kind = type(value)
    if kind is str:
        _check_text(value, f"payload{path}")
        return value
    if kind is int or value is None or kind is bool:
        return value  # the common leaves, without the isinstance chain below
    if kind is FrozenDict or kind is FrozenList:
        return value  # already validated and read-only (a received payload sent on): share it
    if kind is dict:
        plain = _freeze_dict(value, path)
        if plain is not None:
            return plain
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        _check_text(value, f"payload{path}")
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"payload{path} is {value!r}; JSON has no NaN or infinity")
        return float(value)
    if isinstance(value, Mapping):
        frozen = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"payload{path} has a key {key!r} of type {type(key).__name__}; JSON object keys must be str"
                )
            _check_text(key, f"a key of payload{path}")
            frozen[key] = _freeze(item, f"{path}[{key!r}]")
        return FrozenDict(frozen)
    if isinstance(value, (list, tuple)):
        return FrozenList(_freeze(item, f"{path}[{i}]") for i, item in enumerate(value))
    raise TypeError(f"payload{path} is of type {type(value).__name__}, which is not JSON-serialisable")


def _freeze_dict(value: dict[Any, Any], path: str) -> FrozenDict | None:
    """``_freeze`` of a ``dict`` whose keys are ASCII str, else None (the
    thorough path checks the keys and says what is wrong)."""
    flat = True
    for key, item in value.items():
        if type(key) is not str or not key.isascii():
            return None
        kind = type(item)
        if not ((kind is str and item.isascii()) or kind is int or item is None or kind is bool):
            flat = False
    if flat:
        return FrozenDict(value)  # plain leaves only: copied in C
    return FrozenDict({key: _freeze(item, f"{path}[{key!r}]") for key, item in value.items()})


def not_a_message(value: object) -> TypeError:
    """What ``send()``, ``request()`` and the like raise for anything but a
    Message (the usual slip: a subject and a payload passed as they are)."""
    return TypeError(f"message must be a Message, as Message(subject, payload), not {type(value).__name__}")


class Message:
    """A message: a non-empty ``subject`` and a JSON object ``payload``.

    A ``Message`` is read-only: assigning an attribute raises
    ``AttributeError`` and changing the payload (nested values included)
    raises ``TypeError``.  The payload is copied at construction, so later
    changes to the caller's dict do not show.  Everything is validated here,
    not later on the wire: a non-str or empty subject, a payload that is not a
    dict, or one that JSON cannot represent exactly (non-str keys, NaN, sets,
    arbitrary objects) raises ``TypeError`` or ``ValueError``; so does one
    nested a few hundred levels deep, past what Python's recursion allows.

    ``redelivered`` is True only on a message a cluster server hands to its
    callbacks after taking the client over from a node that died without
    letting go: that node may have run its callbacks on it already
    (docs/CLUSTER.md).  It is not part of the message: equality, copies and
    the wire ignore it.

    >>> m = Message("echo", {"message": "hello"})
    >>> m.subject, m.payload["message"], m.body is m.payload, m.redelivered
    ('echo', 'hello', True, False)
    """

    __slots__ = ("_encoded", "_payload", "_subject")

    #: See the class docstring; a class attribute, so a message costs no more.
    redelivered = False

    _subject: str
    _payload: FrozenDict
    _encoded: bytes | memoryview | None

    def __init__(self, subject: str, payload: Mapping[str, Any] | None = None) -> None:
        if not isinstance(subject, str):
            raise TypeError(f"subject must be a str, not {type(subject).__name__}")
        if not subject:
            raise ValueError("subject must not be empty")
        if not subject.isascii():
            _check_text(subject, "subject")
        frozen: FrozenDict | None
        if type(payload) is FrozenDict:
            frozen = payload  # validated and read-only already (a received payload sent on)
        else:
            try:
                frozen = _freeze_dict(payload, "") if type(payload) is dict else None
                if frozen is None:
                    if payload is None:
                        payload = {}
                    elif type(payload) is not dict and not isinstance(payload, Mapping):  # the ABC check is slow
                        raise TypeError(f"payload must be a dict, not {type(payload).__name__}")
                    frozen = _freeze(payload, "")
            except RecursionError:
                # A few hundred levels: the copy recurses per level. Said as
                # bad input, as the rest is (mcd answered "internal error").
                raise ValueError("payload is nested too deeply to copy (a few hundred levels at most)") from None
        _set(self, "_subject", subject)
        _set(self, "_payload", frozen)
        _set(self, "_encoded", None)

    @classmethod
    def _from_wire(cls, subject: str, payload: FrozenDict, encoded: bytes | memoryview | None) -> Message:
        """Build a message from a decoded frame (already frozen) without
        validating it again; ``encoded`` None when the body held more than
        the message (a request's meta): it is encoded afresh if needed."""
        msg = cls.__new__(cls)
        _set(msg, "_subject", subject)
        _set(msg, "_payload", payload)
        _set(msg, "_encoded", encoded)
        return msg

    @property
    def subject(self) -> str:
        """The message's subject, a non-empty string."""
        return self._subject

    @property
    def payload(self) -> FrozenDict:
        """The read-only payload, a ``dict`` subclass (``{}`` when none was given)."""
        return self._payload

    @property
    def body(self) -> FrozenDict:
        """Alias of :attr:`payload`."""
        return self._payload

    def encode(self) -> bytes:
        """The message as it travels: the UTF-8 JSON array ``[subject, payload]``."""
        encoded = self._encoded
        if type(encoded) is not bytes:
            # Not yet encoded, or received as a view into its frame.
            encoded = _encode([self._subject, self._payload]) if encoded is None else bytes(encoded)
            _set(self, "_encoded", encoded)
        return encoded

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"Message is read-only; cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"Message is read-only; cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._subject == other._subject and self._payload == other._payload

    __hash__ = None  # type: ignore[assignment]  # equal payloads may encode differently

    def __repr__(self) -> str:
        return f"Message(subject={self._subject!r}, payload={self._payload!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Message, (self._subject, dict(self._payload)))


class RedeliveredMessage(Message):
    """A ``Message`` that may have reached a dead cluster node's callbacks
    already (``redelivered`` is True); otherwise the same."""

    __slots__ = ()
    redelivered = True
