"""The sandbox's data dir (CHATOPS_DATA_DIR, default .chatops-data): who is using it, and clearing it (`make reset`).

A running sandbox holds an exclusive `flock` on `<data dir>/sandbox.lock` for its whole life; the kernel drops it
when the process ends, however it ends, so a crash leaves no stale lock. A second sandbox on the same data dir, or a
reset, is refused while it is held. Besides, an embedded redis-server works inside `<data dir>/redis` (its current
directory is its `--dir`), which is how a bot or `make demo` with an embedded Redis on that data dir is seen (Linux:
/proc). Standard library only: `make reset` works before `.venv` exists.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

DEFAULT_DATA_DIR = ".chatops-data"
LOCK_NAME = "sandbox.lock"
# What the sandbox, the bot and the terminal demo keep in a data dir: all that a reset removes. Anything else there
# is not theirs (CHATOPS_DATA_DIR may name a folder that holds other things) and is left alone.
OWNED = {"redis": "Redis data and log", "sandbox-bot.log": "the bot's log", LOCK_NAME: "the sandbox's lock file"}


class DataDirBusy(RuntimeError):
    """Someone is using the data dir: a sandbox holds its lock, or a redis-server keeps its files there."""


def data_dir_from(env: Mapping[str, str]) -> Path:
    return Path(env.get("CHATOPS_DATA_DIR") or DEFAULT_DATA_DIR)


class DataDirLock:
    """The running sandbox's claim on a data dir; the lock file says who holds it (pid, and the URL once known)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self, note: str = "") -> DataDirLock:
        """Take the lock at once or raise DataDirBusy naming the holder; never waits."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # held open for as long as the lock is held
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise DataDirBusy(f"a sandbox is running on {self.data_dir} ({holder}); stop it first (Ctrl-C)") from None
        self._file = file
        self.note(note)
        return self

    def note(self, note: str) -> None:
        """Rewrite what the lock file says about the holder."""
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}{', ' + note if note else ''}\n")
        self._file.flush()

    def release(self) -> None:
        # The file stays: removing it would race with a process that has just opened it to lock it.
        file, self._file = self._file, None
        if file is not None:
            fcntl.flock(file, fcntl.LOCK_UN)
            file.close()


def redis_servers_in(data_dir: Path) -> list[int]:
    """Pids of redis-server processes whose current directory is inside `data_dir` (Linux; elsewhere none)."""
    root = data_dir.resolve()
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "redis-server":
                continue
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # gone meanwhile, or another user's process: not ours to see
            continue
        if cwd == root or root in cwd.parents:
            found.append(int(entry.name))
    return sorted(found)


def reset(data_dir: Path) -> tuple[list[str], list[str]]:
    """Remove what the sandbox keeps in `data_dir` (and the folder, if nothing else is left in it).

    Returns (what was removed, what was left because it is not the sandbox's). Raises DataDirBusy, having removed
    nothing, while a sandbox or an embedded redis-server uses the folder.
    """
    if not data_dir.exists():
        return [], []
    if not data_dir.is_dir():
        raise NotADirectoryError(f"{data_dir} is not a folder")
    lock = DataDirLock(data_dir).acquire("resetting")  # no sandbox can start on it meanwhile
    try:
        servers = redis_servers_in(data_dir)
        if servers:
            pids = ", ".join(map(str, servers))
            raise DataDirBusy(
                f"a redis-server (pid {pids}) keeps its data in {data_dir}: stop the sandbox, bot or demo first"
            )
        removed = []
        for name in OWNED:
            path = data_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
            removed.append(name)
    finally:
        lock.release()
    kept = sorted(p.name for p in data_dir.iterdir())
    if not kept:
        data_dir.rmdir()
    return removed, kept


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.datadir",
        description="Clear the sandbox's data (Redis data, the bot's log); .venv stays.",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="default: CHATOPS_DATA_DIR or .chatops-data")
    args = parser.parse_args(argv)
    data_dir: Path = args.data_dir or data_dir_from(env)
    try:
        removed, kept = reset(data_dir)
    except (DataDirBusy, NotADirectoryError) as exc:
        print(f"reset: refused, nothing was removed: {exc}", file=sys.stderr)
        return 1
    if not removed and not kept:
        print(f"reset: nothing to clear, {data_dir} does not exist")
        return 0
    what = ", ".join(OWNED[name] for name in removed if name != LOCK_NAME) or "it held no data"
    print(f"reset: cleared {data_dir} ({what}); .venv is kept")
    if kept:
        print(f"reset: left in {data_dir}, not the sandbox's: {', '.join(kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
