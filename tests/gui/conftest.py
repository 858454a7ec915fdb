from __future__ import annotations

import importlib.util
import os

# Offscreen: a real Qt window, rendered in memory; no display needed.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# Without PySide6 the window tests skip with the reason (test_window.py) and
# the view-model's run: it is plain Python. CI must run them all.
if os.environ.get("CI") and importlib.util.find_spec("PySide6") is None:
    raise RuntimeError("CI must run the GUI tests: install the gui extra (pip install -e '.[test,gui]')")
