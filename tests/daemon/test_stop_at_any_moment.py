"""mcd stops cleanly on SIGTERM or SIGINT at every moment of start-up.

The daemon is started and signalled a hundred times, the signal landing
anywhere from the first instruction to after READY=1, with a saved state to
restore (a server and clients that connect to it) so that restoring takes
time too.  Every stop must be prompt and clean: exit 0, no traceback, the
socket and lock files gone, every saved instance still saved.  The only
other outcome allowed is the process ending by the signal's default action
before mcd's code could install a handler (the interpreter starting up),
and then the state file must be untouched; and one more that is CPython's,
not mcd's: a SIGINT the interpreter drops while it starts a script
(``_swallowed_by_python``, ``_before_its_handlers``), where mcd never saw
a signal and the second one sent must stop it as cleanly as any.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from support import free_port
from support.mcd import Mcd, mcd_env

from mc_daemon.state import StateStore

RUNS = 100
WORKERS = 2


def _saved_state(port: int) -> dict[str, object]:
    return {
        "version": 1,
        "servers": {"s": {"settings": {"interface": "127.0.0.1", "port": port}, "desired": True}},
        "clients": {
            f"c{i}": {"settings": {"address": "127.0.0.1", "port": port, "client_id": f"c{i}"}, "desired": True}
            for i in range(5)
        },
    }


def _mcd_command() -> list[str]:
    script = Path(sys.executable).parent / "mcd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mc_daemon"]


def _ready_time() -> float:
    """How long this machine takes to bring mcd up to READY=1 with that state."""
    daemon = Mcd()
    try:
        daemon.state_dir.mkdir(parents=True)
        (daemon.state_dir / "state.json").write_text(json.dumps(_saved_state(free_port())))
        began = time.monotonic()
        daemon.start()
        return time.monotonic() - began
    finally:
        daemon.close()


def _one_worker(runs: int, spread: float, seed: int) -> tuple[int, list[str]]:
    """Start and signal mcd ``runs`` times; (clean stops, problems)."""
    root = Path(tempfile.mkdtemp(prefix="mcq", dir="/tmp"))
    try:
        return _signal_runs(root, runs, spread, seed)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _signal_runs(root: Path, runs: int, spread: float, seed: int) -> tuple[int, list[str]]:
    rng = random.Random(seed)
    state_dir = root / "state"
    state_dir.mkdir()
    saved = _saved_state(free_port())
    (state_dir / "state.json").write_text(json.dumps(saved))
    sock = root / "mcd.sock"
    clean, problems = 0, []
    for run in range(runs):
        sig = rng.choice([signal.SIGTERM, signal.SIGINT])
        delay = rng.uniform(0, spread)
        before = _saved_instances(state_dir)
        proc = subprocess.Popen(
            # DEBUG: mcd says when its handlers began (_before_its_handlers).
            [*_mcd_command(), "--socket", str(sock), "--state-dir", str(state_dir), "--log-level", "DEBUG"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=mcd_env(),
        )
        time.sleep(delay)  # not a synchronisation: the point is to land anywhere in start-up
        proc.send_signal(sig)
        sent = time.monotonic()  # the signal is pending from the kill() on: it landed before this
        swallowed = False
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            # Lost before mcd's code ran (_swallowed_by_python)? Then a second
            # signal, as a person's second Ctrl-C, must stop it cleanly.
            proc.send_signal(sig)
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                problems.append(f"run {run}: {sig.name} after {delay:.3f} s: still running after two\n{_ends(err)}")
                continue
            swallowed = True
            if not (_swallowed_by_python(err) or _before_its_handlers(err, sent)):
                problems.append(f"run {run}: {sig.name} after {delay:.3f} s: ignored until sent again\n{_ends(err)}")
                continue
        what = f"run {run}: {sig.name} after {delay:.3f} s: exit {proc.returncode}"
        if proc.returncode == 0:
            clean += 1
            state = _saved_instances(state_dir)
            if "Traceback" in err and not swallowed:
                problems.append(f"{what} with a traceback\n{_ends(err)}")
            elif sock.exists() or sock.with_name("mcd.sock.lock").exists():
                problems.append(f"{what} but left {sorted(p.name for p in root.iterdir())}")
            elif {k: set(state[k]) for k in ("clients", "servers")} != {
                k: set(saved[k])
                for k in ("clients", "servers")  # type: ignore[arg-type]
            }:
                problems.append(f"{what} but the saved instances changed: {state}")
            elif not all(entry["desired"] for k in ("clients", "servers") for entry in state[k].values()):
                problems.append(f"{what} but an instance is no longer wanted up: {state}")
        elif proc.returncode in (-sig, 1) and _before_mcd_ran(err):
            # Ended by the signal while the interpreter started, before mcd's
            # handlers existed (exit 1: Python's own "Could not import runpy").
            if _saved_instances(state_dir) != before:
                problems.append(f"{what} and the saved state changed")
        else:
            problems.append(f"{what}\n{_ends(err)}")
    return clean, problems


def _saved_instances(state_dir: Path) -> dict[str, Any]:
    """The instances saved, as mcd reads them: state.json and the changes
    logged after it (state.json alone is behind after a kill -9, until a
    later mcd writes it whole)."""
    data = StateStore(state_dir).load()
    return {key: data.get(key) or {} for key in ("clients", "servers")}


def _ends(stderr: str) -> str:
    """Both ends of a run's standard error: how a traceback began (its
    first frames) and what the daemon did last."""
    if len(stderr) <= 5000:
        return stderr
    return f"{stderr[:2500]}\n[...]\n{stderr[-2500:]}"


def _before_mcd_ran(stderr: str) -> bool:
    """Whether a traceback shows the process still loading mcd's first modules."""
    ours = [f for f in re.findall(r'File "([^"]+)"', stderr) if "/mc_" in f or "/missioncommander/" in f]
    return " mcd" not in stderr and all(f.endswith(_FIRST_MODULES) for f in ours)


def _swallowed_by_python(stderr: str) -> bool:
    """Whether CPython itself dropped the first SIGINT, before any code of
    mcd's ran: a KeyboardInterrupt raised where the interpreter prints it and
    goes on as if no signal had come.  Two places were seen (60 of 8,910
    SIGINTs sent 0-60 ms into start-up on a loaded machine): while it checks
    whether the script's path (the ``mcd`` console script) is an import path
    entry ("Failed checking if argv[0] is an import path entry"), and in the
    weakref callback of an import's module lock ("Exception ignored in:
    <function _get_module_lock.<locals>.cb ...>").  The second signal is the
    first mcd can see."""
    head = stderr.split("\n20", 1)[0]  # up to mcd's first log line
    return (
        head.startswith(_PYTHON_DROPS)
        and "KeyboardInterrupt" in head
        and "/mc_" not in head
        and "/missioncommander/" not in head
    )


def _before_its_handlers(stderr: str, sent: float) -> bool:
    """Whether the signal was sent before mcd's handlers existed (by mcd's
    own account, on the shared monotonic clock): then only the interpreter
    can have lost it.  On 3.13 it may do so without a word (seen once in
    100 runs, 26 ms into start-up), where 3.11 prints one of _PYTHON_DROPS."""
    found = re.search(r"stop mcd cleanly since time\.monotonic\(\) = ([0-9.]+)", stderr)
    return found is not None and sent < float(found.group(1))


_PYTHON_DROPS = (
    "Failed checking if argv[0] is an import path entry",
    "Exception ignored in: <function _get_module_lock.<locals>.cb",
)


_FIRST_MODULES = ("mc_daemon/__init__.py", "mc_daemon/__main__.py", "mc_daemon/entry.py")


def test_mcd_stops_cleanly_when_signalled_at_any_moment_of_start_up() -> None:
    spread = 1.2 * _ready_time()
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(_one_worker, [RUNS // WORKERS] * WORKERS, [spread] * WORKERS, range(WORKERS)))
    clean = sum(c for c, _ in results)
    problems = [p for _, ps in results for p in ps]
    assert not problems, "\n\n".join(problems[:5])
    # Most signals land after the interpreter's own start-up: if they did not
    # stop mcd cleanly, the test would not be testing anything.
    assert clean >= RUNS // 2, f"only {clean} of {RUNS} stops were handled by mcd"
