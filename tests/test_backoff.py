"""Pure retry timing (bulksend.ratelimit.backoff)."""

from __future__ import annotations

import random

import pytest

from bulksend.ratelimit.backoff import RetryBudget, full_jitter


def test_backoff_is_full_jitter_and_capped() -> None:
    assert full_jitter(1, base=0.5, cap=30.0, u=0.999) == pytest.approx(0.4995)
    assert full_jitter(3, base=0.5, cap=30.0, u=0.5) == pytest.approx(1.0)
    assert full_jitter(1000, base=0.5, cap=30.0, u=0.999) == pytest.approx(29.97)
    assert full_jitter(2, base=0.5, cap=30.0, u=0.0) == 0.0
    assert full_jitter(2, base=0.5, cap=30.0, u=float("nan")) == 0.0


def test_retry_budget_spends_refills_and_earns() -> None:
    budget = RetryBudget(capacity=3, floor=1.0, earn=0.1, horizon=10.0)
    for _ in range(3):
        assert budget.wait_time(0.0) == 0.0
        budget.spend(0.0)
    assert budget.wait_time(0.0) == pytest.approx(1.0)  # floor: one per second
    for i in range(200):  # 20 successes per second for 10 s
        budget.success(i * 0.05)
    assert budget.income(10.0) == pytest.approx(3.0, rel=0.01)  # floor + 10 % of the successes
    assert budget.tokens(10.0) == 3.0  # never above capacity


def test_a_success_earns_its_share_at_once() -> None:
    budget = RetryBudget(capacity=10, floor=1.0, earn=0.5)
    for _ in range(10):
        budget.spend(0.0)
    assert budget.wait_time(0.0) == pytest.approx(1.0)
    budget.success(0.0)
    budget.success(0.0)
    assert budget.tokens(0.0) == pytest.approx(1.0)  # two successes at 0.5: one retry at once
    assert budget.wait_time(0.0) == 0.0
    budget.refund(0.0)  # a retry never sent gives its token back
    assert budget.tokens(0.0) == pytest.approx(2.0)


def drive(budget: RetryBudget, *, rate: float, fail: float, seconds: float, seed: int) -> int:
    """Send ``rate`` requests a second for ``seconds``, a share ``fail`` failing at random; every
    failure wants a retry as soon as a token allows. Returns the retries still waiting at the end
    (the ones the budget could not pay for)."""
    rng = random.Random(seed)
    waiting = 0
    for i in range(int(rate * seconds)):
        now = i / rate
        retry = waiting > 0 and budget.wait_time(now) == 0.0
        if retry:
            budget.spend(now)
            waiting -= 1
        if rng.random() < fail:
            waiting += 1
        else:
            budget.success(now)
    return waiting


@pytest.mark.parametrize(("fail", "seed"), [(0.2, 0), (0.2, 1), (0.4, 2)])
def test_random_failures_of_a_working_endpoint_are_all_retried(fail: float, seed: int) -> None:
    # 20 % failing at 200 requests/s needs retries worth 25 % of the successes, 40 % failing
    # 67 %: all are paid for
    budget = RetryBudget(capacity=20, floor=1.0, earn=1.0)
    assert drive(budget, rate=200, fail=fail, seconds=60, seed=seed) <= 10
    # a tenth of the successes (the old budget's share) falls behind without end
    old = RetryBudget(capacity=20, floor=1.0, earn=0.1)
    assert drive(old, rate=200, fail=fail, seconds=60, seed=seed) > 1000


def test_a_storm_is_held_to_the_floor() -> None:
    budget = RetryBudget(capacity=20, floor=1.0, earn=1.0)
    for i in range(1000):  # a good period fills the bucket
        budget.success(i / 100)
    start, retries = 10.0, 0
    for i in range(30_000):  # then 300 s where everything fails, 100 retries wanted a second
        now = start + i / 100
        if budget.wait_time(now) == 0.0:
            budget.spend(now)
            retries += 1
    assert retries <= 20 + 1.0 * 300  # what the bucket held, then the floor
    assert retries >= 300
