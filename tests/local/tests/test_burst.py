"""make burst's own arithmetic: the floor it compares against, and the scaling of every time setting
with QFPay's windows. (The burst itself runs the whole pipeline and is run by CI, not here.)"""

from __future__ import annotations

import pytest

from tests.local.burst import BurstConfig, MerchantPlan, _remaining_over_time, floor_schedule, floor_seconds


def test_the_floor_sends_each_request_as_early_as_both_sliding_windows_allow() -> None:
    starts = floor_schedule(600)
    # 100 per second up to the minute's 400, then the minute has to pass for each of them.
    assert starts[:100] == [0.0] * 100
    assert starts[399] == 3.0
    assert starts[400] == 60.0
    assert starts[599] == 61.0
    for k in range(len(starts)):
        assert sum(1 for t in starts if starts[k] <= t < starts[k] + 1) <= 100
        assert sum(1 for t in starts if starts[k] <= t < starts[k] + 60) <= 400


def test_the_floor_of_an_order_is_its_two_requests() -> None:
    assert floor_seconds(300) == 61.0  # 600 requests
    assert floor_seconds(2000) == 543.0  # 4000 requests: 10 minutes' worth, the last 4 s in
    assert floor_seconds(2000, scale=0.1) == pytest.approx(54.3)


def test_every_time_setting_scales_with_qfpays_windows() -> None:
    env = BurstConfig(scale=0.1).environment()
    assert env["QFPAY_LIMIT_WINDOW_SCALE"] == "0.1"
    assert env["RETRY_BASE_DELAY_SECONDS"] == "1"
    assert env["RETRY_MAX_DELAY_SECONDS"] == "90"
    assert env["RETRY_HORIZON_SECONDS"] == "2160"
    assert (env["POLL_FIRST_WAIT_SECONDS"], env["POLL_MAX_WAIT_SECONDS"]) == ("1", "6")
    assert env["POLL_DEADLINE_SECONDS"] == "90"
    assert BurstConfig(scale=0.1, outage=True).outage_length == 180


def test_the_configuration_comes_from_the_environment() -> None:
    config = BurstConfig.from_env({"BURST_N": "500", "BURST_MERCHANTS": "2", "BURST_OUTAGE": "1"})
    # QFPay's own windows unless asked: a scaled run measures this machine (docs/rate-limits.md).
    assert (config.orders, config.merchants, config.outage, config.scale) == (500, 2, True, 1.0)
    with pytest.raises(ValueError, match="BURST_WINDOW_SCALE"):
        BurstConfig.from_env({"BURST_WINDOW_SCALE": "2"})


def test_the_picture_steps_down_at_each_outcomes_own_time() -> None:
    """Outcomes read while the burst is still being sent keep their times (the picture used to
    step only when the drain loop began)."""
    merchant = MerchantPlan("m", None, [], outcome_times={"a": 3.0, "b": 1.5, "c": 7.25})
    assert _remaining_over_time(merchant, 5) == [(0.0, 5), (1.5, 4), (3.0, 3), (7.25, 2)]
