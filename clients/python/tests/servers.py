"""Real redis-server processes with the tally module, on free 127.0.0.1 ports, for the tests.

The server binary comes from ``TALLY_SERVER_BIN`` (default ``redis-server``), the module from
``TALLY_MODULE`` (default ``<repo>/target/release/libtally.so``).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REPO = Path(__file__).resolve().parents[3]
T = TypeVar("T")


def server_bin() -> str:
    return os.environ.get("TALLY_SERVER_BIN", "redis-server")


def module_source() -> Path:
    return Path(os.environ.get("TALLY_MODULE", REPO / "target" / "release" / "libtally.so"))


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, so that a killed test
    run leaves no server behind (Linux prctl PR_SET_PDEATHSIG; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster: bool = False) -> int:
    """A port free now; for a cluster node its bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not cluster:
            return port
        if port + 10000 <= 65535 and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair found")


def wait_until(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns something other than None/False, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            got = check()
            if got is not None and got is not False:
                return got
        except Exception as e:  # noqa: BLE001 - reported at the deadline
            last_error = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_error!r}")
        time.sleep(0.05)


async def async_wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    """:func:`wait_until` for a coroutine check, sleeping without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class Server:
    """One redis-server with the module; ``stop()`` ends it and removes its directory."""

    def __init__(self, module: Path, extra: Sequence[str] = (), module_args: Sequence[str] = (), cluster: bool = False):
        self.module = module
        self.extra = list(extra)
        self.module_args = list(module_args)
        self.cluster = cluster
        self.dir = Path(tempfile.mkdtemp(prefix="tally-py-client-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        last = ""
        for _ in range(5):
            self.port = free_port(cluster)
            last = self._spawn()
            if not last:
                return
            if "already in use" not in last and "another process" not in last:
                break  # not a port race: trying another port will not help
        self.stop()
        raise RuntimeError(f"could not start {server_bin()}: {last}")

    def _spawn(self) -> str:
        cmd = [
            server_bin(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--maxclients", "4000",
            "--logfile", str(self.dir / "redis.log"),
            "--loadmodule", str(self.module), *self.module_args,
            *self.extra,
        ]  # fmt: skip
        if self.cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "5000"]  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        probe = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True, retry=Retry(NoBackoff(), 0)
        )
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return f"exited with {proc.returncode}; log:\n{self.log()}"
                try:
                    info = probe.info("server")
                    if int(info["process_id"]) != proc.pid:
                        raise RuntimeError(f"port {self.port} is served by another process")
                    if probe.info("persistence").get("loading") == 0:
                        self.proc = proc
                        return ""
                except redis.ConnectionError:
                    pass
                except RuntimeError as e:
                    proc.kill()
                    proc.wait()
                    return str(e)
                time.sleep(0.05)
        finally:
            probe.close()
        proc.kill()
        proc.wait()
        return f"not ready after 30 s; log:\n{self.log()}"

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        kwargs.setdefault("decode_responses", True)
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """Three primaries, slots split in three, joined with CLUSTER MEET."""

    RANGES = ((0, 5460), (5461, 10922), (10923, 16383))

    def __init__(self, module: Path):
        self.nodes: list[Server] = []
        try:
            for _ in self.RANGES:
                self.nodes.append(Server(module, cluster=True))
            for node, (lo, hi) in zip(self.nodes, self.RANGES):
                with node.client() as c:
                    c.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
            with self.nodes[0].client() as c:
                for other in self.nodes[1:]:
                    c.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port)
            for node in self.nodes:
                wait_until(lambda n=node: self._ok(n), f"cluster_state:ok on port {node.port}")
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _ok(node: Server) -> bool:
        with node.client() as c:
            info = c.execute_command("CLUSTER", "INFO")
            text = info if isinstance(info, str) else str(info)
            slots = c.execute_command("CLUSTER", "SLOTS")
        return "cluster_state:ok" in text and "cluster_known_nodes:3" in text and len(slots) == 3

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def node_of(self, key: str) -> Server:
        with self.nodes[0].client() as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
        for node, (lo, hi) in zip(self.nodes, self.RANGES):
            if lo <= slot <= hi:
                return node
        raise AssertionError(slot)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
