"""The conductor on a virtual clock: on the grid with no drift, tempo changes without a jump, late steps."""

import random
import threading
import time

import pytest

from improviser.live.clock import Conductor, VirtualClock


def run_conductor(n_steps, step, clock, produce=lambda k: k, on_late=None, during=None, lookahead=2):
    """Runs a conductor for n_steps; returns {step: clock time it was performed} and the conductor."""
    performed = {}

    def perform(k, payload, t):
        performed[k] = t
        if during:
            during(conductor, k)

    conductor = Conductor(step, produce, lambda k, item: item, perform, clock=clock,
                          lookahead=lookahead, on_late=on_late)
    conductor.run(n_steps, start=1.0)
    conductor.close()
    return performed, conductor


def test_no_drift_over_many_steps_with_sleeps_that_wake_late():
    # Every sleep wakes up to 0.8 ms late: chained sleeps would drift by seconds over 10000 steps.
    rng = random.Random(0)
    clock = VirtualClock(tick=1e-5, overshoot=lambda s: rng.uniform(0, 0.0008))
    step = 0.125
    performed, conductor = run_conductor(10_000, step, clock)
    assert len(performed) == 10_000 and conductor.stats.late_steps == 0
    errors = [t - (1.0 + k * step) for k, t in performed.items()]
    assert min(errors) >= 0  # never early
    assert max(errors) < 50e-6  # within a few reads of the clock (each moves it 10 us) of the deadline
    assert abs(errors[-1] - errors[0]) < 50e-6  # the last step is as close to the grid as the first


def test_tempo_change_takes_effect_without_a_jump():
    clock = VirtualClock()
    old, new = 0.125, 0.1

    def change(conductor, k):
        if k == 99:
            conductor.set_step_seconds(new)

    performed, _ = run_conductor(200, old, clock, during=change)
    times = [performed[k] for k in range(200)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Steps 0..100 keep the old spacing (step 100 keeps the deadline it had), then the new spacing.
    assert all(g == pytest.approx(old, abs=20e-6) for g in gaps[:100])
    assert all(g == pytest.approx(new, abs=20e-6) for g in gaps[100:])
    assert times[100] == pytest.approx(1.0 + 100 * old, abs=20e-6)
    assert times[199] == pytest.approx(1.0 + 100 * old + 99 * new, abs=20e-6)


def test_a_late_model_skips_its_step_counts_it_and_keeps_the_grid():
    release = threading.Event()

    def produce(k):
        if k == 5:
            assert release.wait(5), "the late step was never reported"
        return k

    late = []

    def on_late(k):
        late.append(k)
        release.set()  # the model "finishes" only once the sender has given up on step 5

    step = 0.5
    performed, conductor = run_conductor(12, step, VirtualClock(), produce=produce, on_late=on_late)
    assert late == [5] and conductor.stats.late_steps == 1 and list(conductor.stats.late_indices) == [5]
    assert sorted(performed) == [k for k in range(12) if k != 5]
    for k, t in performed.items():  # the steps after the skipped one are still on the grid
        assert t == pytest.approx(1.0 + k * step, abs=20e-6)


def test_stop_from_another_thread_ends_the_run_promptly():
    def during(conductor, k):
        if k == 10:
            conductor.stop()

    performed, conductor = run_conductor(None, 0.125, VirtualClock(), during=during)
    assert sorted(performed) == list(range(11))
    assert conductor.stats.played == 11


def test_a_failing_model_stops_the_run_with_its_error():
    def produce(k):
        if k == 3:
            raise RuntimeError("model exploded")
        return k

    with pytest.raises(RuntimeError, match="model exploded"):
        run_conductor(10, 0.125, VirtualClock(), produce=produce)


def test_stop_is_noticed_while_waiting_for_a_slow_model():
    # At a slow tempo the sender may wait a long time for the model; a stop must not wait with it.
    stuck = threading.Event()

    def produce(k):
        if k == 3:
            stuck.wait(30)
        return k

    conductor = Conductor(20.0, produce, lambda k, item: item, lambda k, payload, t: None, clock=VirtualClock())
    threading.Timer(0.2, conductor.stop).start()
    t = time.monotonic()
    stats = conductor.run(10, start=1.0)
    stuck.set()
    conductor.close()
    assert time.monotonic() - t < 5  # not the 20 s the step lasts
    assert stats.played == 3 and stats.late_steps == 0  # stopping is not the model being late


def test_virtual_clock_events_at_the_same_moment_run_in_the_order_they_were_scheduled():
    clock = VirtualClock()
    seen = []
    for name in ("note_off", "note_on", "clock"):
        clock.at(1.0, lambda name=name: seen.append((name, clock.now())))  # each reads the clock, as a listener does
    clock.at(0.5, lambda: seen.append(("early", clock.now())))
    clock.sleep(2.0)
    assert [n for n, _ in seen] == ["early", "note_off", "note_on", "clock"]
    assert all(t >= 1.0 for n, t in seen if n != "early")
