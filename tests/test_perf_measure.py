"""perfkit.measure: units, statistics and verdicts, the call timer, calibration, memory."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc

import pytest

from perfkit.measure import (
    BenchSettings,
    CallTimer,
    HeapTracer,
    Margins,
    RssHighWater,
    Stats,
    Verdict,
    abenchmark,
    benchmark,
    calibrate,
    format_duration,
    format_size,
    judge,
    parse_duration,
    parse_size,
)
from perfkit.measure.calibrate import MIN_FACTOR, MachineSpeed, alu_workload, normalise, sample_alu
from perfkit.measure.runs import TimedRuns
from perfkit.measure.timing import Timing
from pytest_perfkit.verdicts import MAX_NOISE_BAND, timed_result


@pytest.mark.parametrize(("text", "seconds"), [
    (0.05, 0.05), (2, 2.0), ("50ms", 0.05), ("50 ms", 0.05), ("1.5s", 1.5), ("200us", 2e-4),
    ("200µs", 2e-4), ("10ns", 1e-8), ("2min", 120.0), ("0.25", 0.25), ("1e-3s", 1e-3),
])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("value", "message"), [
    (-1, "latency: must be a finite number >= 0"),
    (float("nan"), "latency: must be a finite number >= 0"),
    (True, "latency: expected a number"),
    ("5 parsecs", "latency: unknown duration unit 'parsecs'"),
    ("fast", "latency: cannot read 'fast'"),
    ([1], "latency: expected seconds"),
])
def test_parse_duration_errors_name_the_parameter(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(value, "latency")


@pytest.mark.parametrize(("text", "size"), [
    (1024, 1024), ("20MB", 20_000_000), ("20MiB", 20 * 2**20), ("512KiB", 512 * 1024),
    ("1.5GB", 1_500_000_000), ("64M", 64 * 2**20), ("10 kb", 10_000), ("7B", 7),
])
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_errors() -> None:
    with pytest.raises(ValueError, match="memory: unknown size unit 'MiBs'"):
        parse_size("3MiBs", "memory")
    with pytest.raises(ValueError, match="memory: must be a finite number >= 0"):
        parse_size(-5, "memory")
    for huge in ("1e999MB", "1e999", "1e308GB"):  # overflowed to infinity (int() raised)
        with pytest.raises(ValueError, match="memory: must be a finite number >= 0"):
            parse_size(huge, "memory")


def test_parse_duration_refuses_an_overflow_to_infinity() -> None:
    for huge in ("1e999", "1e999ms", "1e308min"):
        with pytest.raises(ValueError, match="latency: must be a finite number >= 0"):
            parse_duration(huge, "latency")


def test_formatting() -> None:
    assert format_duration(0.0123) == "12.3ms"
    assert format_duration(1.5) == "1.50s"
    assert format_duration(2.5e-5) == "25us"
    assert format_size(1536) == "1.5KiB"
    assert format_size(3 * 2**20) == "3.0MiB"


def test_stats_and_spread() -> None:
    stats = Stats.of([3.0, 1.0, 2.0, 10.0])
    assert (stats.n, stats.min, stats.median, stats.max) == (4, 1.0, 2.5, 10.0)
    assert stats.p95 == pytest.approx(8.95)
    assert stats.spread == pytest.approx(7.95)
    assert Stats.of([5.0]).spread == 0.0
    with pytest.raises(ValueError, match="samples"):
        Stats.of([])


def test_three_verdicts_with_relative_and_absolute_margins() -> None:
    margins = Margins(relative=0.10, absolute=0.001)
    assert margins.limit(0.050) == pytest.approx(0.056)
    assert judge(0.050, 0.050, margins) is Verdict.OK
    assert judge(0.055, 0.050, margins) is Verdict.WITHIN_NOISE
    assert judge(0.0561, 0.050, margins) is Verdict.OVER_BUDGET
    with pytest.raises(ValueError, match="relative"):
        Margins(relative=-0.1)
    with pytest.raises(ValueError, match="absolute"):
        Margins(absolute=float("inf"))


def test_call_timer_takes_gc_pauses_out_of_the_window() -> None:
    with CallTimer() as timer:
        garbage = [[] for _ in range(50_000)]
        for item in garbage:
            item.append(item)  # reference cycles
        del garbage
        gc.collect()
    timing = timer.timing
    assert timing.gc_pause > 0
    assert timing.wall >= 0 and timing.cpu >= 0
    assert timer._on_gc not in gc.callbacks


def test_call_timer_excludes_instrumentation_time() -> None:
    with CallTimer(collect=False) as timer:
        timer.exclude(1000.0)
    assert timer.timing.wall == 0.0 and timer.timing.excluded == 1000.0


class _Clock:
    """A fake cumulative counter the test advances by hand."""

    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> float:
        return self.value


def test_call_timer_removes_cpu_waits_only_from_runs_that_never_blocked() -> None:
    waits, switches = _Clock(), _Clock()

    def timed(wait: float, blocked: bool) -> object:
        timer = CallTimer(collect=False, wait_clock=waits, switches=switches)
        with timer:
            end = time.perf_counter() + 0.02
            while time.perf_counter() < end:
                pass
            waits.value += wait
            switches.value += blocked
        return timer.timing

    timing = timed(0.015, blocked=False)
    assert timing.cpu_wait_known and not timing.blocked
    assert timing.own == pytest.approx(min(timing.wall, max(timing.wall - 0.015, timing.cpu)))
    # A counter claiming the whole window is never believed below the CPU time used.
    timing = timed(10.0, blocked=False)
    assert timing.cpu_wait < 1.0  # clamped to the window
    # own is the CPU time, within the window (the CPU clock may read a hair above wall)
    assert timing.own == pytest.approx(min(timing.wall, timing.cpu))
    # The thread slept or waited on I/O: the counter could hide a slower wait; not used.
    timing = timed(0.015, blocked=True)
    assert timing.blocked and timing.own == timing.wall
    # No counter on this platform: plain wall time.
    timer = CallTimer(collect=False, wait_clock=None, switches=None)
    with timer:
        pass
    assert not timer.timing.cpu_wait_known and timer.timing.own == timer.timing.wall


def test_a_cpu_wait_inside_a_gc_pause_is_taken_out_once() -> None:
    # The pause is already out of the wall time; its run-queue wait used to be subtracted
    # again as cpu_wait, so a run slowed by both looked faster than it ran.
    waits, switches = _Clock(), _Clock()

    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    timer = CallTimer(collect=False, wait_clock=waits, switches=switches)
    with timer:
        spin(0.01)
        timer._on_gc("start", {"generation": 2})
        spin(0.02)
        waits.value += 0.015  # waited for a CPU during the collection
        timer._on_gc("stop", {"generation": 2})
        spin(0.01)
        waits.value += 0.004  # and outside it
    timing = timer.timing
    assert timing.gc_pause >= 0.02
    assert timing.cpu_wait == pytest.approx(0.004)


def test_normalise_scales_only_the_cpu_part() -> None:
    assert normalise(own=0.030, cpu=0.030, factor=1.5) == pytest.approx(0.020)
    # 20 ms asleep stays 20 ms: only CPU work runs faster or slower with the machine.
    assert normalise(own=0.030, cpu=0.010, factor=2.0) == pytest.approx(0.025)
    with pytest.raises(ValueError, match="factor"):
        normalise(own=1.0, cpu=1.0, factor=0)


class _Speed(MachineSpeed):
    """A MachineSpeed whose samples are scripted (seconds of the reference workload)."""

    def __init__(self, typical: float, samples: list[float]) -> None:
        super().__init__(runs=5)
        for _ in range(self.runs):
            self._record(typical)
        self._scripted = list(samples)

    def sample(self) -> float:
        seconds = self._scripted.pop(0)
        self._record(seconds)
        return seconds


def _cpu_timing(seconds: float) -> Timing:
    return Timing(wall=seconds, cpu=seconds, cpu_wait_known=True)


def test_timed_runs_against_the_session_or_against_a_fixed_reference() -> None:
    # The session started slow (typical reference 3.2 ms), then the machine ran at full
    # speed (1.6 ms) for the test's runs.
    def runs_with(reference: float | None) -> TimedRuns:
        runs = TimedRuns(lambda t: t.own, _Speed(0.0032, [0.0016, 0.0016]),
                         reference=reference)
        runs.add(_cpu_timing(0.030))
        runs.check_speed()
        runs.add(_cpu_timing(0.030))
        runs.check_speed()
        return runs

    # Against the session's typical time the fast moment is clamped at MIN_FACTOR...
    assert runs_with(None).factors() == [MIN_FACTOR, MIN_FACTOR]
    # ...against the reference machine's 1.6 ms the runs are at its speed: 30 ms stays 30.
    fixed = runs_with(0.0016)
    assert fixed.factors() == pytest.approx([1.0, 1.0])
    assert fixed.samples("latency") == pytest.approx([0.030, 0.030])
    # No sample beside the runs yet: the session's typical time stands in (x2 here).
    early = TimedRuns(lambda t: t.own, _Speed(0.0032, []), reference=0.0016)
    early.add(_cpu_timing(0.030))
    assert early.factors() == pytest.approx([2.0]) and early.statistic("latency") == \
        pytest.approx(0.015)
    # Without the speed check every factor is 1, with or without a reference.
    off = TimedRuns(lambda t: t.own, None, reference=0.0016)
    off.add(_cpu_timing(0.030))
    assert off.factors() == [1.0]


def test_in_reference_machine_time_only_slowness_both_references_see_is_excused() -> None:
    # A moment where the mixed reference ran 2.1x its reference-machine time while the
    # arithmetic one ran 1.75x (the loop beside it): the run is divided by 1.75, not 2.1.
    # Then a moment where the arithmetic reference read slower than the mixed one: the
    # mixed one decides (a second reference never excuses more than the first).
    alu_samples = [0.00175, 0.00175, 0.0020]
    runs = TimedRuns(lambda t: t.own, _Speed(0.0016, [0.0021, 0.0010]),
                     reference=0.001, alu_reference=0.001, alu=lambda: alu_samples.pop(0))
    runs.lead(0.0021, alu_samples.pop(0))
    runs.add(_cpu_timing(0.035))
    runs.check_speed()
    runs.add(_cpu_timing(0.020))
    runs.check_speed()
    assert runs.reference_factors() == pytest.approx([2.1, 1.55])
    assert runs.factors() == pytest.approx([1.75, 1.55])  # 1.55 < (1.75 + 2.0) / 2
    assert runs.samples("latency") == pytest.approx([0.020, 0.020 / 1.55])
    assert len(runs.alu_references) == len(runs.references) == 3
    summary = runs.summary(cpu_wait_excluded=True)
    assert summary["factors"] == pytest.approx([1.75, 1.55])
    assert summary["reference_factors"] == pytest.approx([2.1, 1.55])
    assert summary["alu_factors"] == pytest.approx([1.75, 1.875])
    # Without the arithmetic reference the same samples excuse the first run by 2.1.
    alone = TimedRuns(lambda t: t.own, _Speed(0.0016, [0.0021]), reference=0.001)
    alone.lead(0.0021)
    alone.add(_cpu_timing(0.035))
    alone.check_speed()
    assert alone.factors() == pytest.approx([2.1]) and alone.alu_factors() == []


def test_the_statistic_at_the_sessions_typical_speed() -> None:
    # The session typically runs the reference in 1.6 ms (factor 1.0 against a 1.6 ms
    # reference machine); the run's own moment read 1.4x slower. Divided by its moment
    # the run looks 1.4x faster; at the typical speed it is as measured. The plugin asks
    # for confirm runs when either is near the budget.
    runs = TimedRuns(lambda t: t.own, _Speed(0.0016, [0.00224]), reference=0.0016)
    runs.add(_cpu_timing(0.028))
    runs.check_speed()
    assert runs.typical_factor() == pytest.approx(1.0)
    assert runs.statistic("latency") == pytest.approx(0.020)
    assert runs.statistic_at_typical("latency") == pytest.approx(0.028)
    assert runs.statistic_at_typical("cpu") == pytest.approx(0.028)
    # A session that typically runs 2x slower than the reference machine: divided by 2.
    slow = TimedRuns(lambda t: t.own, _Speed(0.0032, [0.0032]), reference=0.0016)
    slow.add(_cpu_timing(0.028))
    assert slow.statistic_at_typical("latency") == pytest.approx(0.014)
    # Seconds mode (no reference machine) and no speed check: the times as measured.
    seconds = TimedRuns(lambda t: t.own, _Speed(0.0032, [0.0048]))
    seconds.add(_cpu_timing(0.028))
    seconds.check_speed()
    assert seconds.typical_factor() == 1.0
    assert seconds.statistic_at_typical("latency") == pytest.approx(0.028)
    assert seconds.statistic("latency") < 0.028


def test_a_run_after_a_pause_is_judged_beside_its_own_samples_only() -> None:
    # Two back-to-back runs at a moment the reference read 2x; then a pause and a run at a
    # moment it read 1x. The spaced run is divided by the samples right before and right
    # after it (1.0, 1.0), never by the 2x sample taken before the pause.
    slept: list[float] = []
    runs = TimedRuns(lambda t: t.own, _Speed(0.0016, [0.0032, 0.0032, 0.0016, 0.0016]),
                     reference=0.0016, sleep=slept.append)
    runs.lead(0.0032)
    runs.add(_cpu_timing(0.040))
    runs.check_speed()
    runs.add(_cpu_timing(0.040))
    runs.check_speed()
    runs.pause(0.5)
    assert slept == [0.5]
    runs.add(_cpu_timing(0.020))
    assert not runs.sampled_after_last()
    assert runs.factors() == pytest.approx([2.0, 2.0, 1.0])  # only the sample before it yet
    runs.check_speed()
    assert runs.sampled_after_last()
    assert runs.factors() == pytest.approx([2.0, 2.0, 1.0])
    assert runs.samples("latency") == pytest.approx([0.020, 0.020, 0.020])
    summary = runs.summary(cpu_wait_excluded=True)
    assert summary["pauses"] == [0.5] and summary["reference_runs"] == 5
    # Without the pause the same third run would have been averaged with the 2x sample.
    plain = TimedRuns(lambda t: t.own, _Speed(0.0016, [0.0032, 0.0016]), reference=0.0016)
    plain.lead(0.0032)
    plain.add(_cpu_timing(0.040))
    plain.check_speed()
    plain.add(_cpu_timing(0.020))
    plain.check_speed()
    assert plain.factors() == pytest.approx([2.0, 1.5])
    # Without the speed check a pause only waits; a zero pause does not sleep at all.
    off = TimedRuns(lambda t: t.own, None, sleep=slept.append)
    off.add(_cpu_timing(0.010))
    off.pause(0)
    off.add(_cpu_timing(0.010))
    assert slept == [0.5] and off.references == [] and off.factors() == [1.0, 1.0]
    with pytest.raises(ValueError, match="seconds"):
        off.pause(-1)


def test_runs_report_when_they_started() -> None:
    runs = TimedRuns(lambda t: t.own, None)
    for seconds in (0.0, 0.02):
        timer = CallTimer(collect=False)
        with timer:
            time.sleep(seconds)
        runs.add(timer.timing)
    offsets = runs.summary(cpu_wait_excluded=True)["offsets"]
    assert offsets[0] == 0.0 and offsets[1] > 0.0
    assert offsets[1] >= runs.timings[0].wall


def test_the_arithmetic_reference_needs_a_fixed_reference_and_a_sample_beside_the_lead(
) -> None:
    with pytest.raises(ValueError, match="alu_reference"):
        TimedRuns(lambda t: t.own, _Speed(0.0016, []), alu_reference=0.001)
    runs = TimedRuns(lambda t: t.own, _Speed(0.0016, []), reference=0.001,
                     alu_reference=0.001)
    with pytest.raises(ValueError, match="alu sample"):
        runs.lead(0.0016)
    plain = TimedRuns(lambda t: t.own, _Speed(0.0016, []), reference=0.001)
    with pytest.raises(ValueError, match="alu sample"):
        plain.lead(0.0016, 0.001)


def test_the_arithmetic_reference_is_short_and_deterministic() -> None:
    assert alu_workload() == alu_workload()
    assert 0 < sample_alu() < 0.05  # ~1 ms here; wide: a shared machine


def test_machine_speed_factor_against_its_typical_time() -> None:
    speed = MachineSpeed(runs=3)
    typical = speed.typical()
    assert speed.count == 3 and typical > 0
    assert speed.factor(typical * 3) == pytest.approx(3.0)
    assert speed.factor(typical / 100) == MIN_FACTOR  # a lucky run cannot inflate a test
    assert speed.sample() > 0 and speed.count == 4
    bounded = MachineSpeed(runs=2, window=3)
    for _ in range(5):
        bounded.sample()
    assert bounded.count == 3


def test_a_3x_slowdown_of_a_2x_budget_always_fails_however_noisy() -> None:
    margins = Margins(0.10, 0.001)
    budget = 0.020  # 2x a 10 ms typical time
    steady = [0.030, 0.030, 0.031, 0.030]
    wild = [0.012, 0.030, 0.031, 0.090]  # runs disagree: the band widens, up to its cap
    for samples in (steady, wild):
        assert timed_result("latency", samples, budget, margins, scale=1.0).verdict == \
            Verdict.OVER_BUDGET.value
    unchanged = [0.011, 0.010, 0.025, 0.010]
    assert timed_result("latency", unchanged, budget, margins, scale=1.0).verdict == "ok"
    # Just over a tight margin, but the runs disagree by more: "within noise", honestly.
    noisy = [0.016, 0.0225, 0.0225, 0.030]
    result = timed_result("latency", noisy, budget, margins, scale=1.0)
    assert result.verdict == Verdict.WITHIN_NOISE.value and "noise band" in result.detail
    headroom = 1.5 - 1 - margins.absolute / budget  # 3x of a 2x budget, less the margin
    assert headroom > MAX_NOISE_BAND


def test_the_noise_band_follows_the_uncertainty_of_the_median_not_of_single_runs() -> None:
    margins = Margins(0.10, 0.001)
    budget = 0.020
    # Eight runs of a 3x slowdown whose per-run times the machine scattered: median 1.22x
    # the budget. Half their relative range (37%) would cap the band at 25% and call it
    # "within noise"; the median of eight is known to about 13%: over budget.
    scattered = [0.018, 0.020, 0.024, 0.0245, 0.0245, 0.025, 0.030, 0.036]
    result = timed_result("latency", scattered, budget, margins, scale=1.0)
    assert result.verdict == Verdict.OVER_BUDGET.value
    assert "noise band 13%" in result.detail
    # The same scatter in two runs says little about the median: the band stays wide.
    pair = [0.016, 0.034]
    assert timed_result("latency", pair, budget, margins, scale=1.0).verdict == \
        Verdict.WITHIN_NOISE.value
    # Agreeing runs keep the configured margin.
    steady = [0.0222, 0.0222, 0.0223]
    result = timed_result("latency", steady, budget, margins, scale=1.0)
    assert result.verdict == Verdict.WITHIN_NOISE.value and "noise band 10%" in result.detail


def test_the_machine_can_excuse_an_overrun_but_not_hide_a_slowdown() -> None:
    margins = Margins(0.10, 0.001)
    budget = 0.020
    measured = [0.030, 0.031, 0.030, 0.032]
    # The reference ran 2x slow beside these runs: at typical speed 15 ms, within budget.
    excused = timed_result("latency", [m / 2 for m in measured], budget, margins, scale=1.0,
                           raw=measured, factor=2.0)
    assert excused.verdict == Verdict.WITHIN_NOISE.value and "x2.00" in excused.detail
    # The reference read 1.4x slow, but 3x code is still over at typical speed: fails.
    slowed = timed_result("latency", [m / 1.4 for m in measured], budget, margins, scale=1.0,
                          raw=measured, factor=1.4)
    assert slowed.verdict == Verdict.OVER_BUDGET.value
    # Over at typical speed but the measurement itself only marginally over: within noise.
    marginal = [0.0215, 0.0215, 0.0215]
    result = timed_result("latency", [m * 1.2 for m in marginal], budget, margins, scale=1.0,
                          raw=marginal, factor=0.83)
    assert result.verdict == Verdict.WITHIN_NOISE.value


def test_calibration_is_a_positive_factor() -> None:
    result = calibrate(runs=3)
    assert result.seconds > 0 and result.factor > 0 and result.runs == 3
    assert len(result.samples) == 3
    assert result.describe().startswith("x")
    with pytest.raises(ValueError, match="runs"):
        calibrate(runs=0)


def _allocate() -> int:
    blocks = [bytearray(100_000) for _ in range(40)]  # the allocation site
    return len(blocks)


def test_heap_tracer_reports_peak_and_the_site_alive_at_the_peak() -> None:
    with HeapTracer() as tracer:
        _allocate()  # freed before the block ends: only the peak remembers it
    assert tracer.result.peak >= 4_000_000
    top = tracer.result.sites[0]
    assert top.file == __file__ and "bytearray(100_000)" in top.source()
    assert not tracemalloc.is_tracing()


def test_heap_tracer_leaves_someone_elses_tracing_running() -> None:
    tracemalloc.start()
    try:
        with HeapTracer(sites=False) as tracer:
            data = bytearray(2_000_000)
            del data
        assert tracer.result.peak >= 2_000_000 and tracer.result.sites == []
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("sampler", [False, True])
def test_rss_high_water(sampler: bool) -> None:
    with RssHighWater(sampler=sampler) as rss:
        block = bytearray(48 * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])
        if sampler:
            import time

            time.sleep(0.02)  # let the sampling thread see it
        del block
    assert rss.method == ("sampled" if sampler else "vmhwm")
    assert rss.peak >= 24 * 2**20
    with pytest.raises(ValueError, match="interval"):
        RssHighWater(interval=0)


def test_benchmark_runs_bounded_rounds() -> None:
    calls = []
    result = benchmark(lambda x: calls.append(x) or x * 2, 21,
                       settings=BenchSettings(min_rounds=3, max_rounds=4, max_time=0.01))
    assert result.value == 42 and 3 <= result.rounds <= 4
    assert len(calls) == 1 + result.rounds * result.loops  # warm-up + measured calls
    assert result.stats.min <= result.stats.median
    with pytest.raises(ValueError, match="min_rounds"):
        BenchSettings(min_rounds=0)
    with pytest.raises(ValueError, match="max_time"):
        BenchSettings(max_time=0)


async def test_abenchmark_awaits_the_callable() -> None:
    async def work() -> str:
        await asyncio.sleep(0)
        return "done"

    result = await abenchmark(work, settings=BenchSettings(max_time=0.01))
    assert result.value == "done" and result.rounds >= 5
    with pytest.raises(TypeError, match="abenchmark"):
        benchmark(work)


def _busy_helper() -> int:
    return sum(i * i for i in range(20_000))


def test_profile_call_keeps_top_functions_marks_user_code_and_survives_errors() -> None:
    import sys

    from perfkit.measure.profile import profile_call

    result = profile_call(_busy_helper, top=3)
    assert not result.error and result.seconds > 0
    assert len(result.by_own) <= 3 and len(result.by_cumulative) <= 3
    helper = next(e for e in result.by_cumulative if e.function == "_busy_helper")
    assert helper.user and helper.calls == 1 and helper.location.endswith(
        f"test_perf_measure.py:{_busy_helper.__code__.co_firstlineno}")
    assert "<- test code" in "\n".join(result.lines())

    def failing() -> None:
        _busy_helper()
        raise ValueError("boom")

    failed = profile_call(failing)
    assert failed.error == "ValueError: boom"  # not raised; the profile up to it is kept
    assert any(e.function == "_busy_helper" for e in failed.by_cumulative)

    sys.setprofile(lambda *args: None)  # another profiler: never replaced behind its back
    try:
        refused = profile_call(_busy_helper)
    finally:
        sys.setprofile(None)
    assert refused.error.startswith("another profiler is active") and not refused.by_own
    assert refused.lines() == [f"profile: not taken ({refused.error})"]
