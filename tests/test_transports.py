"""Which transport a process gets (:mod:`methodpool._transport._platform`), and
that each one this system can run keeps its promises in a real pool.

The whole suite runs under each forced transport in its own session
(``nox -s tests_portable tests_windows``); these tests keep the transports
that are not this system's default covered by every run of the suite.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from methodpool._transport._platform import (
    ENVIRONMENT_VARIABLE,
    TRANSPORT,
    TRANSPORTS,
    ConnectionSelector,
    available,
    choose,
)

HERE = os.path.dirname(__file__)


def test_each_system_gets_its_own_default() -> None:
    if sys.platform == "win32":
        expected = "windows"
    elif sys.platform.startswith("linux"):
        expected = "linux"
    else:
        expected = "portable"
    assert available()[0] == expected
    assert "windows" in available()  # its Connection methods and wait() work everywhere
    assert choose(None).name == choose("").name == expected
    assert TRANSPORT.name == (os.environ.get(ENVIRONMENT_VARIABLE) or expected)


def test_a_transport_this_system_cannot_run_is_refused_by_name() -> None:
    with pytest.raises(ValueError) as info:
        choose("carrier-pigeon")
    message = str(info.value)
    assert message.startswith(f"{ENVIRONMENT_VARIABLE}='carrier-pigeon' is not a transport")
    for name in available():
        assert repr(name) in message
    assert f"leave it unset for {available()[0]!r}" in message


POOL_UNDER_TRANSPORT = textwrap.dedent(
    """
    import functools, json, multiprocessing, os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from faults import die_on, pid_of_worker, square
    from methodpool import MethodPool, WorkerLostError

    if __name__ == "__main__":
        ctx = multiprocessing.get_context(sys.argv[2])
        report = {}
        with MethodPool(2, context=ctx) as pool:
            workers = pool._dispatcher.ledger.workers.values()
            report["channels"] = sorted({type(w.channel).__name__ for w in workers})
            # An idle worker killed between calls: the next calls lose nothing.
            pids = set(pool.map(pid_of_worker, range(8), chunksize=1))
            victim = next(p for p in pool._pool if p.pid in pids)
            victim.kill()
            victim.join()
            report["after_idle_kill"] = all(
                pool.map(square, range(200), chunksize=1) == [x * x for x in range(200)]
                for _ in range(3)
            )
            # An idle worker that dies with tasks in its pipe (stopped, so that
            # it takes none, then killed): they go to the other, none fails.
            report["stopped_then_killed"] = "not run: no SIGSTOP here"
            if hasattr(signal, "SIGSTOP"):
                pids = set(pool.map(pid_of_worker, range(8), chunksize=1))
                victim = next(p for p in pool._pool if p.pid in pids)
                os.kill(victim.pid, signal.SIGSTOP)
                time.sleep(0.2)
                result = pool.map_async(square, range(200), chunksize=1)
                time.sleep(0.5)  # its share of the tasks reaches its pipe
                victim.kill()
                try:
                    report["stopped_then_killed"] = result.get(60) == [x * x for x in range(200)]
                except WorkerLostError as exc:
                    report["stopped_then_killed"] = str(exc)
            # A worker dying in a stream of tiny tasks fails only its own.
            lost, wrong = [], []
            results = pool.imap(functools.partial(die_on, victim=700, how="exit"), range(2000))
            for x in range(2000):
                try:
                    if next(results) != x * x:
                        wrong.append(x)
                except WorkerLostError:
                    lost.append(x)
            report["lost"], report["wrong"] = lost, wrong
        print(json.dumps(report))
    """
)

CHANNELS = {"linux": "LinuxChannel", "portable": "PortableChannel", "windows": "WindowsChannel"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(TRANSPORTS))
def test_a_pool_under_each_transport_loses_only_the_task_that_killed_its_worker(
    name: str, tmp_path: os.PathLike[str]
) -> None:
    if name not in available():
        pytest.skip(f"this system cannot run the {name!r} transport")
    script = os.path.join(tmp_path, "pool.py")
    with open(script, "w") as file:
        file.write(POOL_UNDER_TRANSPORT)
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    done = subprocess.run(
        [sys.executable, script, HERE, method],
        env={**os.environ, ENVIRONMENT_VARIABLE: name},
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {
        "channels": [CHANNELS[name]],
        "after_idle_kill": True,
        "stopped_then_killed": True if hasattr(signal, "SIGSTOP") else "not run: no SIGSTOP here",
        "lost": [700],
        "wrong": [],
    }


def ready(selector: selectors.BaseSelector, timeout: float | None) -> list[Any]:
    return sorted(key.data for key, _ in selector.select(timeout))


@pytest.mark.parametrize("group_size", [None, 2], ids=["one-wait", "in-groups"])
def test_a_connection_selector_finds_what_is_readable(group_size: int | None) -> None:
    # Windows before Python 3.13 waits on at most 63 objects at once: groups
    # of 2 stand for that here.
    pipes = [multiprocessing.Pipe(duplex=False) for _ in range(5)]
    try:
        selector = ConnectionSelector(group_size)
        for number, (reader, _) in enumerate(pipes):
            selector.register(reader, selectors.EVENT_READ, number)
        started = time.monotonic()
        assert ready(selector, 0.05) == []
        assert time.monotonic() - started >= 0.05
        pipes[4][1].send_bytes(b"in the last group")
        pipes[1][1].send_bytes(b"in the first")
        assert ready(selector, 5) == [1, 4]
        selector.unregister(pipes[1][0])
        assert ready(selector, None) == [4]
        assert set(selector.get_map()) == {reader for reader, _ in pipes} - {pipes[1][0]}
    finally:
        for reader, writer in pipes:
            reader.close()
            writer.close()
