"""Live statistics: the figures say what happened (docs/STATS.md)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest
from support import FaultProxy, Recorder, wait_until

from missioncommander import Client, ConnectionRefusedByServer, Message, Server, UnknownClient

MakeClient = Callable[..., Client]
WAIT = 10.0


def test_messages_and_bytes_both_ways_are_counted(server: Server, make_client: MakeClient) -> None:
    client = make_client(server, client_id="counted")
    received = Recorder().attach(client, "message")
    client.connect()
    sent = [Message("up", {"n": n}) for n in range(25)]
    for message in sent:
        client.send(message)
    for n in range(7):
        server.send("counted", Message("down", {"n": n}))
    received.wait_count("message", 7)
    wait_until(lambda: server.stats()["messages_received"] == 25, what="all 25 at the server")
    up_bytes = sum(len(m.encode()) for m in sent)
    mine, theirs, session = client.stats(), server.stats(), server.stats("counted")
    assert (mine["messages_sent"], mine["bytes_sent"]) == (25, up_bytes)
    assert (theirs["messages_received"], theirs["bytes_received"]) == (25, up_bytes)
    assert (mine["messages_received"], theirs["messages_sent"], session["messages_sent"]) == (7, 7, 7)
    assert (theirs["clients"], theirs["connected"], theirs["detached"]) == (1, 1, 0)
    assert (mine["connects"], mine["reconnects"], mine["resumes"], mine["sessions_lost"]) == (1, 0, 0, 0)
    with pytest.raises(UnknownClient):
        server.stats("nobody")
    # A session that ended still counts in the server's totals.
    client.disconnect()
    wait_until(lambda: server.stats()["clients"] == 0, what="the session ended")
    assert (server.stats()["messages_received"], server.stats()["bytes_received"]) == (25, up_bytes)


def test_a_full_queue_shows_and_a_cut_counts_the_reconnect_the_resume_and_the_resends(make_client: MakeClient) -> None:
    release = threading.Event()
    with Server(interface="127.0.0.1", port=0) as server:
        # The server's callback holds the first message: nothing is acknowledged.
        server.subscribe("message", lambda cid, m: release.wait(WAIT))
        proxy = FaultProxy(server.port)
        try:
            client = make_client(client_id="cut", address="127.0.0.1", port=proxy.port, max_queued=50)
            reconnected = Recorder().attach(client, "reconnect")
            client.connect()
            for n in range(30):
                client.send(Message("m", {"n": n}))
            wait_until(lambda: client.stats()["unwritten"] == 0, what="all 30 written")
            figures = client.stats()
            assert (figures["queued"], figures["max_queued"]) == (30, 50)  # unacknowledged, against the limit
            proxy.cut("rst")
            reconnected.wait_count("reconnect", 1)
            release.set()
            figures = client.stats()
            assert (figures["reconnects"], figures["resumes"], figures["sessions_lost"]) == (1, 1, 0)
            # What the server had not received when the link broke was written again.
            assert 0 < figures["resent"] <= 30
            assert figures["last_close_reason"] and figures["last_close_time"] is not None
            wait_until(lambda: client.stats()["queued"] == 0, what="all acknowledged")
            assert server.stats("cut")["resumes"] == 1
        finally:
            release.set()
            proxy.close()


def test_refusals_are_counted_by_reason(make_client: MakeClient) -> None:
    # 2/s over 2 s: four pending handshakes, so the flood of ten is refused.
    with Server(
        interface="127.0.0.1", port=0, auth_token="s3cret", max_connection_rate=2.0, handshake_timeout=2.0
    ) as server:
        make_client(server, client_id="taken", auth_token="s3cret").connect()
        with pytest.raises(ConnectionRefusedByServer):
            make_client(server, client_id="taken", auth_token="s3cret", reconnect_attempts=1).connect()
        with pytest.raises(ConnectionRefusedByServer):
            make_client(server, client_id="wrong", auth_token="nope").connect()
        with socket.create_connection(("127.0.0.1", server.port)) as garbage:
            garbage.sendall(b"\xff" * 16)
            garbage.recv(4096)  # the CHALLENGE (the ERROR may come with it)
        flood = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
        try:
            wait_until(lambda: server.stats()["refusals"].get("rate_limited", 0) > 0, what="a rate refusal")
        finally:
            for sock in flood:
                sock.close()
        refusals = server.stats()["refusals"]
        assert refusals["id_in_use"] == 1 and refusals["auth_failed"] == 1
        assert refusals["frame_too_large"] == 1


def test_a_client_too_slow_for_a_broadcast_is_counted_as_cut_off(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Counted, and logged saying what a burst needs (the clients a burst
    cuts may well be fast ones)."""
    release = threading.Event()
    with Server(interface="127.0.0.1", port=0, max_queued=5) as server:
        slow = make_client(server, client_id="slow", inline_callbacks=False)
        slow.subscribe("message", lambda m: release.wait(WAIT))
        gone = Recorder().attach(server, "clientdisconnect")
        slow.connect()
        try:
            for n in range(50):
                server.send("*", Message("b", {"n": n}))
            gone.wait_count("clientdisconnect", 1)
            assert server.stats()["slow_clients_cut"] == 1
            said = [r.getMessage() for r in caplog.records if "too slow" in r.getMessage()]
            assert len(said) == 1 and "'slow'" in said[0] and "raise max_queued, or give send() a timeout" in said[0]
        finally:
            release.set()


def test_the_heartbeat_times_its_round_trip(make_client: MakeClient) -> None:
    with Server(interface="127.0.0.1", port=0, heartbeat_interval=0.05) as server:
        client = make_client(server, client_id="rtt", heartbeat_interval=0.05)
        client.connect()
        wait_until(lambda: client.stats()["rtt_last_ms"] is not None, what="a PONG")
        wait_until(lambda: server.stats("rtt")["rtt_last_ms"] is not None, what="a PONG at the server")
        figures = client.stats()
        assert 0 < figures["rtt_last_ms"] < 5_000 and 0 < figures["rtt_smoothed_ms"] < 5_000
