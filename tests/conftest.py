"""Shared fixtures: loopback addresses, in-process test backends and pods, podproxy subprocesses.

Every fixture that opens a port or starts a process closes it at teardown, even when the test
failed; a failed test that ran podproxy gets the tail of its stderr in the report.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence

import pytest
from integration.backends import Backend, LoopbackAllocator, ProxyProcess, admin_address
from integration.backends import free_port as _free_port

from podproxy.sandbox.pods import PodSet

PODPROXY_COMMAND: tuple[str, ...] = (sys.executable, "-m", "podproxy")
READY_TIMEOUT = 10.0
TERMINATE_TIMEOUT = 10.0

_failed_key = pytest.StashKey[bool]()
_allocator = LoopbackAllocator()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_failed_key] = True
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    node: pytest.Item = request.node
    return node.stash.get(_failed_key, False)


@pytest.fixture
def free_port() -> Callable[..., int]:
    """`free_port(host="127.0.0.1") -> int`: a port that was free on `host` a moment ago."""
    return _free_port


@pytest.fixture
def loopback_ip() -> Callable[[int], str]:
    """`loopback_ip(n) -> str`: this test's own loopback addresses; 0 <= n < 16 are in
    127.0.1.x, and up to 254 more in a /24 of the test's own (LoopbackAllocator)."""
    return _allocator.block()


StartProxy = Callable[..., Awaitable[ProxyProcess]]


@pytest.fixture
async def podproxy_process(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[StartProxy]:
    """Factory: `await podproxy_process(config_text, *extra_args) -> ProxyProcess`.

    Writes the config to a temp dir, runs `python -m podproxy -c <path> -l info *extra_args`
    with output in files beside it, and waits until the config's admin address answers
    `GET /ready` with 200. Keywords: `command` (argv prefix replacing `python -m podproxy`),
    `wait_ready` (default True), `ready_timeout` (10 s), `env` (extra environment).
    Teardown: SIGTERM by PID, up to 10 s, then SIGKILL; stderr tail printed if the test failed.
    """
    tmp = tmp_path_factory.mktemp("podproxy")
    procs: list[ProxyProcess] = []
    numbers = itertools.count()

    async def start(
        config_text: str,
        *extra_args: str,
        command: Sequence[str] = PODPROXY_COMMAND,
        wait_ready: bool = True,
        ready_timeout: float = READY_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> ProxyProcess:
        n = next(numbers)
        config_path = tmp / f"podproxy-{n}.yaml"
        config_path.write_text(config_text)
        argv = [*command, "-c", str(config_path), "-l", "info", *extra_args]
        proc = ProxyProcess(
            argv, config_path, tmp / f"podproxy-{n}", admin_address(config_text), env
        )
        procs.append(proc)
        if wait_ready:
            try:
                await proc.wait_ready(ready_timeout)
            except BaseException:
                await proc.terminate(timeout=2.0)
                raise
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            rc = await proc.terminate(TERMINATE_TIMEOUT)
            if _test_failed(request):
                print(f"--- {proc!r} exited {rc}; argv {proc.argv}")
                print(f"--- stderr tail ({proc.stderr_path}):\n{proc.stderr_tail()}")


StartBackend = Callable[..., Awaitable[Backend]]


@pytest.fixture
async def backend(loopback_ip: Callable[[int], str]) -> AsyncIterator[StartBackend]:
    """Factory: `await backend(host=None, port=0, *, name="backend") -> Backend` (started).

    Without `host`, each backend gets the next address of this test's loopback block.
    All are closed at teardown.
    """
    started: list[Backend] = []

    async def start(host: str | None = None, port: int = 0, *, name: str = "backend") -> Backend:
        b = Backend(host or loopback_ip(len(started)), port, name=name)
        await b.start()
        started.append(b)
        return b

    try:
        yield start
    finally:
        for b in started:
            await b.close()


StartPods = Callable[..., Awaitable[PodSet]]


@pytest.fixture
async def pod_set(loopback_ip: Callable[[int], str]) -> AsyncIterator[StartPods]:
    """Factory: `await pod_set(count, *, prefix="httpd", port=0, base_ip=None) -> PodSet` (started).

    Pods sit on consecutive addresses from `base_ip` (default this test's `loopback_ip(0)`),
    all on one port. Stopped at teardown with a short grace.
    """
    started: list[PodSet] = []

    async def start(
        count: int, *, prefix: str = "httpd", port: int = 0, base_ip: str | None = None
    ) -> PodSet:
        pods = PodSet(count, prefix=prefix, port=port, base_ip=base_ip or loopback_ip(0))
        await pods.start()
        started.append(pods)
        return pods

    try:
        yield start
    finally:
        for pods in started:
            await pods.stop(grace=0.5)
