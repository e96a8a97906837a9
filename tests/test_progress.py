"""The progress line's ETA (raysweep.callbacks.progress, eta_seconds) on a constructed run shaped like the
quickstart: 3 fused bundles of 8 members, 300 steps reported every 50, 2 at a time after Ray's start-up; each
bundle lands its 2 diverged members at its first report and the other 6 rows together at its end."""

from __future__ import annotations

import pytest

from raysweep.callbacks import eta_seconds, progress

STEPS, MEMBERS, N_TOTAL = 300, 8, 24
RAY_START, TRIAL_START, COMPUTE = 10.0, 3.0, 30.0  # seconds
# bundle -> when its trial starts: two at once after Ray's start-up, the third when the first ends
STARTS = [RAY_START, RAY_START, RAY_START + TRIAL_START + COMPUTE]
END = STARTS[2] + TRIAL_START + COMPUTE


def _state(t: float):
    """(rows landed, running trials as (step of the last report, members running, steps)) at time ``t``."""
    landed, running = 0, []
    for start in STARTS:
        if t < start:
            continue
        computed = max(0.0, t - start - TRIAL_START)
        step = min(STEPS, int(computed / COMPUTE * STEPS) // 50 * 50)  # the last report's step
        if step >= STEPS:
            landed += MEMBERS
            continue
        landed += 2 if step >= 50 else 0  # the two largest etas diverge at the first report
        running.append((step, MEMBERS - 2 if step >= 50 else MEMBERS, STEPS))
    return landed, running


def test_eta_is_unknown_until_progress_then_near_the_truth():
    samples, shown = [], []
    for i in range(int(END)):
        t = float(i)
        landed, running = _state(t)
        samples.append((t, progress(landed, running)))
        shown.append((t, eta_seconds(samples, N_TOTAL), END - t, landed))
    assert all(eta is None for t, eta, _, _ in shown if t < RAY_START + TRIAL_START + 5)  # nothing measured yet
    first = next(t for t, eta, _, _ in shown if eta is not None)
    assert first <= RAY_START + TRIAL_START + 15
    for t, eta, truth, _ in shown:
        if eta is not None:
            assert 0.5 * truth <= eta <= 2.0 * truth or abs(eta - truth) <= 10, (t, eta, truth)
    # the rate of landed rows alone (the former ETA) starts at several times the truth on the same run
    landed_rate = [(N_TOTAL - n) * t / n / truth for t, _, truth, n in shown if n and t < END - 10]
    assert max(landed_rate) > 3


def test_progress_counts_landed_rows_and_the_running_members_steps():
    assert progress(3, []) == 3.0
    assert progress(2, [(150, 6, 300), (0, 8, 300)]) == pytest.approx(5.0)
    assert progress(0, [(400, 1, 300)]) == 1.0  # a report past the planned steps counts one configuration
    assert progress(1, [(150, 4, None)]) == 1.0  # unknown planned steps (an epoch budget): landed rows only
    assert eta_seconds([], 10) is None and eta_seconds([(1.0, 0.0), (9.0, 0.0)], 10) is None
    assert eta_seconds([(0.0, 1.0), (4.0, 2.0)], 10) is None  # less than 5 s of progress
    assert eta_seconds([(0.0, 0.0), (2.0, 1.0), (12.0, 3.0)], 10) == pytest.approx(35.0)  # 7 left at 0.2/s
