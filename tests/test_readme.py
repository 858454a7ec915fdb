"""The README's library quick start, run exactly as printed, prints exactly what the README says it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_the_library_quick_start_prints_what_the_readme_says() -> None:
    quick = section("Quick start: the library")
    code, _ = re.findall(r"```python\n(.*?)```", quick, re.S)
    (expected,) = re.findall(r"```text\n(.*?)```", quick, re.S)
    # Five runs: the first example must work every time, not most times.
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stderr == ""
        assert out.stdout == expected


def test_the_asyncio_guide_example_prints_what_it_says() -> None:
    guide = (Path(__file__).resolve().parents[1] / "docs" / "ASYNC.md").read_text()
    code = re.findall(r"```python\n(.*?)```", guide, re.S)[0]
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout == "echoed: Message(subject='echo', payload={'n': 1})\n"


def test_the_request_snippet_gets_the_reply_its_comment_says() -> None:
    _, snippet = re.findall(r"```python\n(.*?)```", section("Quick start: the library"), re.S)
    # The two lines as printed, between the quick start's set-up and its end.
    code = (
        "from missioncommander import Client, Message, Server\n"
        "with Server(interface='127.0.0.1', port=0) as server:\n"
        "    with Client(address='127.0.0.1', port=server.port) as client:\n"
        + "".join(f"        {line}\n" for line in snippet.splitlines())
        + "        assert reply.payload == {'sum': 5}, reply\n"
        "        print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, "ok\n", "")
