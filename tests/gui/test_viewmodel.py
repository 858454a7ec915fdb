"""The GUI's view-model, without Qt."""

from __future__ import annotations

from typing import Any

import pytest

from mc_gui import viewmodel as vm

SHORT_RULE = "A-Z a-z 0-9 _ . - only, starting with a letter or digit (64 at most)"


def event(seq: int, kind: str, name: str, name_of_event: str, **data: Any) -> dict[str, Any]:
    return {"type": "event", "boot_id": "b", "seq": seq, "time": 1e9, "kind": kind, "name": name,
            "event": name_of_event, "data": data}  # fmt: skip


def statechange(seq: int, name: str, phase: str, reason: str | None = None) -> dict[str, Any]:
    return event(seq, "client", name, "statechange", old=0, new=38, old_name="", new_name=phase.upper(),
                 phase=phase, reason=reason)  # fmt: skip


def test_overall_level_follows_the_worst_instance() -> None:
    model = vm.ViewModel()
    assert model.overall().level == "down"
    model.set_daemon(True)
    assert model.overall().level == "idle"
    model.apply_snapshot({"instances": [{"kind": "client", "name": "a", "phase": "connected"},
                                        {"kind": "server", "name": "s", "phase": "stopped"}]})  # fmt: skip
    assert model.overall().level == "connected"
    assert "1 of 1 client(s) connected, 0 of 1 server(s) listening" in model.overall().text
    model.apply_event(statechange(1, "b", "reconnecting"))
    assert model.overall().level == "reconnecting"
    model.apply_event(statechange(2, "c", "failed", "refused"))
    assert model.overall().level == "failed" and "c failed" in model.overall().text


def test_notifications_for_lost_reconnected_and_shutdown() -> None:
    model = vm.ViewModel()
    model.set_daemon(True)
    assert model.apply_event(statechange(1, "a", "connected")) is None
    lost = model.apply_event(statechange(2, "a", "reconnecting", "connection reset by peer"))
    assert lost is not None and lost.title == "a: connection lost" and "reset" in lost.text and lost.critical
    back = model.apply_event(event(3, "client", "a", "reconnect", client_id="abc"))
    assert back is not None and back.title == "a: reconnected"
    down = model.apply_event(event(4, "client", "a", "servershutdown"))
    assert down is not None and down.title == "a: server shut down"
    assert len(model.instance("client", "a").log) == 4


def test_notifications_many_instances_raise_at_once_are_raised_by_three_and_one_that_counts() -> None:
    """mcd's thousand hosted clients losing their server must not raise a
    thousand popups: three, then one that counts and names the rest."""
    now = [0.0]
    notices = vm.Notices(every=5.0, voices=3, clock=lambda: now[0])

    def lost(name: str) -> vm.Notification:
        return vm.Notification(f"{name}: connection lost", "Reconnecting", True, "connection lost", name)

    raised = [notices.offer(lost(f"c{n}")) for n in range(10)]
    assert [n.title for n, _ in raised if n is not None] == [f"c{n}: connection lost" for n in range(3)]
    # The first held asks for a flush when the window ends; the others need none.
    assert [later for _, later in raised] == [None] * 3 + [5.0] + [None] * 6
    alone = vm.Notification("mcd warns", "an open server", True)
    assert notices.offer(alone) == (alone, None)  # no kind: raised one by one
    back = vm.Notification("c0: reconnected", "again", False, "reconnected", "c0")
    assert notices.offer(back) == (back, None)  # another kind has voices of its own
    now[0] = 5.0
    assert notices.offer(lost("late")) == (None, None)  # past the window, before its flush: counted in it
    (summary,) = notices.flush()
    assert summary == vm.Notification("8 more: connection lost", "c3, c4, c5, c6, c7 and 3 more", True)
    assert notices.flush() == []
    assert notices.offer(lost("c0")) == (lost("c0"), None)  # a new window


def test_mcds_warnings_are_kept_while_it_runs_and_dropped_when_it_stops() -> None:
    model = vm.ViewModel()
    model.set_daemon(True)
    model.set_daemon_status({"boot_id": "b", "warnings": ["at start: state file x is corrupt"]})
    assert model.daemon_warnings == ("at start: state file x is corrupt",)
    model.set_daemon_status({"boot_id": "b"})  # nothing to tell any more
    assert model.daemon_warnings == ()
    model.set_daemon_status({"boot_id": "b", "warnings": ["the state is not being saved: full"]})
    model.set_daemon(False, "mcd stopped")
    assert model.daemon_warnings == ()  # that run's: the next one says its own


def test_server_clients_follow_connect_and_disconnect_events() -> None:
    model = vm.ViewModel()
    model.apply_event(event(1, "server", "s", "started", port=30000))
    model.apply_event(event(2, "server", "s", "clientconnect", client_id="x"))
    model.apply_event(event(3, "server", "s", "clientconnect", client_id="y"))
    model.apply_event(event(4, "server", "s", "clientdisconnect", client_id="x"))
    st = model.instance("server", "s").status
    assert st["clients"] == ["y"] and st["port"] == 30000 and st["phase"] == "listening"
    model.apply_event(event(5, "server", "s", "settings", interface="*", port=1))
    assert st["settings"] == {"interface": "*", "port": 1}
    model.apply_event(event(6, "server", "s", "stopped"))
    assert st["clients"] == [] and st["phase"] == "stopped"
    model.apply_event(event(7, "server", "s", "removed"))
    assert ("server", "s") not in model.instances


def test_a_client_is_shown_detached_from_its_detach_until_it_resumes_or_ends() -> None:
    model = vm.ViewModel()
    model.apply_event(event(1, "server", "s", "started", port=30000))
    for n, client_id in enumerate(("x", "y"), 2):
        model.apply_event(event(n, "server", "s", "clientconnect", client_id=client_id))
    model.apply_event(event(4, "server", "s", "clientdetach", client_id="x", reason="connection reset by peer"))
    model.apply_event(event(5, "server", "s", "clientdetach", client_id="y", reason="heartbeat timeout"))
    st = model.instance("server", "s").status
    assert st["detached"] == ["x", "y"] and st["clients"] == ["x", "y"]
    model.apply_event(event(6, "server", "s", "clientresume", client_id="x"))
    assert st["detached"] == ["y"]
    model.apply_event(event(7, "server", "s", "clientdisconnect", client_id="y"))  # its session expired
    assert st["detached"] == [] and st["clients"] == ["x"]


def test_figures_read_before_a_resume_do_not_show_the_client_detached_again() -> None:
    """The figures come every second on the request connection, the events
    on theirs: figures read while x was detached, answered after its resume
    was applied, showed x detached again until the next poll."""
    model = vm.ViewModel()
    model.set_daemon(True)
    model.apply_snapshot({"instances": [server_status(1, [])]})
    model.apply_event(event(2, "server", "s", "clientconnect", client_id="x"))
    model.apply_event(event(3, "server", "s", "clientdetach", client_id="x", reason="connection reset by peer"))
    model.apply_event(event(4, "server", "s", "clientresume", client_id="x"))
    st = model.instance("server", "s").status
    read_detached = {"x": {"connected": False}}
    assert not model.apply_stats("server", "s", {}, now=1.0, clients=read_detached, seq=3)
    assert st["detached"] == []
    # Figures read after every event applied are the newer word: a detach
    # whose event is still on its way shows at once.
    assert model.apply_stats("server", "s", {}, now=2.0, clients=read_detached, seq=4)
    assert st["detached"] == ["x"]
    # An mcd that numbers no figures: taken as they are.
    assert model.apply_stats("server", "s", {}, now=3.0, clients={"x": {"connected": True}})
    assert st["detached"] == []


def server_status(seq: int, clients: list[str], **more: Any) -> dict[str, Any]:
    return {"kind": "server", "name": "s", "phase": "listening", "running": True, "clients": clients,
            "detached": [], "seq": seq, **more}  # fmt: skip


def test_a_status_read_before_applied_events_gets_them_again_on_top() -> None:
    """A status answer crosses the events on their way (two connections):
    one read at event 2 and applied after events 3 to 5 keeps what they did,
    and brings what only a status says (here ``desired``)."""
    model = vm.ViewModel()
    model.set_daemon(True)
    model.apply_snapshot({"instances": [server_status(1, [])]})
    for seq, client_id in ((2, "a"), (3, "b"), (4, "c")):
        model.apply_event(event(seq, "server", "s", "clientconnect", client_id=client_id))
    model.apply_event(event(5, "server", "s", "clientdisconnect", client_id="a"))
    model.apply_event(event(6, "server", "s", "message", client_id="b", subject="hi", payload={}))
    st = model.instance("server", "s").status
    model.apply_status("server", "s", server_status(2, ["a"], desired="started"))
    assert st["clients"] == ["b", "c"] and st["desired"] == "started"
    # One read after all of them is the newer word: taken as it is.
    model.apply_status("server", "s", server_status(6, ["c"], desired="stopped"))
    assert st["clients"] == ["c"] and st["desired"] == "stopped"


def test_a_status_older_than_what_can_be_replayed_is_not_taken() -> None:
    model = vm.ViewModel()
    model.set_daemon(True)
    model.apply_snapshot({"instances": [server_status(10, ["a"])]})
    st = model.instance("server", "s").status
    model.apply_status("server", "s", server_status(9, [], desired="stopped"))  # read before the snapshot
    assert st["clients"] == ["a"] and "desired" not in st
    for seq in range(11, 11 + vm.RECENT_EVENTS + 1):
        model.apply_event(event(seq, "server", "s", "clientconnect", client_id=f"c{seq}"))
    model.apply_status("server", "s", server_status(11, ["a", "c11"]))  # event 11 itself was let go
    assert len(st["clients"]) == 1 + vm.RECENT_EVENTS + 1
    model.apply_status("server", "s", server_status(12, ["a", "c11", "c12"]))  # 13 on were kept: replayed
    assert len(st["clients"]) == 1 + vm.RECENT_EVENTS + 1


def test_a_status_from_a_restarted_mcd_is_not_mixed_with_the_old_ones_events() -> None:
    """A restarted mcd numbers its events from 1: the events of the run
    before must not be applied on top of its statuses."""
    model = vm.ViewModel()
    model.set_daemon(True)
    model.apply_snapshot({"instances": [server_status(1, [])]})
    model.apply_event(event(50, "server", "s", "clientconnect", client_id="old"))
    model.set_daemon(False, "mcd closed the connection")
    model.set_daemon(True)
    model.apply_status("server", "s", server_status(3, []))
    assert model.instance("server", "s").status["clients"] == []
    # An mcd that numbers no statuses: its status is taken as it is.
    model.apply_status("server", "s", {"kind": "server", "name": "s", "clients": ["x"]})
    assert model.instance("server", "s").status["clients"] == ["x"]


def test_history_only_feeds_the_log() -> None:
    model = vm.ViewModel()
    model.apply_snapshot({"instances": [{"kind": "client", "name": "a", "phase": "connected"}]})
    assert model.log_history(statechange(1, "a", "connecting")) is not None
    assert model.instance("client", "a").phase == "connected"
    assert model.log_history(statechange(2, "gone", "connecting")) is None


@pytest.mark.parametrize(
    ("check", "text", "value", "error"),
    [
        (vm.check_port, "30000", 30000, None),
        (vm.check_port, "", None, "a port is needed"),
        (vm.check_port, "abc", None, "the port must be a number"),
        (vm.check_port, "0", None, "the port must be from 1 to 65535"),
        (vm.check_port, "70000", None, "the port must be from 1 to 65535"),
        (vm.check_optional_port, "", None, None),
        (vm.check_address, " 127.0.0.1 ", "127.0.0.1", None),
        (vm.check_address, "a b", None, "an address has no spaces"),
        (vm.check_client_id, "", None, None),
        (vm.check_client_id, "a\tb", None, "a client id has no control characters"),
        (vm.check_payload, "", {}, None),
        (vm.check_payload, '{"a": 1}', {"a": 1}, None),
        (vm.check_payload, "[1]", None, "the payload must be a JSON object: {...}"),
        (vm.check_payload, '{"a" 1}', None, "not JSON: Expecting ':' delimiter at line 1, column 6"),
        (vm.check_payload, '{"a": NaN}', None, "NaN is not JSON (JSON has no NaN or infinity)"),
        (vm.check_payload, '{"a": -1e400}', None, "-1e400 is beyond the range of a JSON number here (a double)"),
        (vm.check_instance_name, "lab-2", "lab-2", None),
        (vm.check_instance_name, "bad name", None, SHORT_RULE),
        (vm.check_instance_name, "café", None, SHORT_RULE),  # the daemon's rule: ASCII only
        (vm.check_instance_name, "a" * 65, None, SHORT_RULE),
        (vm.check_instance_name, "-lab", None, SHORT_RULE),
    ],
)
def test_validation(check: Any, text: str, value: Any, error: str | None) -> None:
    assert check(text) == (value, error)


@pytest.mark.parametrize(
    ("text", "value", "error"),
    [
        ("7.5", 7.5, None),
        ("0", None, "session_expiry must be more than 0"),
        ("soon", None, "a number"),
        # float() reads these; JSON cannot carry them to mcd, which refused the line whole
        ("nan", None, "a finite number"),
        ("inf", None, "a finite number"),
        ("1e400", None, "a finite number"),
    ],
)
def test_a_timer_field_takes_finite_positive_numbers(text: str, value: float | None, error: str | None) -> None:
    assert vm.check_tuning("session_expiry", "float", text, optional=True) == (value, error)


def test_file_fields_expand_home_and_other_text_fields_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    assert vm.setting_text("tls_cert", " ~/certs/a.pem ") == "/home/someone/certs/a.pem"
    assert vm.setting_text("tls_ca", "/etc/ca.pem") == "/etc/ca.pem"
    assert vm.setting_text("tls_hostname", "~host") == "~host"
    assert vm.setting_text("tls_key", "  ") is None


def test_live_figures_become_rates_and_one_line() -> None:
    model = vm.ViewModel()
    figures = {"messages_sent": 10, "messages_received": 0, "queued": 2, "max_queued": 100, "rtt_smoothed_ms": 1.25}
    figures |= {"reconnects": 1, "resent": 3}
    model.apply_stats("client", "c", figures, now=100.0)
    model.apply_stats("client", "c", {**figures, "messages_sent": 30, "messages_received": 5}, now=102.0)
    inst = model.instance("client", "c")
    assert inst.rates() == [(10.0, 2.5)]
    line = vm.describe_figures("client", inst.figures, inst.rates())
    assert line == "sent 30 (10/s) · received 5 (2/s) · queued 2 of 100 · round trip 1.2 ms · reconnects 1, resent 3"
    assert vm.describe_figures("server", {}, []) == "no figures yet"
    waiting = vm.describe_figures("client", {**inst.figures, "queued": 100, "senders_waiting": 1}, [])
    assert waiting.endswith(
        " · queued 100 of 100 · round trip 1.2 ms · reconnects 1, resent 3 · 1 send(s) waiting for room"
    )


def test_a_cluster_nodes_figures_say_whether_it_takes_new_clients() -> None:
    figures = {"messages_sent": 0, "messages_received": 0, "connected": 2, "detached": 0, "refusals": {}}
    figures |= {"slow_clients_cut": 0, "cluster": None}
    assert "cluster" not in vm.describe_figures("server", figures, [])
    figures["cluster"] = {"node": "n1", "ready": True, "takeovers": 0}
    assert vm.describe_figures("server", figures, []).endswith(" · cluster node n1: ready")
    figures["cluster"] = {"node": "n1", "ready": False, "takeovers": 0}
    line = vm.describe_figures("server", figures, [])
    assert line.endswith(" · cluster node n1: NOT READY: cannot reach Redis, refusing new clients")


def test_the_figures_bring_why_the_last_attempt_failed() -> None:
    # A client retrying in the background changes no state between attempts:
    # only its figures say why the latest one failed.
    model = vm.ViewModel()
    model.apply_event(
        {
            "type": "event",
            "seq": 1,
            "time": 1000.0,
            "kind": "client",
            "name": "c",
            "event": "statechange",
            "data": {"new": 4 | 2 | 16, "new_name": "STATE_OK|STATE_RUNNING|STATE_CONNECTING", "phase": "connecting"},
        }
    )
    assert model.instance("client", "c").status.get("last_close_reason") is None
    model.apply_stats("client", "c", {"last_close_reason": "certificate verify failed"}, now=1.0)
    assert model.instance("client", "c").status["last_close_reason"] == "certificate verify failed"
    model.apply_stats("client", "c", {"messages_sent": 0}, now=2.0)  # figures without it leave it alone
    assert model.instance("client", "c").status["last_close_reason"] == "certificate verify failed"


def test_a_tab_first_shows_default_or_else_an_instance_the_daemon_has() -> None:
    model = vm.ViewModel()
    model.set_daemon(True)
    assert model.first_name("server") == "default"  # nothing yet: a new "default"
    model.apply_snapshot({"instances": [{"kind": "server", "name": "web", "phase": "listening"},
                                        {"kind": "server", "name": "b", "phase": "stopped"}]})  # fmt: skip
    model.instance("server", "default")  # looked at (the tray does), not in the daemon
    assert model.first_name("server") == "b"
    assert model.first_name("client") == "default"
    model.apply_event(statechange(1, "default", "connected"))
    model.apply_snapshot({"instances": [{"kind": "server", "name": "default", "phase": "stopped"},
                                        {"kind": "server", "name": "a", "phase": "stopped"}]})  # fmt: skip
    assert model.first_name("server") == "default"
