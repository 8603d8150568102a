"""Test helpers: wait for a condition instead of sleeping blindly; free ports; a private Redis; a sealed
environment for every child process a test starts."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict, TypeVar

from redis import Redis as SyncRedis
from redis.exceptions import RedisError

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]

# What a child process may inherit from the shell that runs the tests: enough to find programs, a home and a
# locale. Nothing else: no setting of the guard (the README's `export PRICE_CACHE_TTL_S=...`), no token.
INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "TERM")


class ChildPlace(TypedDict):
    """Keyword arguments for `subprocess.Popen`/`run` and `asyncio.create_subprocess_exec` (see `sealed_child`)."""

    env: dict[str, str]
    cwd: str


def sealed_child(cwd: str | os.PathLike[str], **env: str) -> ChildPlace:
    """The `env` and `cwd` keyword arguments for every child process a test starts, sealed from the developer.

    The environment is the allow-list `INHERITED_ENV` taken from this process, plus exactly the settings given
    in `env` (e.g. `REDIS_URL=server.url`): a variable exported in the shell that runs `make test`, or one a
    Compose `.env` holds, never reaches the child. `cwd` must be a directory of the test's own (`tmp_path`),
    outside the checkout and without a `.env`, because every service reads `.env` from its working directory.

        subprocess.Popen([sys.executable, "-m", "services.api"], **sealed_child(tmp_path, REDIS_URL=url))
        await asyncio.create_subprocess_exec(..., **sealed_child(tmp_path, **settings_env))
    """
    place = Path(cwd).resolve()
    if not place.is_dir():
        raise ValueError(f"sealed_child: {place} is not a directory")
    if place.is_relative_to(REPO_ROOT):
        raise ValueError(f"sealed_child: {place} is inside the checkout, whose .env the child would read")
    if (place / ".env").exists():
        raise ValueError(f"sealed_child: {place} holds a .env the child would read")
    inherited = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    return {"env": {**inherited, **env}, "cwd": str(place)}


async def eventually(condition: Callable[[], Awaitable[T] | T], timeout_s: float = 10.0, interval_s: float = 0.05) -> T:
    """Poll `condition` until it returns a truthy value; return it, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
            last = result
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s (last: {last!r})")
        await asyncio.sleep(interval_s)


def terminate(proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM a child and wait for it; SIGKILL it if it has not exited within `timeout_s`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and never handed out before by this process: the kernel may offer a port again
    once its probe socket is closed, and two services of one stack (a simulator and an api) then shared one."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class RedisServer:
    """A real redis-server on a free loopback port, private to the test session (pub/sub included)."""

    def __init__(self, port: int, workdir: str, appendonly: bool = False) -> None:
        self.port = port
        self.workdir = workdir
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (bash .ci/run installs it)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--dir",
                self.workdir,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **sealed_child(self.workdir),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on port {self.port} (taken?)")
            answering = self._answering_pid()
            if answering == self.proc.pid:
                return
            if answering is not None:  # another server holds the port: never use someone else's data
                self.stop(kill=True)
                raise RuntimeError(f"port {self.port} is answered by redis pid {answering}, not our child")
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _answering_pid(self) -> int | None:
        """The process id of the redis-server answering on our port, or None while nothing answers."""
        try:
            with SyncRedis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.2) as client:
                return int(client.info("server")["process_id"])
        except (RedisError, OSError):
            return None

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None


@contextmanager
def redis_server(appendonly: bool = False) -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="guard-redis-") as workdir:
        server = RedisServer(free_port(), workdir, appendonly=appendonly)
        server.start()
        try:
            yield server
        finally:
            server.stop()
