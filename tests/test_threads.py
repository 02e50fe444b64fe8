"""Threads sized to the cores free now: processes that keep every usable core busy leave one thread, a count the
user named (OMP_NUM_THREADS) stays, and a sized function gives its caller torch's threads back as they were."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from headstart._threads import free_cores, restores_torch_threads, size_torch_threads, usable_cores


def test_cores_kept_busy_by_other_processes_are_not_free() -> None:
    cores = usable_cores()
    assert 1 <= free_cores() <= cores
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.3)
        assert free_cores(0.2) == 1, "every usable core busy: one thread"
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_a_thread_count_the_user_named_stays_and_the_caller_gets_its_threads_back(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()

    @restores_torch_threads
    def sized() -> int:
        return size_torch_threads()

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert sized() == 1 and torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(before)
    assert 1 <= sized() <= usable_cores()
    assert torch.get_num_threads() == before, "put back"
