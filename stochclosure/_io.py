"""Output preflight and the rule for paths written in configuration files.

Long jobs (``generate``, ``train``, ``rollout``) call :func:`preflight_output` before doing any
work, so a read-only folder or a full disk is reported in one line at once instead of after an
hour of computation.

Paths in configuration files follow one rule (:func:`resolve_config_path`): an absolute path is
used as given; a relative path is resolved against the folder of the configuration file and must
stay inside that folder, or inside the folder named by the configuration's optional top-level
``root`` key (itself relative to the configuration file). So ``../../etc/passwd`` in a config is
refused unless the author declared, explicitly, a root that contains it.

Two processes must never write the same output: :func:`exclusive_lock` takes an advisory
``fcntl`` lock on ``<output>.lock`` for the whole job (the second process gets a one-line
:class:`~stochclosure.errors.OutputError` naming the holder's pid, before any work), and
:func:`temporary_name` gives every process its own temporary file beside the target, so a
failed writer can never truncate another's file before the atomic ``os.replace``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError, OutputError, format_error

__all__ = ["preflight_output", "resolve_config_path", "config_root", "exclusive_lock", "temporary_name",
           "MIN_FREE_BYTES"]

MIN_FREE_BYTES = 16 * 2**20
"""Free space required by default before a job starts (16 MiB)."""


def _write_probe(directory: Path) -> None:
    """Create, write, fsync and remove a small file in ``directory`` (raises ``OSError``)."""
    fd, tmp = tempfile.mkstemp(prefix=".write-probe.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def preflight_output(path: str | os.PathLike[str], argument: str = "out", *, is_dir: bool = False,
                     min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Check that ``path`` can be written before any work starts.

    Creates the folder that will hold ``path`` (``path`` itself when ``is_dir``), writes and
    removes a probe file there, and checks that at least ``min_free_bytes`` are free.

    Args:
        path: Output file, or output folder when ``is_dir``.
        argument: Name of the argument for the message (``"--out"``, ``"checkpoint_dir"``).
        is_dir: ``path`` is a folder.
        min_free_bytes: Free space required.

    Returns:
        The folder checked.

    Raises:
        OutputError: the folder cannot be created or written, or the disk is (nearly) full.
    """
    path = Path(path)
    folder = path if is_dir else path.parent
    fix = "choose a writable location or fix the folder's permissions"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_probe(folder)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError(format_error(argument, f"a folder with free space for {str(path)!r}",
                                           f"a full disk at {str(folder)!r} ({exc.strerror})",
                                           "free some space or choose another disk")) from exc
        why = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc))
        raise OutputError(format_error(argument, f"a writable folder for {str(path)!r}",
                                       f"{str(folder)!r} that cannot be written ({why})", fix)) from exc
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:
        raise OutputError(format_error(argument, f"at least {min_free_bytes / 2**20:.0f} MiB free for {str(path)!r}",
                                       f"{free / 2**20:.1f} MiB free at {str(folder)!r}",
                                       "free some space or choose another disk"))
    return folder


def config_root(config_path: str | os.PathLike[str], root: str | None = None) -> Path:
    """The folder relative config paths must stay in: the config's folder, or its ``root`` key."""
    base = Path(config_path).resolve().parent
    if root is None:
        return base
    if not isinstance(root, str):
        raise ConfigError(format_error("root", "a folder path (string)", f"{type(root).__name__} {root!r}"))
    return (base / root).resolve()


def resolve_config_path(value: object, key: str, config_path: str | os.PathLike[str], root: str | None = None) -> str:
    """Resolve a path written in a configuration file (see the module docstring for the rule).

    Args:
        value: The path as written.
        key: Its key in the configuration (``"data.path"``), for the message.
        config_path: The configuration file.
        root: The configuration's ``root`` entry, if any.

    Returns:
        The absolute, resolved path.

    Raises:
        ConfigError: not a string, or a relative path leaving the allowed folder.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(format_error(key, "a path (non-empty string)", f"{type(value).__name__} {value!r}"))
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p.resolve())
    allowed = config_root(config_path, root)
    resolved = (Path(config_path).resolve().parent / p).resolve()
    if resolved != allowed and allowed not in resolved.parents:
        raise ConfigError(format_error(key, f"a path inside {str(allowed)!r} (relative paths may not leave the "
                                            "config's folder)", f"{value!r}, which resolves to {str(resolved)!r}",
                                       "write an absolute path, or declare a wider folder with a top-level "
                                       "`root:` key in the config"))
    return str(resolved)


def temporary_name(target: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """A temporary path beside ``target`` that no other process uses (host, pid and a random tag).

    Write there, then ``os.replace`` onto ``target``: the rename is atomic on one file system, and
    two writers never share (or truncate) a temporary file.

    Args:
        target: The file that will be replaced.
        suffix: Ending of the temporary name.

    Returns:
        ``target.parent / ".<name>.<host>-<pid>-<random><suffix>"`` (not created).
    """
    target = Path(target)
    tag = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
    return target.with_name(f".{target.name}.{tag}{suffix}")


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike[str], argument: str = "out") -> Iterator[Path]:
    """Hold an exclusive advisory lock on ``<target>.lock`` for the duration of a job.

    The lock is released by the kernel when the process ends, even by SIGKILL, so a killed job
    never leaves a stale lock behind (the lock file itself stays, harmlessly). The holder's pid
    is written into the file for the message a second process gets.

    Args:
        target: The output (file or folder) the job writes.
        argument: Name of the argument for the message (``"--out"``, ``"out"``).

    Yields:
        The lock file's path.

    Raises:
        OutputError: another process holds the lock (naming its pid), or the lock file cannot be
            created.
    """
    import fcntl

    target = Path(target)
    lock = target.with_name(target.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(format_error(argument, f"a lockable output {str(target)!r}",
                                       f"{str(lock)!r} cannot be created ({exc.strerror or exc})",
                                       "choose a writable location")) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise OutputError(format_error(argument, f"an output no other process is writing: {str(target)!r}",
                                           f"locked by another running process (pid {holder})",
                                           "wait for it to finish, or choose another output")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        os.close(fd)  # closing the descriptor releases the lock
