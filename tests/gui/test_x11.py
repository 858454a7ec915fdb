"""mctray on a real X server (Xvfb), through its installed entry point.

The other window tests render offscreen; this one loads Qt's xcb plugin, the
part that aborts on a machine without the X11 libraries the README lists.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from support.mcd import Mcd

TOOLS = ("Xvfb", "xdotool")
missing = [tool for tool in TOOLS if shutil.which(tool) is None]
if missing:
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must run the X11 test: .ci/run installs {', '.join(missing)} (Debian: xvfb xdotool)")
    pytest.skip(f"needs {' and '.join(missing)} (Debian: apt-get install xvfb xdotool)", allow_module_level=True)


@pytest.fixture
def display(request: pytest.FixtureRequest) -> Iterator[str]:
    """A private X server (a 1024x768 screen, or the size a test asks for
    as its parameter); -displayfd has it pick a free display number and
    tell us when it is ready."""
    size = getattr(request, "param", "1024x768")
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{size}x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 30)
        assert ready, "Xvfb did not start within 30 s"
        number = os.read(read_fd, 64).decode().strip()
        assert number.isdigit(), f"Xvfb said {number!r}"
        yield f":{number}"
    finally:
        os.close(read_fd)
        xvfb.terminate()
        xvfb.wait(10)


def start_tray(display: str, mcd: Mcd) -> subprocess.Popen[str]:
    """mctray on ``display``, driving ``mcd``, once its window shows."""
    env = mcd.env() | {"DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    env.pop("WAYLAND_DISPLAY", None)
    tray = subprocess.Popen(
        [sys.executable, "-m", "mc_gui", "--socket", str(mcd.socket)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    found = subprocess.run(
        ["xdotool", "search", "--sync", "--onlyvisible", "--name", "^MissionCommander$"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if tray.poll() is not None:
        raise AssertionError(f"mctray exited {tray.returncode}: {tray.communicate()[1]}")
    assert found.returncode == 0 and found.stdout.split(), found.stderr
    return tray


def test_mctray_shows_its_window_on_a_real_x_server(display: str) -> None:
    mcd = Mcd().start()
    tray: subprocess.Popen[str] | None = None
    try:
        tray = start_tray(display, mcd)
    finally:
        err = ""
        if tray is not None:
            tray.terminate()
            _, err = tray.communicate(timeout=20)
        mcd.stop()
        mcd.close()
    assert "Traceback" not in err
    assert "Could not load the Qt platform plugin" not in err


@pytest.mark.parametrize("display", ["1024x600"], indirect=True)
def test_the_window_starts_within_a_small_screen(display: str) -> None:
    # It opened 700 px tall whatever the screen: on a 1024x600 netbook its
    # bottom (the live figures) was off the screen, and so it was on a
    # 1280x720 desktop once panels and the title bar took their share.
    mcd = Mcd().start()
    tray: subprocess.Popen[str] | None = None
    try:
        tray = start_tray(display, mcd)
        env = mcd.env() | {"DISPLAY": display}
        window = subprocess.run(
            ["xdotool", "search", "--onlyvisible", "--name", "^MissionCommander$"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()[0]
        shape = subprocess.run(
            ["xdotool", "getwindowgeometry", "--shell", window],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    finally:
        if tray is not None:
            tray.terminate()
            tray.communicate(timeout=20)
        mcd.stop()
        mcd.close()
    geometry = dict(line.split("=", 1) for line in shape.split())
    assert int(geometry["Y"]) + int(geometry["HEIGHT"]) <= 600, shape


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_quits_mctray_cleanly(display: str, signum: int) -> None:
    # Before, Ctrl-C waited for the next Python slot (up to a second), then
    # raised KeyboardInterrupt inside it and left the window up.
    mcd = Mcd().start()
    try:
        tray = start_tray(display, mcd)
        try:
            tray.send_signal(signum)
            _, err = tray.communicate(timeout=20)
        finally:
            if tray.poll() is None:
                tray.kill()
                tray.communicate(timeout=20)
    finally:
        mcd.stop()
        mcd.close()
    assert tray.returncode == 128 + signum, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
