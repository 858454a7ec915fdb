"""Several threads sending at once, through connection cuts: each thread's
messages arrive in its order, each exactly once (one write path serves them
all: a lone send from the caller's thread, bursts through the pump, batches
while a pump is pending)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

from support import FaultProxy, Recorder, wait_until

from missioncommander import Client, Message, Server

MakeClient = Callable[..., Client]
PER_THREAD = 1500
CUTS = 5


def _by_sender(got: list[tuple[str, int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for sender, n in got:
        out[sender].append(n)
    return dict(out)


def _cut_while_sending(
    proxy: FaultProxy, rec: Recorder, progress: Callable[[], int], senders: list[threading.Thread]
) -> None:
    deadline = time.monotonic() + 60
    for k in range(CUTS):
        target = progress() + 200
        wait_until(
            lambda target=target: progress() >= target or not any(t.is_alive() for t in senders),  # type: ignore[misc]
            timeout=max(1.0, deadline - time.monotonic()),
            what=f"progress before cut {k + 1}",
        )
        proxy.cut("rst")
        rec.wait_count("reconnect", k + 1, timeout=max(1.0, deadline - time.monotonic()))
    for t in senders:
        t.join(max(1.0, deadline - time.monotonic()))
        assert not t.is_alive()


def test_threads_sending_on_one_client_keep_their_order_through_cuts(make_client: MakeClient) -> None:
    with Server(interface="127.0.0.1", port=0) as server:
        proxy = FaultProxy(server.port, split=True, seed=7)
        try:
            got: list[tuple[str, int]] = []
            lock = threading.Lock()

            def received(_cid: str, m: Message) -> None:
                with lock:
                    got.append((m.payload["t"], m.payload["n"]))

            server.subscribe("message", received)
            client = make_client(client_id="many", address="127.0.0.1", port=proxy.port)
            rec = Recorder().attach(client, "reconnect")
            client.connect()

            def sender(name: str) -> None:
                for n in range(PER_THREAD):
                    client.send(Message("m", {"t": name, "n": n}))
                    if n % 100 == 0:
                        time.sleep(0.001)  # pace: lone sends and bursts both, not one long burst

            names = [f"t{i}" for i in range(4)]
            senders = [threading.Thread(target=sender, args=(name,)) for name in names]
            for t in senders:
                t.start()
            _cut_while_sending(proxy, rec, lambda: len(got), senders)
            wait_until(lambda: len(got) >= len(names) * PER_THREAD, timeout=60, what="every message")
            server.wait_callbacks(10)
            assert _by_sender(got) == {name: list(range(PER_THREAD)) for name in names}
        finally:
            proxy.close()


def test_threads_sending_to_one_client_and_to_everyone_keep_their_order_through_cuts(make_client: MakeClient) -> None:
    with Server(interface="127.0.0.1", port=0) as server:
        proxy = FaultProxy(server.port, split=True, seed=11)
        try:
            got: dict[str, list[tuple[str, int]]] = {"c": [], "d": []}
            lock = threading.Lock()
            clients = {}
            rec = Recorder()
            for cid in ("c", "d"):
                client = make_client(client_id=cid, address="127.0.0.1", port=proxy.port)

                def received(m: Message, cid: str = cid) -> None:
                    with lock:
                        got[cid].append((m.payload["t"], m.payload["n"]))

                client.subscribe("message", received)
                clients[cid] = client
            rec.attach(clients["c"], "reconnect")
            for client in clients.values():
                client.connect()

            def sender(name: str, target: str) -> None:
                for n in range(PER_THREAD):
                    server.send(target, Message("m", {"t": name, "n": n}))
                    if n % 100 == 0:
                        time.sleep(0.001)

            to_c = [f"c{i}" for i in range(3)]
            to_all = [f"all{i}" for i in range(2)]
            senders = [threading.Thread(target=sender, args=(name, "c")) for name in to_c]
            senders += [threading.Thread(target=sender, args=(name, "*")) for name in to_all]
            for t in senders:
                t.start()
            _cut_while_sending(proxy, rec, lambda: len(got["c"]), senders)
            expected_c = (len(to_c) + len(to_all)) * PER_THREAD
            wait_until(
                lambda: len(got["c"]) >= expected_c and len(got["d"]) >= len(to_all) * PER_THREAD,
                timeout=60,
                what="every message",
            )
            for client in clients.values():
                client.wait_callbacks(10)
            every = list(range(PER_THREAD))
            assert _by_sender(got["c"]) == {name: every for name in to_c + to_all}
            assert _by_sender(got["d"]) == {name: every for name in to_all}
        finally:
            proxy.close()
