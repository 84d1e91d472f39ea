"""Suite-wide settings: offline hub, and which test modules count as numeric.

`numeric` tests compare floating-point results; `make test-simd` (and `.ci/run`) re-runs them
under every lower SIMD level of the machine (tests/simd.py), so a test that only passes at
one SIMD level fails wherever the suite runs.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NUMERIC_MODULES = {
    "test_causal",
    "test_causal_stage",
    "test_collect",
    "test_crash_safety",
    "test_gpt2_preset",
    "test_lineage",
    "test_lineage_prompt",
    "test_lineage_units",
    "test_models",
    "test_portability",
    "test_saes",
    "test_stats",
    "test_stats_stage",
    "test_store",
    "test_train",
    "test_web_prompt",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__ in NUMERIC_MODULES:
            item.add_marker(pytest.mark.numeric)


class NetworkBlocked(RuntimeError):
    """A test under `no_network` tried to reach the network (not an OSError, so no library retries or falls back)."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch):
    """Fail the test on any attempt to reach a host: DNS lookups and non-local socket connects raise
    NetworkBlocked naming the host, and attempts a library swallowed fail the test at teardown.
    Yields the list of attempts: a test that provokes one on purpose clears it."""
    import socket

    attempts: list[str] = []

    def refuse(what: str, host: object):
        attempts.append(f"{what} {host!r}")
        raise NetworkBlocked(f"test tried to reach the network: {what} {host!r}")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(sock, address):
        if sock.family == socket.AF_UNIX:  # local IPC, not the network
            return real_connect(sock, address)
        refuse("connect", address)

    def connect_ex(sock, address):
        if sock.family == socket.AF_UNIX:
            return real_connect_ex(sock, address)
        refuse("connect_ex", address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse("create_connection", address))
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: refuse("getaddrinfo", host))
    yield attempts
    assert not attempts, f"network attempts during the test: {attempts}"
