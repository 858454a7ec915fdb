"""mctray, the MissionCommander tray GUI (PySide6), over the mcd control API."""
