"""The files mcd keeps beside its socket and state, made safe to keep in
directories others can reach.

* ``secure_directory``: a directory others cannot plant files in.
* ``SocketLock``: ``<socket>.lock``, held for the daemon's life, so only one
  mcd serves a socket path; never opened through a symlink.
* ``claim_socket_path``: whether a daemon already answers at the socket
  path, removing a stale socket but nothing that is not a socket.
* ``bind_control_socket``: the control socket, mode 0600 from its first
  instant, listening.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
import threading
from pathlib import Path

log = logging.getLogger("mcd")


def secure_directory(directory: Path, what: str) -> None:
    """Create ``directory`` (mode 0700) or make sure others cannot plant files in it.

    A directory of ours that others may write to is fixed (``chmod go-w``)
    with a warning; one owned by someone else and writable by others without
    the sticky bit (so that files in it can be swapped under us) is refused
    with ``PermissionError``.  A sticky, world-writable directory such as
    ``/tmp`` is accepted: every file mcd makes in it is created with
    ``O_EXCL`` or opened with ``O_NOFOLLOW``, and nobody else may remove it there.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.stat(directory)
    loose = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if not loose:
        return
    if st.st_uid == os.getuid():
        os.chmod(directory, stat.S_IMODE(st.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))
        log.warning("%s %s was writable by others; made it writable by its owner only", what, directory)
    elif not st.st_mode & stat.S_ISVTX:
        raise PermissionError(
            errno.EPERM,
            f"{what} {directory} belongs to uid {st.st_uid} and others may write to it; choose a directory of your own",
        )


class SocketLock:
    """``<socket>.lock``: an ``flock`` held while mcd runs, with its pid inside.

    ``acquire`` returns False when another daemon holds it.  ``release``
    removes the file, then unlocks: a daemon that opened the old file just
    before cannot take a lock on a name that is gone, because ``acquire``
    checks that the file it locked is still the one at the path.
    """

    def __init__(self, socket_path: Path) -> None:
        self.path = socket_path.with_name(socket_path.name + ".lock")
        self._fd: int | None = None
        #: keep() runs on a thread of its own, and must not meet release() halfway.
        self._guard = threading.Lock()

    def acquire(self) -> bool:
        for _ in range(10):  # only a daemon stopping at this very moment makes it go round
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise PermissionError(
                        errno.ELOOP, f"{self.path} is a symbolic link; mcd will not write through it"
                    ) from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return False
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # removed (or replaced) by a daemon that stopped meanwhile: lock the new one
                os.close(fd)
                continue
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise PermissionError(errno.EPERM, f"{self.path} is not a regular file")
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return True
        raise OSError(errno.EAGAIN, f"{self.path} keeps changing under mcd")

    def _ours(self) -> bool:
        """The file at the path is the one this daemon locked."""
        assert self._fd is not None
        try:
            return os.path.samestat(os.fstat(self._fd), os.lstat(self.path))
        except FileNotFoundError:
            return False

    def keep(self) -> bool:
        """Lock the path again when its file was removed (by hand, or by a
        cleanup of the socket's directory, which is made again too): else a
        second mcd would start beside this one, on the same state.  False
        when another daemon holds the file at the path now; ``OSError`` when
        it cannot be made."""
        with self._guard:
            if self._fd is None or self._ours():
                return True
            old, self._fd = self._fd, None
            try:
                secure_directory(self.path.parent, "socket directory")
                taken = self.acquire()
            except OSError:
                self._fd = old
                raise
            if not taken:
                self._fd = old
                return False
            os.close(old)
            return True

    def holder(self) -> int | None:
        """The pid written in the lock file by the daemon holding it, if readable."""
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        with self._guard:
            if self._fd is None:
                return
            if self._ours():  # never another daemon's, which took the path after ours was removed
                try:
                    self.path.unlink()
                except OSError:
                    pass
            os.close(self._fd)
            self._fd = None


class SocketInUse(Exception):
    """Something that must not be replaced sits at the socket path."""


def claim_socket_path(path: Path) -> bool:
    """True when a daemon answers at ``path``; otherwise make room for ours.

    A stale socket (left by a daemon that died) is removed.  Anything that is
    not a socket raises ``SocketInUse``: mcd never deletes a user's file.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        kind = (
            "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else "a file"
        )
        raise SocketInUse(f"{path} is {kind}, not a socket; mcd will not remove it (choose another --socket)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except ConnectionRefusedError:
            log.warning("removing stale socket %s (left by a daemon that died)", path)
            path.unlink(missing_ok=True)
            return False
        except OSError:
            return False
    return True


def bind_control_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, bound atomically: a temporary
    name, mode 0600 before anyone can connect, then renamed over ``path``.

    Connections made before anything accepts wait in the backlog: mcd binds
    this before it loads the rest of itself, so an ``mcctl`` started just
    after it waits for its answer instead of finding no socket.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(tmp))
        finally:
            os.umask(old_umask)
        os.chmod(tmp, 0o600)
        sock.listen(64)
        os.replace(tmp, path)
    except OSError:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise
    return sock
