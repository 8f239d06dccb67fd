"""Interleaved timer on a fake clock: call order A B A B ..., exact per-call times, percentiles; ratios; noise guard."""

import subprocess
import sys

import numpy as np
import pytest

from lungedge.benchmarks import latency as L


class FakeClock:
    """A clock that only moves when a timed callable advances it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def test_order_is_interleaved_and_warmup_is_not_recorded():
    calls = []
    fns = {"A": lambda: calls.append("A"), "B": lambda: calls.append("B"), "C": lambda: calls.append("C")}
    out = L.interleaved(fns, rounds=4, warmup=2, clock=FakeClock())
    assert calls == ["A", "B", "C"] * (2 + 4)
    assert all(len(v["seconds"]) == 4 for v in out.values())
    assert list(out) == ["A", "B", "C"]


def test_times_and_percentiles_on_a_fake_clock():
    clock = FakeClock()
    a_times = iter(np.arange(1, 101) / 1000.0)  # 1..100 ms
    b_times = iter(np.full(100, 0.004))  # 4 ms flat

    out = L.interleaved({"A": lambda: clock.advance(next(a_times)), "B": lambda: clock.advance(next(b_times))},
                        rounds=100, warmup=0, clock=clock)
    assert out["A"]["seconds"] == pytest.approx(list(np.arange(1, 101) / 1000.0))
    s = L.summarize_times(out["A"]["seconds"])
    # numpy's linear interpolation on 1..100: p50 = 50.5, p90 = 90.1, p99 = 99.01
    assert (s["p50_ms"], s["p90_ms"], s["p99_ms"]) == pytest.approx((50.5, 90.1, 99.01))
    assert s["min_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(100.0)
    assert s["mean_ms"] == pytest.approx(50.5) and s["n"] == 100
    assert s["throughput_ips"] == pytest.approx(1000.0 / 50.5)
    b = L.summarize_times(out["B"]["seconds"], batch=8)
    assert b["p99_ms"] == pytest.approx(4.0) and b["throughput_ips"] == pytest.approx(2000.0)


def test_stages_returned_by_a_callable_are_recorded():
    clock = FakeClock()

    def pipeline():
        clock.advance(0.003)
        return {"preprocess": 0.001, "model": 0.0015, "postprocess": 0.0005}

    out = L.interleaved({"P": pipeline}, rounds=3, warmup=1, clock=clock)
    assert out["P"]["stages"]["model"] == [0.0015] * 3
    assert out["P"]["seconds"] == pytest.approx([0.003] * 3)


def test_settle_pause_is_not_timed():
    clock, pauses = FakeClock(), []

    def sleep(s):
        pauses.append(s)
        clock.advance(s)

    out = L.interleaved({"A": lambda: clock.advance(0.002), "B": lambda: clock.advance(0.001)}, rounds=3, warmup=0,
                        clock=clock, settle_s=0.05, sleep=sleep)
    assert out["A"]["seconds"] == pytest.approx([0.002] * 3) and out["B"]["seconds"] == pytest.approx([0.001] * 3)
    assert pauses == [0.05] * 6


def test_time_budget_stops_after_min_rounds():
    clock = FakeClock()
    out = L.interleaved({"A": lambda: clock.advance(1.0)}, rounds=100, warmup=0, clock=clock, max_seconds=2.5,
                        min_rounds=5)
    assert len(out["A"]["seconds"]) == 5


def test_ratio_of_medians_and_spread():
    r = L.ratio_of_medians([0.010] * 30, [0.002] * 30)
    assert r["ratio"] == pytest.approx(5.0) and r["low"] == pytest.approx(5.0) and r["high"] == pytest.approx(5.0)
    rng = np.random.default_rng(0)
    base = 0.010 + rng.normal(0, 0.001, 200)
    var = 0.002 + rng.normal(0, 0.0002, 200)
    r = L.ratio_of_medians(base, var)
    assert r["low"] < r["ratio"] < r["high"]
    assert 4.5 < r["low"] and r["high"] < 5.5
    assert r["iqr"][0] < r["ratio"] < r["iqr"][1]


def test_proc_stat_parsing():
    text = ("cpu  4705 356 584 3699 23 0 23 0 0 0\ncpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0\n"
            "intr 1 2 3\n")
    busy, total = L.parse_proc_stat(text)
    assert busy == 4705 + 356 + 584 + 0 + 23 + 0
    assert total == busy + 3699 + 23
    # restricted to the CPUs this process may use (cpu0 only here)
    assert L.parse_proc_stat(text, cpus=[0]) == (1393280 + 32966 + 572056 + 17875, 1393280 + 32966 + 572056 + 17875
                                                  + 13343292 + 6130)
    assert L.parse_proc_stat(text, cpus=[7]) == (busy, total)  # unknown CPUs: the aggregate line
    with pytest.raises(ValueError):
        L.parse_proc_stat("intr 1 2 3\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_guard_sees_another_process_burning_cpu():
    with L.CpuLoadGuard(threshold=0.005) as guard:  # 0.6 CPU-seconds is a small share of a many-core machine
        subprocess.run([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<0.6: pass"], check=True)
    r = guard.result()
    assert r["foreign_cpu_s"] >= 0.25  # the child's CPU time is not this process's
    assert r["noisy"] is True
    assert len(r["loadavg_before"]) == 3 and r["cpus"] >= 1
