"""The daemon's core: named instances, the event ring, persistence.

No sockets and no JSON protocol here, so the same core also runs inside the
REPL (mcctl's embedded mode).  Errors are ``CoreError`` with a code from
``mc_control.ErrorCode``.

Locking: ``self._lock`` guards the instance tables, the ring and the
subscriptions.  Library calls that block (connect, disconnect, start, stop)
are made *outside* it, because they wait for the library's callbacks, and
those callbacks publish events here, which takes the lock.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os.path
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NoReturn

from mc_control.codes import (
    API_VERSION,
    CLIENT_KEYS,
    CLIENT_TUNING,
    FILE_KEYS,
    SERVER_KEYS,
    SERVER_TUNING,
    ErrorCode,
    name_option,
)
from mc_control.events import cluster_readiness, host_port
from mc_control.install import install_command
from missioncommander import (
    BindError,
    Client,
    ClientState,
    ClientStateTransition,
    ClusterUnavailable,
    Message,
    MessageTooLarge,
    NoResponder,
    QueueFullError,
    RemoteError,
    RequestTimeout,
    Server,
    SessionLost,
    StateError,
    UnknownClient,
)
from missioncommander import __version__ as library_version
from missioncommander._config import redacted_url  # the library's rule: mcd shows what it logs

from .events import EventRing, Subscription
from .state import Sections, StateStore, StateWriter, encode_member

#: How often a command that waits for an instance looks again with no event.
RECHECK = 0.1

log = logging.getLogger("mcd.core")

#: Never shown in statuses or events (only saved, in a 0600 file).
SECRET_KEYS = ("auth_token", "auth_tokens")
HIDDEN = "(set)"
RING_SIZE = 10_000
#: How long a command that changed something waits for the change to reach
#: the disk before answering with a warning instead.
SAVE_WAIT = 2.0
#: How long a command waits for the restore at start before it runs anyway
#: (a restore of 10,000 instances takes seconds, not minutes).
RESTORE_WAIT = 60.0
#: Numbers for instances' changes (``next()`` of it is atomic: commands run on many threads).
_CHANGES = itertools.count(1)

S = ClientState


class CoreError(Exception):
    def __init__(self, code: ErrorCode, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def client_phase(state: ClientState) -> str:
    """One word for a client's state, as `mcctl wait` and the GUI use it."""
    if state & S.STATE_NEEDS_INIT:
        return "unconfigured"
    for bit, phase in (
        (S.STATE_CONNECTED, "connected"),
        (S.STATE_CONNECTING, "connecting"),
        (S.STATE_RECONNECTING, "reconnecting"),
        (S.STATE_DISCONNECTING, "disconnecting"),
        (S.STATE_CONNECT_FAILED | S.STATE_RECONNECT_FAILED | S.STATE_DISCONNECT_FAILED, "failed"),
    ):
        if state & bit:
            return phase
    return "disconnected"


#: What a peer asking a hosted instance is told, in its ``NoResponder``.
NOT_ANSWERED = "the peer has no request responder: it is hosted by mcd, which runs no code of yours to answer with"


class _Instance:
    kind = ""

    def __init__(self, core: DaemonCore, name: str) -> None:
        self.core = core
        self.name = name
        self._desired = False
        self.last_error: str | None = None
        #: Tuning settings the user set: only these are saved, so a library
        #: default that changes in a later version is not pinned by mcd.
        self.tuned: set[str] = set()
        #: saved_entry() as last built, with the change it is up to: a save
        #: walks every instance, and reading two dozen settings of a
        #: thousand instances each time made every change cost more the
        #: more instances there were.
        self._saved: tuple[int, bytes] | None = None
        #: The last change saved_entry() shows (a number of _CHANGES).
        self._change = next(_CHANGES)
        #: Saved settings the restore could not apply (a cluster URL where
        #: redis-py is missing): saved as they were until set again, and the
        #: instance is not started or connected meanwhile (a cluster node
        #: must not come back as a lone server, nor a server without its token).
        self.refused: dict[str, Any] = {}

    @property
    def desired(self) -> bool:
        """What the user asked for last: connected or started (saved)."""
        return self._desired

    @desired.setter
    def desired(self, value: bool) -> None:
        if value != self._desired:
            self._desired = value
            self._change = next(_CHANGES)

    def saved_entry(self) -> bytes:
        """This instance's member of the state file, encoded: every setting
        but the tuning ones left at their default, and what is desired.

        The state writer's thread builds it while commands change the
        instance (a restore starts what it has just created): an entry is
        kept with the change it was built after, so one built while a change
        was made is built again at the next save, which that change asks
        for (kept as current, it could pin ``desired: false`` on a server
        the restore had started, until its next change)."""
        saved, change = self._saved, self._change
        if saved is None or saved[0] != change:
            tuning = CLIENT_TUNING if self.kind == "client" else SERVER_TUNING
            settings = {k: v for k, v in self.settings(reveal=True).items() if k not in tuning or k in self.tuned}
            settings |= self.refused
            entry = {"settings": settings, "desired": self.desired, **self.saved_extra()}
            saved = (change, encode_member(self.name, entry))
            self._saved = saved
        return saved[1]

    def saved_extra(self) -> dict[str, Any]:
        """What this kind saves besides its settings and desired state."""
        return {}

    def settings_changed(self) -> None:
        self._change = next(_CHANGES)

    def check_nothing_refused(self) -> None:
        """Refuse to start or connect while a saved setting is unapplied."""
        if self.refused:
            saved = ", ".join(f"{key}={_shown_value(key, value)!r}" for key, value in self.refused.items())
            raise CoreError(
                ErrorCode.STATE_ERROR,
                f"{self.kind} {self.name!r} has saved settings mcd could not apply at start ({saved}; "
                f"`mcctl daemon status` says why): set them again, or to none, first",
            )

    def settings(self, reveal: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """The instance as it is now, with ``seq``: the last event published
        before it was read.  It shows what every event up to ``seq`` did
        (and may show some of what later ones did): a controller that has
        applied later events from its stream applies them again on top of
        it, rather than let an answer that crossed them undo them."""
        seq = self.core.last_seq
        return {**self.read_status(), "seq": seq}

    def read_status(self) -> dict[str, Any]:
        raise NotImplementedError

    def publish(self, event: str, **data: Any) -> None:
        self.core.publish(self.kind, self.name, event, data)

    def refuse_request(self, message: Message, **sender: str) -> NoReturn:
        """A peer's request to this instance: shown as a ``request`` event,
        then answered ``no_responder`` (mcd runs no code of the user's to
        answer with).  Without the event a request left no trace in mcctl or
        the GUI, and whoever tried a library client against a hosted server
        saw nothing arrive."""
        self.publish("request", **sender, subject=message.subject, payload=dict(message.payload))
        raise NoResponder(NOT_ANSWERED)

    def publish_settings(self, changed: str) -> dict[str, Any]:
        """A ``settings`` event: every setting (each controller shows the
        same values) and which one this change set; the settings returned."""
        settings: dict[str, Any] = self.settings()
        self.core.publish(self.kind, self.name, "settings", settings, changed=[changed])
        return settings


class ClientInstance(_Instance):
    kind = "client"

    def __init__(self, core: DaemonCore, name: str) -> None:
        super().__init__(core, name)
        self.client = Client()
        #: Restarts of the first connection under way (``set_restarting``),
        #: counted under the core's lock, which ``wait_for`` holds.
        self.restarting = 0
        c = self.client
        c.subscribe("statechange", self._on_state)
        c.subscribe("connect", lambda: self.publish("connect"))
        c.subscribe("disconnect", lambda: self.publish("disconnect"))
        c.subscribe("reconnect", lambda client_id: self.publish("reconnect", client_id=client_id))
        c.subscribe("servershutdown", lambda: self.publish("servershutdown"))
        c.subscribe("sessionlost", lambda reason: self.publish("sessionlost", reason=reason))
        c.subscribe("message", lambda m: self.publish("message", subject=m.subject, payload=dict(m.payload)))
        c.subscribe("request", self.refuse_request)

    def _on_state(self, t: ClientStateTransition) -> None:
        self.publish(
            "statechange",
            old=int(t.old_state),
            new=int(t.new_state),
            old_name=ClientState.get_name(t.old_state),
            new_name=ClientState.get_name(t.new_state),
            phase=client_phase(t.new_state),
            reason=self.client.last_close_reason,
        )

    def settings(self, reveal: bool = False) -> dict[str, Any]:
        return _shown({key: _plain(getattr(self.client, key)) for key in CLIENT_KEYS}, reveal)

    def set_restarting(self, key: str, value: Any) -> bool:
        """Set what the client cannot take while it runs (the ``tls_ca`` its
        failed attempts asked for, an address) if it is still making its
        first connection, and start connecting again with it: it has no
        session yet, so nothing is lost, where "client disconnect first"
        made the fix three commands.  False (nothing done) in other phases."""
        client = self.client
        if client_phase(client.state) != "connecting":
            return False
        _apply_setting(Client(), key, value)  # a refused value undoes nothing
        with self.core.restarting(self):
            client.disconnect()
            _apply_setting(client, key, value)
            client.connect(wait=False)
        return True

    def read_status(self) -> dict[str, Any]:
        c = self.client
        state = c.state
        return {
            "kind": "client",
            "name": self.name,
            "state": int(state),
            "state_name": ClientState.get_name(state),
            "phase": client_phase(state),
            "connected": bool(state & S.STATE_CONNECTED),
            "desired": "connected" if self.desired else "disconnected",
            "settings": self.settings(),
            "last_close_reason": c.last_close_reason,
            "queued": c.queued,
        }


class ServerInstance(_Instance):
    kind = "server"

    def __init__(self, core: DaemonCore, name: str) -> None:
        super().__init__(core, name)
        self.server = Server()
        s = self.server
        s.subscribe("clientconnect", lambda cid: self.publish("clientconnect", client_id=cid))
        s.subscribe("clientdisconnect", lambda cid: self.publish("clientdisconnect", client_id=cid))
        s.subscribe("clientdetach", lambda cid, why: self.publish("clientdetach", client_id=cid, reason=why))
        s.subscribe("clientresume", lambda cid: self.publish("clientresume", client_id=cid))
        s.subscribe(
            "message", lambda cid, m: self.publish("message", client_id=cid, subject=m.subject, payload=dict(m.payload))
        )
        s.subscribe("request", lambda cid, m: self.refuse_request(m, client_id=cid))
        #: With port 0, the port it got when it last started: preferred at
        #: the next start (a restart of mcd included), so that clients set
        #: to it find the server again.  Saved.
        self.last_port: int | None = None

    def saved_extra(self) -> dict[str, Any]:
        return {} if self.last_port is None else {"last_port": self.last_port}

    def started(self) -> None:
        """Note the port a server set to port 0 got."""
        server = self.server
        port = server.port if server.requested_port == 0 else None
        if port != self.last_port:
            self.last_port = port
            self.settings_changed()

    def settings(self, reveal: bool = False) -> dict[str, Any]:
        values = {key: _plain(getattr(self.server, key)) for key in SERVER_KEYS}
        values["port"] = self.server.requested_port  # as set: 0 stays 0 while listening
        return _shown(values, reveal)

    def read_status(self) -> dict[str, Any]:
        s = self.server
        nodes = _client_nodes(s)
        return {
            "kind": "server",
            "name": self.name,
            "phase": "listening" if s.running else "stopped",
            "running": s.running,
            "desired": "started" if self.desired else "stopped",
            "settings": self.settings(),
            "port": s.port if s.running else None,
            "clients": list(nodes),
            "nodes": nodes,
            "detached": _detached(s, nodes),
            "cluster": s.cluster_status,
            "last_error": self.last_error,
        }


class DaemonCore:
    """Named Client and Server instances, their events, and their saved state.

    ``store`` (optional) persists instances, settings and desired state on
    every change; ``on_change`` is called after each event (mcd keeps its
    systemd STATUS line current with it).
    """

    def __init__(
        self,
        store: StateStore | None = None,
        ring_size: int = RING_SIZE,
        on_change: Callable[[], None] | None = None,
        subscriber_queue: int | None = None,
    ) -> None:
        self.boot_id = uuid.uuid4().hex
        self.started = time.time()
        self.store = store
        self.on_change = on_change
        self.subscriber_queue = subscriber_queue
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._ring = EventRing(ring_size, self._changed)
        self._subs: set[Subscription] = set()
        self.clients: dict[str, ClientInstance] = {}
        self.servers: dict[str, ServerInstance] = {}
        self.shutting_down = False
        #: Set once the saved instances are back (at once without a store).
        #: The control socket answers before that, so that a client started
        #: with mcd finds it; commands wait for it (``wait_restored``).
        self.restored = threading.Event()
        if store is None:
            self.restored.set()
        #: Saved entries not restored yet (a stop can come in the middle of a
        #: restore): saved as they were, so an early stop loses none of them;
        #: each its encoded member of the state file (``encode_member``).
        self._unrestored: dict[str, dict[str, bytes]] = {"clients": {}, "servers": {}}
        #: What the restore found wrong (a state file moved aside, a saved
        #: setting refused...): told in ``daemon_status`` for as long as mcd
        #: runs, since a log line alone goes unseen.
        self._restore_problems: list[str] = []
        self._writer = StateWriter(store, self.persistable) if store is not None else None

    # -- events ----------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The number of the last event published."""
        return self._ring.last_seq

    def publish(self, kind: str, name: str, event: str, data: dict[str, Any], changed: list[str] | None = None) -> None:
        """Append an event to the ring (and so to every stream); ``changed``:
        a ``settings`` event's keys that this change set."""
        with self._lock:
            record = {
                "type": "event",
                "boot_id": self.boot_id,
                "seq": self._ring.last_seq + 1,
                "time": time.time(),
                "kind": kind,
                "name": name,
                "event": event,
                "data": data,
            }
            if changed is not None:
                record["changed"] = changed
            self._ring.append(record)  # and wakes the subscribers and wait_for
        if self.on_change is not None:
            self.on_change()

    def subscribe(
        self,
        instances: Iterable[tuple[str, str]] | None = None,
        events: Iterable[str] | None = None,
        since: tuple[str, int] | None = None,
    ) -> tuple[Subscription, dict[str, Any]]:
        """Start a stream; the snapshot is taken under the same lock that
        orders events, so no event falls between the two."""
        with self._lock:
            resync = False
            after = self._ring.last_seq
            if since is not None:
                boot_id, seq = since
                if boot_id == self.boot_id and seq <= after and self._ring.kept(seq):
                    after = seq  # the events since are read from the ring, at the reader's pace
                else:
                    resync = True
            sub = Subscription(
                self._ring,
                after,
                frozenset(instances) if instances is not None else None,
                frozenset(events) if events is not None else None,
                limit=self.subscriber_queue,
            )
            self._subs.add(sub)
            answer = {
                "boot_id": self.boot_id,
                "seq": self._ring.last_seq,
                "resync": resync,
                "snapshot": self._snapshot_locked(),
            }
        return sub, answer

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)
        sub.close()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checking at every event and
        every ``RECHECK`` seconds: a client's failed connection attempt
        changes its count with no event, and when the ``statechange`` to
        connecting was published before the refusal, ``client.connect
        wait=attempt`` waited out its whole timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, RECHECK))
            return True

    @contextlib.contextmanager
    def restarting(self, instance: ClientInstance) -> Iterator[None]:
        """While ``instance`` starts its first connection again with a new
        setting: disconnected for a moment, which a ``client connect
        --wait`` meanwhile must not take for its outcome."""
        with self._changed:
            instance.restarting += 1
        try:
            yield
        finally:
            with self._changed:
                instance.restarting -= 1
                self._changed.notify_all()

    def _snapshot_locked(self) -> dict[str, Any]:
        return {"instances": self._statuses_locked()}

    def _statuses_locked(self) -> list[dict[str, Any]]:
        return [i.status() for i in self.clients.values()] + [i.status() for i in self.servers.values()]

    # -- instances -------------------------------------------------------------

    def _table(self, kind: str) -> dict[str, Any]:
        return self.clients if kind == "client" else self.servers

    def get(self, kind: str, name: str, create: bool = True, *, quiet: bool = False) -> Any:
        """The instance ``name``; created the first time a command names it
        (``quiet``: its creation logged at DEBUG, for a restore's many)."""
        with self._lock:
            table = self._table(kind)
            instance = table.get(name)
            if instance is None:
                if not create:
                    names = ", ".join(sorted(table)) or "none yet"
                    raise CoreError(ErrorCode.NOT_FOUND, f"no {kind} named {name!r} (the {kind}s: {names})")
                if self.shutting_down:
                    raise CoreError(ErrorCode.SHUTTING_DOWN, "mcd is shutting down")
                instance = ClientInstance(self, name) if kind == "client" else ServerInstance(self, name)
                table[name] = instance
                created = True
            else:
                created = False
        if created:
            log.log(logging.DEBUG if quiet else logging.INFO, "%s %r created", kind, name)
            self.publish(kind, name, "created", {})
            self._writer_changed()
        return instance

    def create(self, kind: str, name: str) -> dict[str, Any]:
        with self._lock:
            if name in self._table(kind):
                raise CoreError(ErrorCode.EXISTS, f"a {kind} named {name!r} exists already")
        status: dict[str, Any] = self.get(kind, name).status()
        return _with_warnings(status, self.save())

    def remove(self, kind: str, name: str) -> dict[str, Any]:
        instance = self.get(kind, name, create=False)
        self._stop_instance(instance)
        with self._lock:
            self._table(kind).pop(name, None)
        log.info("%s %r removed", kind, name)
        self.publish(kind, name, "removed", {})
        return _with_warnings({"kind": kind, "name": name, "removed": True}, self.save())

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._statuses_locked()

    def status(self, kind: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(kind, name, create=False).status()
        return result

    # -- settings --------------------------------------------------------------

    def set(self, kind: str, name: str, key: str, value: Any) -> dict[str, Any]:
        keys = CLIENT_KEYS if kind == "client" else SERVER_KEYS
        if key not in keys:
            raise CoreError(ErrorCode.INVALID_VALUE, f"unknown {kind} setting {key!r}; known: {', '.join(keys)}")
        warnings = _file_setting_problems(kind, key, value)
        with self._lock:
            new = name not in self._table(kind)
        if new:
            # A refused value must not leave a new instance behind: the
            # library's own checks run first on an object nobody keeps.
            _apply_setting(Client() if kind == "client" else Server(), key, value)
        instance = self.get(kind, name)
        target = instance.client if kind == "client" else instance.server
        restarted = False
        try:
            _apply_setting(target, key, value)
        except StateError:
            restarted = isinstance(instance, ClientInstance) and instance.set_restarting(key, value)
            if not restarted:
                stop = "client disconnect" if kind == "client" else "server stop"
                raise CoreError(
                    ErrorCode.STATE_ERROR,
                    f"cannot change {key} while {kind} {name!r} is {instance.status()['phase']}; "
                    f"{stop}{name_option(name)} first",
                    {"key": key},
                ) from None
        if key in (CLIENT_TUNING if kind == "client" else SERVER_TUNING):
            instance.tuned.add(key)
        instance.refused.pop(key, None)
        instance.settings_changed()
        settings = instance.publish_settings(key)
        result: dict[str, Any] = {"settings": settings}
        if restarted:
            result["restarted"] = True
        return _with_warnings(result, [*warnings, *self.save()])

    def get_settings(self, kind: str, name: str, key: str | None) -> dict[str, Any]:
        settings: dict[str, Any] = self.get(kind, name, create=False).settings()
        return settings if key is None else {key: settings[key]}

    # -- client operations -----------------------------------------------------

    def client_connect(self, name: str, wait: bool | str = False, timeout: float = 10.0) -> dict[str, Any]:
        """Connect ``name``; it keeps trying in the background until it does.

        ``wait``: False answers at once; ``"attempt"`` answers with the outcome
        of the first attempt (an error when it failed, though the client goes
        on trying); True answers once connected, or fails after ``timeout``.
        """
        with self._lock:
            # A client it would create here has no address: it is refused,
            # and a refused command leaves nothing behind.
            inst: ClientInstance | None = self.clients.get(name)
        if inst is None or inst.client.state & S.STATE_NEEDS_INIT:
            raise CoreError(
                ErrorCode.STATE_ERROR,
                f"client {name!r} has no address or port yet: client set address HOST, "
                f"client set port PORT{name_option(name)} first",
            )
        inst.check_nothing_refused()
        client = inst.client
        try:
            client.connect(wait=False)
        except StateError as exc:
            raise CoreError(ErrorCode.STATE_ERROR, str(exc)) from None
        except ValueError as exc:
            raise CoreError(ErrorCode.INVALID_VALUE, str(exc)) from None
        inst.desired = True
        warnings = self.save()
        if wait:

            def outcome() -> bool:
                if inst.restarting:
                    return False  # a setting starts it again: its moment of "disconnected" is no outcome
                phase = client_phase(client.state)
                if phase in ("connected", "failed", "disconnected"):
                    return True
                # With several servers, the first attempt is one at each.
                return wait == "attempt" and client.failed_attempts >= len(client.servers or ((),))

            done = self.wait_for(outcome, timeout)
            phase = client_phase(client.state)
            if phase != "connected":
                last = client.last_close_reason or "no attempt has finished yet"
                going_on = ""
                if phase in ("connecting", "reconnecting"):
                    going_on = f"; it keeps trying in the background (client disconnect{name_option(name)} stops it)"
                if phase == "connecting":  # no session yet: a fixed setting applies at once
                    going_on += "; a setting set now applies at once"
                if not done:
                    raise CoreError(
                        ErrorCode.TIMEOUT,
                        f"client {name!r} did not connect within {timeout:g} s; last attempt: {last}{going_on}",
                        inst.status(),
                    )
                raise CoreError(
                    ErrorCode.CONNECT_FAILED, f"client {name!r} could not connect: {last}{going_on}", inst.status()
                )
        return _with_warnings(inst.status(), warnings)

    def client_disconnect(self, name: str) -> dict[str, Any]:
        inst: ClientInstance = self.get("client", name, create=False)
        inst.desired = False
        warnings = self.save()
        inst.client.disconnect()
        return _with_warnings(inst.status(), warnings)

    def client_send(self, name: str, subject: str, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        inst: ClientInstance = self.get("client", name, create=False)
        message = _message(subject, payload)
        with _send_errors(), _unless_not_connected(name, inst.client):
            inst.client.send(message, timeout)
        return {"sent": True, "queued": inst.client.queued}

    def client_request(self, name: str, subject: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        inst: ClientInstance = self.get("client", name, create=False)
        message = _message(subject, payload)
        with _request_errors(), _unless_not_connected(name, inst.client):
            reply = inst.client.request(message, timeout)
        return {"reply": {"subject": reply.subject, "payload": dict(reply.payload)}}

    # -- server operations -----------------------------------------------------

    def server_start(self, name: str) -> dict[str, Any]:
        inst: ServerInstance = self.get("server", name)
        warnings = [*inst.server.warnings]
        if not inst.server.running:
            inst.check_nothing_refused()
            try:
                inst.server.start(prefer_port=inst.last_port)
            except BindError as exc:
                inst.last_error = str(exc)
                raise CoreError(ErrorCode.BIND_FAILED, str(exc), _bind_details(exc)) from None
            except (ValueError, ImportError) as exc:
                raise CoreError(ErrorCode.INVALID_VALUE, _refusal(exc)) from None
            inst.last_error = None
            inst.started()
            inst.publish("started", port=inst.server.port)
        inst.desired = True
        warnings += self.save()
        return _with_warnings(inst.status(), warnings)

    def server_stop(self, name: str) -> dict[str, Any]:
        inst: ServerInstance = self.get("server", name, create=False)
        inst.desired = False
        warnings = self.save()
        self._stop_server(inst)
        return _with_warnings(inst.status(), warnings)

    def _stop_server(self, inst: ServerInstance) -> None:
        if inst.server.running:
            inst.server.stop()
            inst.publish("stopped")

    def _stop_instance(self, instance: _Instance) -> None:
        if isinstance(instance, ClientInstance):
            instance.client.disconnect()
        elif isinstance(instance, ServerInstance):
            self._stop_server(instance)

    def server_send(
        self, name: str, to: str, subject: str, payload: dict[str, Any], timeout: float = 0.0
    ) -> dict[str, Any]:
        inst: ServerInstance = self.get("server", name, create=False)
        message = _message(subject, payload)
        with _send_errors():  # a cluster node without Redis: state_error, for the count too
            try:
                inst.server.send(to, message, timeout)
            except UnknownClient as exc:  # its words: in a cluster, the node that holds the client
                raise CoreError(ErrorCode.NOT_FOUND, f"server {name!r}: {exc}") from None
            return {"sent": True, "to": to, "clients": len(inst.server.clients) if to == "*" else 1}

    def server_request(
        self, name: str, to: str, subject: str, payload: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        inst: ServerInstance = self.get("server", name, create=False)
        message = _message(subject, payload)
        with _request_errors():
            try:
                reply = inst.server.request(to, message, timeout)
            except UnknownClient as exc:  # its words: in a cluster, the node that holds the client
                raise CoreError(ErrorCode.NOT_FOUND, f"server {name!r}: {exc}") from None
        return {"reply": {"subject": reply.subject, "payload": dict(reply.payload)}, "to": to}

    def server_clients(self, name: str) -> dict[str, Any]:
        """The server's clients, and which of them are ``detached`` (their
        connection broke; they may resume; only when some are); in a
        cluster, every node's, with the node that holds each (``nodes``; ''
        while none does)."""
        inst: ServerInstance = self.get("server", name, create=False)
        if not inst.server.running:
            return {"clients": []}
        try:
            nodes = inst.server.client_nodes
        except ClusterUnavailable as exc:
            raise CoreError(ErrorCode.STATE_ERROR, str(exc)) from None
        result: dict[str, Any] = {"clients": list(nodes)}
        if detached := _detached(inst.server, nodes):
            result["detached"] = detached
        if inst.server.cluster is not None:
            result["nodes"] = nodes
        return result

    def server_kick(self, name: str, client_id: str, reason: str) -> dict[str, Any]:
        inst: ServerInstance = self.get("server", name, create=False)
        if not inst.server.running:
            raise CoreError(ErrorCode.STATE_ERROR, f"server {name!r} is not running")
        try:
            inst.server.disconnect_client(client_id, reason)
        except UnknownClient as exc:  # its words: in a cluster, the node that holds the client
            raise CoreError(ErrorCode.NOT_FOUND, f"server {name!r}: {exc}") from None
        return {"kicked": client_id}

    # -- daemon ----------------------------------------------------------------

    def daemon_status(self) -> dict[str, Any]:
        with self._lock:
            clients = list(self.clients.values())
            servers = list(self.servers.values())
        status = {
            "version": library_version,
            "api_version": API_VERSION,
            "boot_id": self.boot_id,
            "uptime": time.time() - self.started,
            "clients": len(clients),
            "clients_connected": sum(1 for c in clients if c.client.connected),
            "servers": len(servers),
            "servers_listening": sum(1 for s in servers if s.server.running),
            "last_seq": self._ring.last_seq,
            "first_seq": self._ring.first_seq,
        }
        if not self.restored.is_set():
            # Commands wait for the restore (``wait_restored``): say why, and
            # how many saved instances are still to come (0 while the state
            # file is being read).
            status["restoring"] = self._left()
        save_error = self.save_error
        return _with_warnings(
            status,
            [
                *(f"at start: {problem}" for problem in self._restore_problems),
                *([f"the state is not being saved: {save_error}"] if save_error else []),
                *_cluster_warnings(servers),
            ],
        )

    def stats(self, kind: str | None, name: str | None) -> dict[str, Any]:
        """The daemon's figures and each instance's ``stats()`` (a named
        server's with its clients'); ``kind``/``name`` narrow them down."""
        with self._lock:
            instances = [
                i
                for i in (*self.clients.values(), *self.servers.values())
                if (kind is None or i.kind == kind) and (name is None or i.name == name)
            ]
            subscribers = len(self._subs)
            # Read before the figures, as a status's: they show every event
            # up to it, and a controller applies later ones again on top.
            seq = self._ring.last_seq
        if name is not None and not instances:
            raise CoreError(ErrorCode.NOT_FOUND, f"no instance named {name!r}")
        figures = []
        for inst in instances:
            entry: dict[str, Any] = {"kind": inst.kind, "name": inst.name}
            if isinstance(inst, ClientInstance):
                entry["stats"] = inst.client.stats()
            else:
                assert isinstance(inst, ServerInstance)
                entry["stats"] = inst.server.stats()
                if name is not None:
                    # The figures are this server's own: in a cluster, of the
                    # clients this node holds (other nodes have theirs).
                    clients = inst.server.held_clients if inst.server.running else []
                    entry["clients"] = {cid: _client_stats(inst.server, cid) for cid in clients}
            figures.append(entry)
        daemon = {
            "uptime": time.time() - self.started,
            "instances": len(instances) if kind is None and name is None else None,
            "event_subscribers": subscribers,
            "events_published": self._ring.last_seq,
            "subscribers_cut_off": self._ring.subscribers_cut_off,
            "events_dropped": self._ring.events_dropped,
        }
        return {"daemon": daemon, "instances": figures, "seq": seq}

    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        st = self.daemon_status()
        # `systemctl --user status mcd` shows this line: point at the warnings there too.
        warned = f"; {len(st['warnings'])} warning(s): mcctl daemon status" if st.get("warnings") else ""
        return (
            f"{st['clients_connected']} of {st['clients']} client(s) connected, "
            f"{st['servers_listening']} of {st['servers']} server(s) listening{warned}"
        )

    def shutdown(self) -> None:
        """Stop every instance (servers announce it; clients say bye), keep
        their desired state, save."""
        with self._lock:
            self.shutting_down = True
            clients: list[_Instance] = list(self.clients.values())
            servers: list[_Instance] = list(self.servers.values())
        # Clients first: one connected to a server of this mcd ends its
        # session with its own BYE, rather than being told (and logging, as
        # a warning) that its server shut down under it.
        for instances in (clients, servers):
            threads = [threading.Thread(target=self._stop_instance, args=(i,), daemon=True) for i in instances]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
        if self._writer is not None:
            self._writer.changed()
            self._writer.close()
        with self._lock:
            subs = list(self._subs)
            self._subs.clear()
        for sub in subs:
            sub.close()

    # -- persistence -----------------------------------------------------------

    def persistable(self) -> Sections:
        """Every instance's saved entry, encoded once per change."""
        with self._lock:
            sections = {key: dict(self._unrestored[key]) for key in ("clients", "servers")}
            sections["clients"].update((n, i.saved_entry()) for n, i in self.clients.items())
            sections["servers"].update((n, i.saved_entry()) for n, i in self.servers.items())
        return sections

    def _writer_changed(self) -> int:
        return self._writer.changed() if self._writer is not None else 0

    def save(self) -> tuple[str, ...]:
        """Have the state saved, wait (briefly) until it is, and return what
        the caller should be warned of: nothing, or why it is not on disk."""
        if self._writer is None:
            return ()
        if not self.restored.is_set():  # one save after the whole restore, not one wait per instance
            self._writer.changed()
            return ()
        problem = self._writer.wait(self._writer.changed(), SAVE_WAIT)
        return () if problem is None else (f"not saved: {problem} (it is kept in memory and saving is retried)",)

    @property
    def save_error(self) -> str | None:
        """Why the state cannot be saved now; None when it can (or is not saved)."""
        return self._writer.error if self._writer is not None else None

    def restore(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Recreate saved instances and bring up what was running; return
        early (keeping the rest saved) as soon as ``should_stop()``."""
        try:
            self._restore(should_stop)
        finally:
            self.restored.set()

    def wait_restored(self, timeout: float = RESTORE_WAIT) -> None:
        """Wait (up to ``timeout``) until the restore is over: a command run
        meanwhile would be undone by it (a ``disconnect`` of a client it
        then reconnects, a setting it then overwrites) or would miss an
        instance not restored yet."""
        self.restored.wait(timeout)

    def _restore(self, should_stop: Callable[[], bool]) -> None:
        if self.store is None:
            return
        data = self.store.load()
        self._restore_problems.extend(self.store.problems)
        # Encoded once: the writer saves them as they are at every save
        # until each is restored, under the lock the restore also needs.
        unrestored = {
            key: {name: encode_member(name, saved) for name, saved in (data.get(key) or {}).items()}
            for key in ("clients", "servers")
        }
        with self._lock:
            self._unrestored = unrestored
        restored = {"server": 0, "client": 0}
        for kind, key in (("server", "servers"), ("client", "clients")):
            for name, saved in (data.get(key) or {}).items():
                if should_stop():
                    log.info("stopping: %s saved instances not restored (they stay saved)", self._left())
                    return
                try:
                    self._restore_one(kind, name, saved)
                    restored[kind] += 1
                except CoreError as exc:
                    self._restore_problem(f"cannot restore {kind} {name!r}: {exc.message}")
                except Exception as exc:
                    # A bug, not a bad file: logged whole, but one saved
                    # instance must not keep mcd (and the rest) from starting.
                    log.exception("restoring %s %r failed", kind, name)
                    self._restore_problem(f"cannot restore {kind} {name!r}: {type(exc).__name__}: {exc}")
                finally:
                    with self._lock:
                        self._unrestored[key].pop(name, None)
        if any(restored.values()):
            log.info("restored %d server(s) and %d client(s)", restored["server"], restored["client"])

    def _restore_problem(self, problem: str, level: int = logging.ERROR) -> None:
        log.log(level, "%s", problem)
        self._restore_problems.append(problem)

    def _left(self) -> int:
        with self._lock:
            return sum(map(len, self._unrestored.values()))

    def _restore_one(self, kind: str, name: str, saved: dict[str, Any]) -> None:
        # One line for the whole restore at INFO, not lines per instance (a
        # thousand instances would be thousands of lines at every start).
        instance = self.get(kind, name, quiet=True)
        target = instance.client if kind == "client" else instance.server
        tuning = CLIENT_TUNING if kind == "client" else SERVER_TUNING
        for key, value in (saved.get("settings") or {}).items():
            if key in tuning:
                instance.tuned.add(key)  # saved because it was set: None (off) included
            elif value is None or (kind == "client" and key in ("address", "port") and not value):
                continue
            if value == HIDDEN:
                continue
            if key in FILE_KEYS and isinstance(value, str) and value and not os.path.isabs(value):
                # Saved before mcd took only absolute paths: kept, but said.
                self._restore_problem(
                    f"{kind} {name!r}: {key} {value!r} is a relative path, read from mcd's working directory"
                    f" ({os.getcwd()}): set it again as an absolute path",
                    logging.WARNING,
                )
            try:
                setattr(target, key, value)
            except (TypeError, ValueError, AttributeError, ImportError) as exc:
                instance.refused[key] = value
                shown = _shown_value(key, value)
                self._restore_problem(f"{kind} {name!r}: saved {key}={shown!r} refused: {_refusal(exc)}")
        last_port = saved.get("last_port")
        if isinstance(instance, ServerInstance) and type(last_port) is int and 0 < last_port < 65536:
            instance.last_port = last_port
        instance.settings_changed()
        if saved.get("desired"):
            again, verb = ("reconnected", "client connect") if kind == "client" else ("restarted", "server start")
            try:
                if instance.refused:
                    raise CoreError(
                        ErrorCode.STATE_ERROR,
                        f"set {', '.join(instance.refused)} again (or to none), then {verb}{name_option(name)}",
                    )
                if kind == "client":
                    self.client_connect(name, wait=False)  # keeps trying with backoff: its server may come later
                else:
                    self.server_start(name)
            except CoreError as exc:
                # Still wanted: mcd's next start tries again (saved as down,
                # a missing file put back would not bring it up).
                instance.desired = True
                self.save()
                self._restore_problem(f"{kind} {name!r} not {again}: {exc.message}")
        log.debug("%s %r restored", kind, name)


def _file_setting_problems(kind: str, key: str, value: Any) -> list[str]:
    """Refuse a relative path for a file setting (mcd's working directory is
    not its caller's); a warning when no file is there (yet)."""
    if key not in FILE_KEYS or not isinstance(value, str) or not value:
        return []
    if not os.path.isabs(value):
        raise CoreError(
            ErrorCode.INVALID_VALUE,
            f"{key} must be an absolute path, not {value!r}: mcd opens it in its own working directory,"
            " not yours (mcctl makes a relative path absolute itself)",
            {"key": key, "value": value},
        )
    if os.path.isfile(value):
        return []
    fails = "connect" if kind == "client" else "start"
    return [f"{key}: there is no file {value} (yet); {fails} fails until there is"]


def _apply_setting(target: Client | Server, key: str, value: Any) -> None:
    """``target.key = value``; a value the library refuses is ``invalid_value``."""
    try:
        setattr(target, key, value)
    except (TypeError, ValueError, ImportError) as exc:
        raise CoreError(ErrorCode.INVALID_VALUE, _refusal(exc), {"key": key, "value": value}) from None


def _cluster_warnings(servers: Iterable[ServerInstance]) -> list[str]:
    """A hosted cluster node cut off from Redis, or sharing its node_id
    with another node, for as long as it is: a standing warning (``mcctl
    daemon status``, the GUI's banner, systemd's status line), not only a
    line in mcd's log."""
    found = []
    for inst in servers:
        cluster = inst.server.cluster_status
        if cluster is None:
            continue
        if not cluster.get("ready"):
            found.append(
                f"server {inst.name!r}: cluster node {cluster['node']} {cluster_readiness(cluster)} ({cluster['url']})"
            )
        if twin := cluster.get("same_node_id"):
            found.append(
                f"server {inst.name!r}: another cluster node runs with node_id {cluster['node']!r} too"
                f" (listening on {twin.get('address') or 'an unknown address'}): give each node its own node_id"
            )
    return found


#: What needs a module the library may find missing, and the extra that has it.
_EXTRA_OF_MODULE = {"redis": ("cluster mode needs the redis package", "cluster")}


def _refusal(exc: Exception) -> str:
    """Why the library refused a value; a missing extra comes with the
    command that installs it into mcd's own Python (a pipx or venv
    install), not the caller's."""
    if isinstance(exc, ImportError) and exc.name in _EXTRA_OF_MODULE:
        what, extra = _EXTRA_OF_MODULE[exc.name]
        return f"{what}: {install_command(extra)} (then restart mcd)"
    return str(exc)


def _with_warnings(result: dict[str, Any], warnings: Iterable[str]) -> dict[str, Any]:
    """``result`` with a ``warnings`` list when there is anything to warn of."""
    if found := list(warnings):
        result["warnings"] = found
    return result


def _client_nodes(server: Server) -> dict[str, str]:
    """A running server's clients and their nodes, for its status; none
    while a cluster node cannot reach Redis (its status says so under
    ``cluster``)."""
    if not server.running:
        return {}
    try:
        return server.client_nodes
    except ClusterUnavailable:
        return {}


def _detached(server: Server, nodes: dict[str, str]) -> list[str]:
    """The clients whose connection broke and which have not come back
    yet: a lone server's own; in a cluster, those no node holds now."""
    if server.cluster is None:
        return server.detached_clients if server.running else []
    return [client_id for client_id, node in nodes.items() if not node]


def _plain(value: Any) -> Any:
    """A setting as JSON has it (auth_tokens is a read-only mapping;
    servers, pairs, read as they are set: "host:port,host:port")."""
    if isinstance(value, tuple):
        return ",".join(host_port(host, port) for host, port in value)
    return dict(value) if isinstance(value, Mapping) else value


def _shown(values: dict[str, Any], reveal: bool) -> dict[str, Any]:
    if not reveal:
        for key in _SHOWN_OTHERWISE:
            if values.get(key) is not None:
                values[key] = _shown_value(key, values[key])
    return values


def _shown_value(key: str, value: Any) -> Any:
    """A setting as statuses, events and messages show it: a token as
    "(set)", a Redis URL without its password; only the state file has them."""
    if key in SECRET_KEYS:
        return HIDDEN
    if key == "cluster" and isinstance(value, str):
        return redacted_url(value)
    return value


_SHOWN_OTHERWISE = (*SECRET_KEYS, "cluster")


def _client_stats(server: Server, client_id: str) -> dict[str, Any] | None:
    """One client's figures, or None when its session ended meanwhile."""
    try:
        return server.stats(client_id)
    except UnknownClient:
        return None


def _bind_details(exc: BindError) -> dict[str, Any]:
    """A ``bind_failed`` error's details: the setting at fault where a
    controller can tell (``port`` taken, ``interface`` not of this machine;
    else None), so that it says so on that setting; and the errno."""
    key = {errno.EADDRINUSE: "port", errno.EADDRNOTAVAIL: "interface"}.get(exc.errno or 0)
    return {"key": key, "errno": exc.errno}


@contextlib.contextmanager
def _request_errors() -> Iterator[None]:
    """A request's outcomes as the control API's error codes (a request is
    sent first: a send's refusals too)."""
    try:
        with _send_errors():
            yield
    except RequestTimeout as exc:
        raise CoreError(ErrorCode.TIMEOUT, str(exc)) from None
    except SessionLost as exc:
        raise CoreError(ErrorCode.SESSION_LOST, str(exc)) from None
    except NoResponder as exc:
        raise CoreError(ErrorCode.NO_RESPONDER, exc.message) from None
    except RemoteError as exc:
        details = {"type": exc.type_name, "message": exc.message}
        raise CoreError(ErrorCode.REMOTE_ERROR, f"the responder raised {exc}", details) from None


@contextlib.contextmanager
def _send_errors() -> Iterator[None]:
    """A send's refusals as the control API's error codes."""
    try:
        yield
    except StateError as exc:
        raise CoreError(ErrorCode.STATE_ERROR, str(exc)) from None
    except QueueFullError as exc:
        raise CoreError(ErrorCode.QUEUE_FULL, str(exc)) from None
    except MessageTooLarge as exc:
        raise CoreError(ErrorCode.INVALID_VALUE, str(exc)) from None


@contextlib.contextmanager
def _unless_not_connected(name: str, client: Client) -> Iterator[None]:
    """A client's send refused for want of a connection, said in mcctl's
    words (the library's words name its Python calls)."""
    try:
        yield
    except StateError:
        state = client.state
        if state & (S.STATE_CONNECTED | S.STATE_RECONNECTING):
            raise  # refused for another reason: the library's words say it
        option = name_option(name)
        if state & S.STATE_RUNNING:
            last = client.last_close_reason
            tried = "" if last is None else f" (last attempt: {last})"
            raise CoreError(
                ErrorCode.STATE_ERROR,
                f"client {name!r} has not connected yet{tried}; it can send once it has"
                f" (client connect --wait{option} waits for that)",
            ) from None
        message = f"client {name!r} is not connected: client connect{option} first"
        raise CoreError(ErrorCode.STATE_ERROR, message) from None


def _message(subject: str, payload: dict[str, Any]) -> Message:
    try:
        return Message(subject, payload)
    except (TypeError, ValueError) as exc:
        raise CoreError(ErrorCode.INVALID_VALUE, f"invalid message: {exc}") from None
