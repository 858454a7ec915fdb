"""mcd, the MissionCommander daemon: ``DaemonCore`` (instances, events,
persistence) and the control server that exposes it on a Unix socket.

Nothing is imported here eagerly (not even ``typing``): ``mcd`` installs its
signal handlers before it loads anything (see ``entry``), so that a stop
during start-up is clean.
"""

__all__ = ["CoreError", "DaemonCore"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from . import core  # noqa: PLC0415

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
