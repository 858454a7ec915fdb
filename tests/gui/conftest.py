from __future__ import annotations

import importlib.util
import os

import pytest

# Offscreen: a real Qt window, rendered in memory; no display needed.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

if importlib.util.find_spec("PySide6") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the GUI tests: install the gui extra (pip install -e '.[test,gui]')")
    pytest.skip("PySide6 is not installed (pip install -e '.[test,gui]')", allow_module_level=True)
