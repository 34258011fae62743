from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from servers import Cluster, Server, module_source
from tally_client import Tally


@pytest.fixture(scope="session")
def module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the module, so a rebuild during the session cannot change it."""
    src = module_source()
    if not src.is_file():
        pytest.fail(f"module {src} not found: build it (cargo build --release -p tally) or set TALLY_MODULE")
    dst = tmp_path_factory.mktemp("module") / "libtally.so"
    shutil.copyfile(src, dst)
    dst.chmod(0o755)  # redis-server loads only executable modules
    return dst


@pytest.fixture(scope="session")
def server(module: Path) -> Iterator[Server]:
    """One server shared by the tests that only touch their own (uniquely named) keys."""
    s = Server(module)
    yield s
    s.stop()


@pytest.fixture
def start_server(module: Path) -> Iterator[Callable[..., Server]]:
    """Starts dedicated servers (e.g. with module arguments) that are stopped after the test."""
    started: list[Server] = []

    def start(extra: list[str] | None = None, module_args: list[str] | None = None) -> Server:
        s = Server(module, extra or [], module_args or [])
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def cluster(module: Path) -> Iterator[Cluster]:
    c = Cluster(module)
    yield c
    c.stop()


@pytest.fixture
def raw(server: Server) -> Iterator[redis.Redis]:
    """A plain redis-py connection to inspect what the server stored."""
    c = server.client()
    yield c
    c.close()


@pytest.fixture
def tally(server: Server) -> Iterator[Tally]:
    t = Tally(server.client(decode_responses=False))
    yield t
    t.close()


@pytest.fixture
def key() -> Callable[[str], str]:
    """Unique key names, so tests sharing a server never see each other's data."""
    run = uuid.uuid4().hex[:10]
    return lambda name: f"t:{run}:{name}"
