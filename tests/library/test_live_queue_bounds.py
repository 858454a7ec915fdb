"""``max_queued`` and ``max_queued_bytes`` are live settings: a change
applies to the queues there are at once (a Client's, each session of a
Server's), and a send() waiting for room goes on when the new bound makes
some; the GUI's Apply and ``mcctl ... set`` on a running instance rely on it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from support import wait_until

from missioncommander import Client, Message, QueueFullError, Server

MakeClient = Callable[..., Client]
WAIT = 10.0


def test_a_clients_raised_bound_lets_a_waiting_send_go_on(make_client: MakeClient) -> None:
    release = threading.Event()
    with Server(interface="127.0.0.1", port=0) as server:
        # The server's callback holds the first message: nothing is acknowledged.
        server.subscribe("message", lambda cid, m: release.wait(WAIT))
        client = make_client(address="127.0.0.1", port=server.port, max_queued=3, send_timeout=WAIT)
        client.connect()
        try:
            for n in range(3):
                client.send(Message("m", {"n": n}))
            outcome: list[object] = []
            waiting = threading.Thread(target=lambda: outcome.append(client.send(Message("m", {"n": 3}))))
            waiting.start()
            wait_until(lambda: client.stats()["senders_waiting"] == 1, what="the fourth send waiting for room")
            client.max_queued = 10
            waiting.join(WAIT)
            assert outcome == [None] and client.queued == 4  # sent, and still nothing acknowledged
            assert client.stats()["senders_waiting"] == 0
            assert client.stats()["max_queued"] == 10
            bound = client.stats()["queued_bytes"] + 50
            client.max_queued_bytes = bound
            assert client.stats()["max_queued_bytes"] == bound
            client.send_timeout = 0.01
            with pytest.raises(QueueFullError):
                client.send(Message("m", {"pad": "x" * 40}))  # fits a queue of its own, not beside the four
        finally:
            release.set()  # a failure does not leave the callback holding for WAIT


def test_a_servers_changed_bound_applies_to_the_sessions_it_has(make_client: MakeClient) -> None:
    release = threading.Event()
    with Server(interface="127.0.0.1", port=0, max_queued=3) as server:
        client = make_client(address="127.0.0.1", port=server.port, client_id="held")
        client.subscribe("message", lambda m: release.wait(WAIT))  # holds the first: nothing acknowledged
        client.connect()
        try:
            for n in range(3):
                server.send("held", Message("m", {"n": n}))
            with pytest.raises(QueueFullError):
                server.send("held", Message("m", {"n": 3}))
            server.max_queued = 5
            server.send("held", Message("m", {"n": 3}))
            assert server.stats("held")["max_queued"] == 5 and server.queued("held") == 4
            server.max_queued_bytes = server.stats("held")["queued_bytes"] + 50
            with pytest.raises(QueueFullError):
                server.send("held", Message("m", {"pad": "x" * 40}))
        finally:
            release.set()  # a failure does not leave the callback holding for WAIT
        wait_until(lambda: server.queued("held") == 0, what="all acknowledged")
