"""Validated settings shared by Client and Server."""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import re
import socket
import urllib.parse
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, overload

from ._frames import client_id_problem

T = TypeVar("T")


class HasSettings(Protocol):
    _settings: dict[str, Any]

    def _check_settable(self, name: str) -> None: ...

    def _setting_changed(self, name: str) -> None: ...


class Settings:
    """The base of a class that declares ``Setting`` attributes: what the
    settings need of the object they live on (``Client`` and ``Server``
    override both hooks)."""

    _settings: dict[str, Any]
    #: The defaults a subclass gives settings in its class body, as
    #: socketserver's subclasses do (``class Bot(Client): heartbeat_interval
    #: = 2``), checked when the class is made; a base's included.
    _class_defaults: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own: dict[str, Any] = {}
        for name, value in list(vars(cls).items()):
            if isinstance(value, Setting) or hasattr(type(value), "__get__"):
                continue  # a setting declared here, or the subclass's method or property
            setting = _declared(cls, name)
            if setting is not None:
                own[name] = setting.validate(value, f"{cls.__name__}.{name}")
                # Left in the class, the value would hide the setting from
                # its instances: reads would find the default, and writes
                # would go unchecked.
                delattr(cls, name)
        if own:
            cls._class_defaults = {**cls._class_defaults, **own}

    def _check_settable(self, name: str) -> None:
        """Raise ``StateError`` if the locked setting ``name`` may not change now."""

    def _setting_changed(self, name: str) -> None:
        """``name`` has just been set."""


class Setting(Generic[T]):
    """A validated attribute: the validator runs on every assignment.

    ``locked`` settings cannot change while the owner is running (the owner's
    ``_check_settable`` raises ``StateError``); tuning settings can, and take
    effect from the next time they are used.

    Reading one costs what reading a plain attribute does: the descriptor has
    no ``__get__`` at run time, so a read finds the value that ``__set__``
    (or ``init_settings``, for the defaults) put in the instance's
    ``__dict__``, while writes still go through ``__set__``.  Settings are
    read dozens of times per connection and on every send, and a Python
    ``__get__`` was the most called function of a connection's set-up.
    """

    def __init__(self, default: T, validate: Callable[[Any, str], T], *, locked: bool = True, doc: str = "") -> None:
        self.default = default
        self.validate = validate
        self.locked = locked
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    if TYPE_CHECKING:  # what a read gives, for the type checker (see the class docstring)

        @overload
        def __get__(self, obj: None, owner: type) -> Setting[T]: ...
        @overload
        def __get__(self, obj: HasSettings, owner: type) -> T: ...
        def __get__(self, obj: HasSettings | None, owner: type) -> Setting[T] | T: ...

    def __set__(self, obj: HasSettings, value: Any) -> None:
        checked = self.validate(value, self.name)
        if self.locked:
            if self.name in obj._settings and obj._settings[self.name] == checked:
                return  # setting the current value changes nothing, so it is allowed at any time
            obj._check_settable(self.name)
        assign(obj, self.name, checked)
        obj._setting_changed(self.name)


def _declared(cls: type, name: str) -> Setting[Any] | None:
    """The setting ``name`` that a base of ``cls`` declares, if any."""
    for klass in cls.__mro__[1:]:
        value = vars(klass).get(name)
        if isinstance(value, Setting):
            return value
    return None


_DEFAULTS: dict[type, dict[str, Any]] = {}


def init_settings(obj: HasSettings) -> None:
    """Give a new ``obj`` every setting of its class at its default value,
    or its class's (``Settings._class_defaults``); ``_settings`` keeps only
    those set explicitly."""
    cls = type(obj)
    defaults = _DEFAULTS.get(cls)
    if defaults is None:
        defaults = _DEFAULTS[cls] = {
            name: value.default
            for klass in reversed(cls.__mro__)
            for name, value in vars(klass).items()
            if isinstance(value, Setting)
        } | getattr(cls, "_class_defaults", {})
    obj._settings = {}
    vars(obj).update(defaults)


def apply_settings(obj: HasSettings, settings: dict[str, Any], api: str) -> None:
    """Set the settings a constructor was given, each checked as it is set;
    ``TypeError`` for a name that is no setting, with the closest if one is
    close (``adress``: did you mean ``address``?); ``api`` is the class the
    caller called (``AsyncClient`` for the ``Client`` inside one)."""
    cls = type(obj)
    for name, value in settings.items():
        if not isinstance(getattr(cls, name, None), Setting):
            close = difflib.get_close_matches(name, _DEFAULTS.get(cls, ()), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{api}() got an unknown setting {name!r}{hint}")
        setattr(obj, name, value)


def setting_names(obj: HasSettings) -> Collection[str]:
    """The names of ``obj``'s settings."""
    return _DEFAULTS[type(obj)].keys()


def assign(obj: HasSettings, name: str, value: Any) -> None:
    """Set a setting without checking it: for ``Setting.__set__``, and for
    an owner that moves itself on (a client trying its next server)."""
    obj._settings[name] = value
    vars(obj)[name] = value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_range(
    low: int, high: int | None = None, *, optional: bool = False, none: str = ""
) -> Callable[[Any, str], Any]:
    """An int from ``low`` (to ``high``), or None where ``optional``;
    ``none`` says what None means, in the error of a value out of range
    (``reconnect_attempts=0`` means "for ever" to python-socketio's users)."""

    def check(value: Any, name: str) -> int | None:
        if value is None and optional:
            return None
        if not _is_int(value):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{name} must be {bound}, not {value}" + (f" (None: {none})" if none else ""))
        return int(value)

    return check


#: The largest timer setting: past it a wait overflows what the OS takes
#: (a lock's or a socket's timeout; connect_timeout=1e308 raised
#: OverflowError from connect()). A billion seconds is about 31 years.
MAX_SECONDS = 1e9


def positive_number(*, optional: bool = False) -> Callable[[Any, str], Any]:
    def check(value: Any, name: str) -> float | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
        if not 0 < value <= MAX_SECONDS:  # NaN too
            raise ValueError(f"{name} must be more than 0 and at most {MAX_SECONDS:,.0f}, not {value}")
        return float(value)

    return check


def wait_timeout(timeout: Any) -> float | None:
    """A ``timeout`` argument of a blocking call (a request, a wait for a
    state or for callbacks): None, infinity or more than ``MAX_SECONDS``
    wait as long as it takes. Checked before anything is sent: a request
    with a bad timeout raised only once sent, its slot never freed."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not timeout >= 0:  # NaN too
        raise ValueError(f"timeout must be 0 or more seconds (None: as long as it takes), not {timeout}")
    return None if timeout > MAX_SECONDS else float(timeout)


_CONTROL = re.compile("[\x00-\x1f]")


def non_empty_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    if _CONTROL.search(value):
        raise ValueError(f"{name} must not contain control characters")
    return value


#: The target of a broadcast (``server.send("*", ...)``), so no client's id.
EVERY_CLIENT = "*"

#: The settings that bound a send queue: live, a change applies to the
#: queues there are at once (Client's and each of a Server's sessions).
QUEUE_BOUNDS = ("max_queued", "max_queued_bytes")

#: How long what is still connected at interpreter exit has, all together,
#: to finish: clients write what was sent and say goodbye, cluster nodes
#: hand their clients over.
EXIT_WAIT = 2.0


def client_id(value: Any, name: str) -> str:
    """A client id, by the rule a server applies to a HELLO's
    (``_frames.client_id_problem``): not blank, no control characters, at
    most 1,024 characters, and not ``'*'``, which a server reads as every
    client."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    problem = client_id_problem(value)
    if problem is not None:
        raise ValueError(f"{name} {problem}")
    return value


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def host(value: Any, name: str) -> str:
    """An IP address or a host name that could resolve (RFC 1123 labels, at most 253 characters)."""
    text = non_empty_str(value, name)
    if not _is_host(text):
        raise ValueError(
            f"{name} {text[:80]!r} is not a valid host name "
            "(dot-separated labels of 1 to 63 letters, digits or hyphens, 253 characters at most)"
            + _misplaced_part(text)
        )
    return text


def _misplaced_part(text: str) -> str:
    """What to say of a host or interface written as a URL or as host:port,
    the two ways people paste one where only the host belongs."""
    scheme, sep, _ = text.partition("://")
    if sep:
        return f": give the host alone, without {scheme}://"
    if text.startswith("[") and text.endswith("]") and _is_host(text[1:-1]):
        return f": write an IPv6 address without brackets here ({text[1:-1]!r}); they go around one a port follows"
    where, sep, port = text.rpartition(":")
    if sep and port.isdigit() and where and _is_host(where.removeprefix("[").removesuffix("]")):
        return ": give the host alone; the port is a setting of its own"
    return ""


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _is_host(text: str) -> bool:
    # Cached: the thousands of clients of one process name a few hosts, and
    # parsing an address was a tenth of a client's construction.
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
        return True
    except ValueError:
        pass
    try:
        ascii_name = text.encode("idna").decode("ascii")  # what the resolver will be given
    except UnicodeError:
        return False
    labels = ascii_name.removesuffix(".").split(".")
    return bool(ascii_name) and len(ascii_name) <= 253 and all(_LABEL.match(label) for label in labels)


def interface(value: Any, name: str) -> str:
    """'' or '*' (any), an IP address, ``localhost``, or the name of a local interface."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    resolve_interface(value, name)
    return value


def is_any_interface(value: str) -> bool:
    return value in ("", "*")


def listens_everywhere(value: str) -> bool:
    """Whether a server on ``value`` takes connections on every interface:
    '' and '*', and the wildcard addresses of one family (0.0.0.0, ::)."""
    if is_any_interface(value):
        return True
    try:
        return ipaddress.ip_address(value).is_unspecified
    except ValueError:
        return False  # an interface name: one interface's address


def resolve_interface(value: str, name: str = "interface") -> str:
    """The address to bind for ``value``: '' for any, else an IP address
    (127.0.0.1 for ``localhost``).

    Interface names are looked up with psutil, imported here and only here:
    the standard library has no portable way to do it.
    """
    if is_any_interface(value):
        return ""
    try:
        return str(ipaddress.ip_address(value.split("%", 1)[0])) + (
            "%" + value.split("%", 1)[1] if "%" in value else ""
        )
    except ValueError:
        pass
    if value.lower().removesuffix(".") == "localhost":
        # RFC 6761 names it the loopback, and a client's "localhost" tries
        # 127.0.0.1 among its addresses: no resolver is asked.
        return "127.0.0.1"
    import psutil  # noqa: PLC0415 - only interface names need it; keep import time low

    addrs = psutil.net_if_addrs().get(value)
    if addrs is None:
        known = ", ".join(sorted(psutil.net_if_addrs())) or "none"
        raise ValueError(
            f"{name} {value!r} is neither an IP address nor a local interface (interfaces: {known})"
            + _misplaced_part(value)
        )
    for family in (socket.AF_INET, socket.AF_INET6):
        for addr in addrs:
            if addr.family == family:
                address: str = addr.address
                if family == socket.AF_INET6 and address.startswith("fe80") and "%" not in address:
                    address = f"{address}%{value}"
                return address
    raise ValueError(f"{name} {value!r} has no IP address")


def optional_str(value: Any, name: str) -> str | None:
    """None, or a non-empty str (a path, a token, a host name)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty (use None to unset it)")
    return value


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}")
    return value


def token_map(value: Any, name: str) -> dict[str, str] | None:
    """None, or a dict of client id -> secret (copied)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict of client id to token, not {type(value).__name__}")
    for key, token in value.items():
        if not isinstance(key, str) or not isinstance(token, str) or not key or not token:
            raise ValueError(f"{name} must map non-empty client ids to non-empty tokens")
    return dict(value)


def redis_url(value: Any, name: str) -> str | None:
    """None, or a Redis URL (redis://, rediss:// or unix://) for cluster mode.

    Its host and port are checked here, as ``address`` and ``port`` are: a
    port out of range was refused only by ``start()``, in words that did
    not name the setting, and a host with a space in it was taken, to be
    "unreachable" for ever."""
    text = optional_str(value, name)
    if text is None:
        return None
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"{name} must be a Redis URL such as redis://127.0.0.1:6379/0, not {text[:80]!r}")
    if text.startswith("unix://"):
        return text
    shown = redacted_url(text)[:80]
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:  # an unpaired bracket, or a port of letters or past 65535
        raise ValueError(f"{name} {shown!r} is not a URL Redis can read (its host, or its port: 1 to 65535)") from None
    if port == 0:
        raise ValueError(f"{name} {shown!r}: the port must be 1 to 65535")
    host = parts.hostname
    if host and not _is_host(host):
        raise ValueError(
            f"{name} {shown!r}: {host[:80]!r} is not a valid host name "
            "(dot-separated labels of 1 to 63 letters, digits or hyphens)"
        )
    return text


def redacted_url(url: str) -> str:
    """``url`` with its password (``redis://user:PASSWORD@host`` or
    ``?password=``) shown as ``***``: the form for logs, errors and statuses,
    which people paste into tickets.  The URL as set stays with the setting."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # a bracket without its pair: not worth a guess at what is secret
        return url.partition("://")[0] + "://***"
    user, at, where = parts.netloc.rpartition("@")
    if at and ":" in user:
        # Replaced in place: urlunsplit would rewrite unix:///path as unix:/path.
        url = url.replace(parts.netloc, f"{user.partition(':')[0]}:***@{where}", 1)
    if parts.query:
        url = url.replace("?" + parts.query, "?" + re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query), 1)
    return url


def split_host_port(text: str, name: str) -> tuple[str, str]:
    """``host:port`` or ``[IPv6]:port`` as (host without brackets, port);
    ``('', text)`` without a colon.  ``ValueError`` for an IPv6 address
    followed by a port without brackets: ``::1:30000`` is also the address
    0:0:0:0:0:0:1:30000, and only brackets tell which group is the port
    (``2001:db8::1`` would lose its last group to it)."""
    where, sep, port = text.rpartition(":")
    if not sep:
        return "", text
    if port.isdigit() and not where.startswith("[") and (_is_ipv6(where) or _is_ipv6(text)):
        raise ValueError(f"{name}: {text!r}: an IPv6 address with a port goes in brackets, as [::1]:30000")
    return where.removeprefix("[").removesuffix("]"), port


def server_list(value: Any, name: str) -> tuple[tuple[str, int], ...] | None:
    """None, or servers to try in turn: "host:port" strings or (host, port)
    pairs ("[::1]:30000" for an IPv6 address), or one string of them
    separated by commas ("10.0.0.1:30000,10.0.0.2:30000") or a JSON list
    (as a control API's value is copied into a text field or a command line)."""
    if value is None:
        return None
    if isinstance(value, str) and re.match(r'\s*\[\s*["\]]', value):  # not "[::1]:30000"
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{name}: {value!r:.80} is not a JSON list of host:port") from None
    elif isinstance(value, str):
        value = [item for item in re.split(r"[,\s]+", value) if item]
    if not isinstance(value, list | tuple):
        raise TypeError(f'{name} must be a list such as ["10.0.0.1:30000", "10.0.0.2:30000"], not {value!r:.80}')
    if not value:
        raise ValueError(f"{name} must name at least one server (use None to unset it)")
    servers = []
    for item in value:
        if isinstance(item, str):
            address, port_text = split_host_port(item, name)
            if not address or not port_text.isdigit():
                raise ValueError(f"{name}: {item!r} is not host:port")
            port = int(port_text)
        elif isinstance(item, list | tuple) and len(item) == 2:
            address, port = item
        else:
            raise TypeError(f"{name}: {item!r} is not host:port or a (host, port) pair")
        servers.append((host(address, name), int_range(1, 65535)(port, name)))
    return tuple(servers)
