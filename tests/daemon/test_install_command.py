"""The pip command mcd and the GUI name for a missing extra
(mc_control.install): right for an install from PyPI and from a checkout."""

from __future__ import annotations

import importlib.metadata
import json
import shlex
import sys
from pathlib import Path

import pytest

from mc_control.install import install_command

ROOT = Path(__file__).resolve().parents[2]
PIP = f"{shlex.quote(sys.executable)} -m pip install"


class Installed:
    """A distribution whose ``direct_url.json`` is ``direct`` (None: absent)."""

    def __init__(self, direct: object) -> None:
        self.direct = direct

    def read_text(self, name: str) -> str | None:
        assert name == "direct_url.json"
        return None if self.direct is None else json.dumps(self.direct)


def test_this_checkout_is_named_as_the_tests_run_from_it() -> None:
    assert install_command("metrics") == f"{PIP} -e {shlex.quote(f'{ROOT}[metrics]')}"


@pytest.mark.parametrize(
    ("direct", "expected"),
    [
        (None, f"{PIP} 'missioncommander[gui]'"),  # from PyPI: pip records no direct URL
        ({"url": "https://example.org/mc.tar.gz", "archive_info": {}}, f"{PIP} 'missioncommander[gui]'"),
        ({"url": "file:///opt/mc", "dir_info": {}}, f"{PIP} '/opt/mc[gui]'"),  # pip install /opt/mc
        ({"url": "file:///home/me/my mc", "dir_info": {"editable": True}}, f"{PIP} -e '/home/me/my mc[gui]'"),
        ({"url": "file:///opt/mc", "dir_info": "garbled"}, f"{PIP} '/opt/mc[gui]'"),
        (["not", "an", "object"], f"{PIP} 'missioncommander[gui]'"),
    ],
)
def test_the_command_follows_where_pip_installed_from(
    monkeypatch: pytest.MonkeyPatch, direct: object, expected: str
) -> None:
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Installed(direct))
    assert install_command("gui") == expected


def test_a_distribution_pip_does_not_know_gets_the_pypi_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert install_command("cluster") == f"{PIP} 'missioncommander[cluster]'"
