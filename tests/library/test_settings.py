"""Client and Server settings: validated on set, locked while running."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from support import DEFAULT_WAIT, server_frames

from missioncommander import Client, ClientState, Message, Server, StateError
from missioncommander._config import redacted_url
from missioncommander._events import Challenge, ErrorReceived
from missioncommander.aio import AsyncClient


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("address", 127, TypeError),
        ("address", "", ValueError),
        ("port", "80", TypeError),
        ("port", True, TypeError),
        ("port", 0, ValueError),
        ("port", 65536, ValueError),
        ("client_id", None, TypeError),
        ("client_id", "", ValueError),
        ("client_id", "a\nb", ValueError),
        ("client_id", "*", ValueError),  # every client, where a server sends: it could not be sent to alone
        ("interface", 1, TypeError),
        ("interface", "no-such-interface0", ValueError),
        ("bind_port", "1", TypeError),
        ("bind_port", -1, ValueError),
        ("connect_timeout", 0, ValueError),
        ("reconnect_attempts", 0, ValueError),
        ("heartbeat_interval", "5", TypeError),
        ("heartbeat_interval", float("nan"), ValueError),
        # Past what a wait can take: connect() raised OverflowError
        ("connect_timeout", 1e308, ValueError),
        ("send_timeout", float("inf"), ValueError),
    ],
)
def test_client_rejects_bad_values(name: str, value: object, error: type[Exception]) -> None:
    client = Client()
    with pytest.raises(error):
        setattr(client, name, value)
    with pytest.raises(error):
        Client(**{name: value})


def test_a_count_that_may_be_none_says_what_none_means_when_out_of_range() -> None:
    """python-socketio's reconnection_attempts=0 means "for ever": here it
    is None, and the refusal of 0 says so."""
    with pytest.raises(ValueError, match=r"^reconnect_attempts must be at least 1, not 0 \(None: try for ever\)$"):
        Client(reconnect_attempts=0)
    with pytest.raises(ValueError, match=r"^max_clients must be at least 1, not 0 \(None: no limit\)$"):
        Server(max_clients=0)


def test_timers_take_up_to_a_billion_seconds() -> None:
    client = Client(connect_timeout=1e9, reconnect_max_delay=1e9)
    assert (client.connect_timeout, client.reconnect_max_delay) == (1e9, 1e9)
    assert Server(session_expiry=1e9).session_expiry == 1e9
    with pytest.raises(
        ValueError, match="session_expiry must be more than 0 and at most 1,000,000,000, not 10000000000"
    ):
        Server(session_expiry=1e10)


def test_client_reads_back_what_was_set_and_needs_address_and_port() -> None:
    client = Client()
    assert client.state == ClientState.STATE_NEEDS_INIT | ClientState.STATE_NOT_CONNECTED
    with pytest.raises(StateError, match="address and port"):
        client.connect()
    client.address = "localhost"
    client.port = 30000
    client.client_id = "abcXYZ"
    client.interface = "lo"
    client.bind_port = 0
    assert (client.address, client.port, client.client_id, client.interface, client.bind_port) == (
        "localhost", 30000, "abcXYZ", "lo", 0,
    )  # fmt: skip
    assert client.state == ClientState.STATE_OK | ClientState.STATE_NOT_CONNECTED
    client.interface = "*"
    client.interface = "127.0.0.1"
    client.interface = "localhost"  # 127.0.0.1 (a server test listens there)
    client.interface = "::1"
    assert client.interface == "::1"


def test_servers_read_a_list_a_comma_string_or_a_json_list() -> None:
    """A JSON list (the control API's form, pasted into mcctl or the GUI)
    was split at its commas: '["127.0.0.1:1"' is not host:port."""
    expected = (("127.0.0.1", 1), ("::1", 2))
    for value in (
        ["127.0.0.1:1", "[::1]:2"],
        "127.0.0.1:1, [::1]:2",
        '["127.0.0.1:1", "[::1]:2"]',
        ' [ "127.0.0.1:1","[::1]:2"]',
    ):
        assert Client(servers=value).servers == expected, value
    assert Client(servers="[::1]:2").servers == (("::1", 2),)  # an IPv6 address, not JSON
    # '::1:2' is also the address 0:0:0:0:0:0:1:2: only brackets say which group is the port.
    for unbracketed in ("::1:2", "2001:db8::1", "fe80::1:30000, 127.0.0.1:1"):
        with pytest.raises(ValueError, match=r"an IPv6 address with a port goes in brackets, as \[::1\]:30000"):
            Client(servers=unbracketed)
    # The host alone goes without them (as socket.getaddrinfo takes it), and is told so.
    with pytest.raises(ValueError, match=r"write an IPv6 address without brackets here \('::1'\)"):
        Client(address="[::1]")
    with pytest.raises(ValueError, match=r"write an IPv6 address without brackets here \('::1'\)"):
        Server(interface="[::1]")
    with pytest.raises(ValueError, match="is not a JSON list"):
        Client(servers='["127.0.0.1:1"')
    with pytest.raises(TypeError, match="is not host:port"):
        Client(servers='["127.0.0.1:1", 2]')


def test_unknown_constructor_setting_is_refused() -> None:
    with pytest.raises(TypeError, match=r"^Client\(\) got an unknown setting 'adress' \(did you mean 'address'\?\)$"):
        Client(adress="x")
    with pytest.raises(TypeError, match=r"^Server\(\) got an unknown setting 'prot' \(did you mean 'port'\?\)$"):
        Server(prot=1)
    with pytest.raises(TypeError, match=r"^Server\(\) got an unknown setting 'xyz'$"):  # nothing close
        Server(xyz="blue")


def test_a_misspelt_setting_or_a_callback_hook_set_as_an_attribute_is_warned_of(
    server: Server, make_client: Callable[..., Client]
) -> None:
    """An assignment is not refused (a subclass may have attributes of its
    own), so ``connect()`` and ``start()`` warn of attributes that look
    meant as a setting or, as paho's ``on_message``, as a callback, and go
    on; an attribute close to nothing known is left alone."""
    client = make_client(server)
    client.heartbeat_intervall = 2  # type: ignore[attr-defined]
    client.on_message = print  # type: ignore[attr-defined]
    client.OnConnect = print  # type: ignore[attr-defined]
    client.counter = 0  # type: ignore[attr-defined]
    client.on_disconnect = print  # type: ignore[attr-defined]
    client.subscribe("disconnect", client.on_disconnect)  # kept at hand and subscribed: it does something
    with pytest.warns(UserWarning) as said:
        client.connect()
    assert client.connected and client.heartbeat_interval == 5.0
    assert [str(w.message) for w in said] == [
        "Client.heartbeat_intervall is not a setting, so setting it did nothing (did you mean 'heartbeat_interval'?)",
        "Client.on_message is not a callback hook, so setting it did nothing:"
        " subscribe('message', callback) subscribes one",
        "Client.OnConnect is not a callback hook, so setting it did nothing:"
        " subscribe('connect', callback) subscribes one",
    ]
    assert {w.filename for w in said} == {__file__}  # where the caller connects, not inside the library

    other = Server(interface="127.0.0.1", port=0)
    other.max_client = 5  # type: ignore[attr-defined]
    other.on_clientconnect = print  # type: ignore[attr-defined]
    with pytest.warns(UserWarning) as said:
        other.start()
    other.stop()
    assert [str(w.message).split(",")[0] for w in said] == [
        "Server.max_client is not a setting",
        "Server.on_clientconnect is not a callback hook",
    ]
    assert "did you mean 'max_clients'?" in str(said[0].message)


def test_a_subclass_gives_settings_defaults_in_its_class_body() -> None:
    """As socketserver's subclasses set ``timeout`` or
    ``allow_reuse_address``: a subclass's class attribute named after a
    setting is that setting's default, checked when the class is made
    (it was silently ignored: reads found the library's default, and
    assignments went unchecked)."""

    class Watchful(Server):
        interface = "127.0.0.1"
        handshake_timeout = 0.2

    class Patient(Client):
        heartbeat_interval = 2
        max_queued = 5

    class Stubborn(Patient):
        max_queued = 7

    assert (Server().interface, Server().handshake_timeout) == ("", 10.0)
    patient, stubborn = Patient(), Stubborn(heartbeat_interval=4)
    assert (patient.heartbeat_interval, patient.max_queued) == (2.0, 5)
    assert (stubborn.heartbeat_interval, stubborn.max_queued) == (4.0, 7)
    assert Client().heartbeat_interval == 5.0
    with pytest.raises(TypeError, match="must be a number of seconds, not str"):
        patient.heartbeat_interval = "slow"  # still checked when assigned
    with pytest.raises(ValueError, match=r"^Hasty\.heartbeat_interval must be"):

        class Hasty(Client):
            heartbeat_interval = -1

    # The server itself goes by them: a silent peer is told off at 0.2 s;
    # at the default 10 s the wait for the frames would run out first.
    with Watchful(port=0) as server, socket.create_connection(("127.0.0.1", server.port)) as silent:
        frames = list(server_frames(silent, timeout=DEFAULT_WAIT / 2))
    assert isinstance(frames[0], Challenge)
    assert [(f.code, f.retry) for f in frames[1:] if isinstance(f, ErrorReceived)] == [("handshake_timeout", True)]


def test_an_async_subclass_gives_its_defaults_to_the_client_inside() -> None:
    class Patient(AsyncClient):
        heartbeat_interval = 2

    client = Patient(address="127.0.0.1", port=1)
    assert client.heartbeat_interval == client._inner.heartbeat_interval == 2.0


def test_a_subclass_method_named_as_a_callback_hook_is_warned_of(
    server: Server, make_client: Callable[..., Client]
) -> None:
    """Paho's subclasses define ``on_message``: here it is not called, so
    ``connect()`` says so, unless it is subscribed; a subclass's other
    methods, whatever their names, are its own."""

    class Bot(Client):
        heartbeat_intervall = 2

        def on_message(self, message: Message) -> None: ...

        def on_connect(self) -> None: ...

        def on_the_hour(self) -> None: ...

        def reconnect_delays(self) -> None: ...

    class SubscribedBot(Bot):
        def __init__(self, **settings: object) -> None:
            super().__init__(**settings)
            self.subscribe("connect", self.on_connect)

    client = SubscribedBot(address="127.0.0.1", port=server.port, reconnect_delay=0.05)
    with pytest.warns(UserWarning) as said:
        client.connect()
    client.disconnect()
    assert [str(w.message) for w in said] == [
        "SubscribedBot.heartbeat_intervall is not a setting, so setting it did nothing"
        " (did you mean 'heartbeat_interval'?)",
        "SubscribedBot.on_message is not a callback hook, so defining it did nothing:"
        " subscribe('message', self.on_message) subscribes it",
    ]
    assert {w.filename for w in said} == {__file__}


def test_generated_ids_are_fresh() -> None:
    client = Client()
    first = client.client_id
    assert first and Client.generate_id() != Client.generate_id()
    assert client.generate_new_id() == client.client_id != first


def test_bind_port_is_required_with_a_specific_interface() -> None:
    client = Client(address="127.0.0.1", port=1, interface="127.0.0.1")
    with pytest.raises(StateError, match="bind_port"):
        client.connect()


def test_settings_are_locked_while_connected(server: Server, make_client: Callable[..., Client]) -> None:
    client = make_client(server)
    client.connect()
    for name, value in (("address", "127.0.0.2"), ("port", 1), ("client_id", "x"), ("interface", ""), ("bind_port", 1)):
        with pytest.raises(StateError, match=f"cannot change {name} while the client is"):
            setattr(client, name, value)
    client.heartbeat_interval = 1.0  # tuning settings may change any time
    client.disconnect()
    client.port = 1
    assert client.port == 1


def test_server_settings(server: Server) -> None:
    with pytest.raises(StateError):
        server.port = 1
    with pytest.raises(StateError):
        server.interface = ""
    assert server.port > 0
    fresh = Server()
    with pytest.raises(ValueError):
        fresh.port = -1
    with pytest.raises(TypeError):
        fresh.port = "1"
    with pytest.raises(ValueError):
        fresh.interface = "no-such-interface0"
    fresh.interface = "lo"
    assert fresh.interface == "lo"
    assert fresh.port == 0


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@10.0.0.1:6379/0", "redis://:***@10.0.0.1:6379/0"),
        ("rediss://app:p%40ss@redis.example:6380/1", "rediss://app:***@redis.example:6380/1"),
        ("redis://app@redis.example/0", "redis://app@redis.example/0"),  # a user name alone is no secret
        ("redis://:pw@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("unix:///run/redis.sock?db=0&password=xyz", "unix:///run/redis.sock?db=0&password=***"),
        ("unix://:pw@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis://host/0?Password=a&x=1", "redis://host/0?Password=***&x=1"),
        ("redis://:pw@[::1:6379/0", "redis://***"),  # unparsable: nothing of it shown
    ],
)
def test_a_redis_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("redis://127.0.0.1:99999/0", r"'redis://127\.0\.0\.1:99999/0' is not a URL Redis can read"),
        ("redis://:pw@host:port/0", r"'redis://:\*\*\*@host:port/0' is not a URL Redis can read"),
        ("redis://:pw@[::1:6379/0", r"'redis://\*\*\*' is not a URL Redis can read"),
        ("rediss://127.0.0.1:0", r"'rediss://127\.0\.0\.1:0': the port must be 1 to 65535$"),
        ("redis://a b:6379/0", r"'redis://a b:6379/0': 'a b' is not a valid host name"),
        ("redis://-bad-.example/0", r"'redis://-bad-\.example/0': '-bad-\.example' is not a valid host name"),
    ],
)
def test_a_redis_url_with_a_bad_host_or_port_is_refused_when_set(url: str, said: str) -> None:
    """As address and port are: before, start() refused a port out of range
    without naming the setting, and took a host with a space in it."""
    with pytest.raises(ValueError, match=f"^cluster {said}"):
        Server(cluster=url)
    for good in ("redis://127.0.0.1:6379/0", "rediss://:pw@[::1]:6380/1", "redis://redis.example", "redis:///0"):
        assert Server(cluster=good).cluster == good
