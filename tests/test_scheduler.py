"""The scheduler of the Ray executor, without Ray: fake workers and a fake clock drive it
through every rule of ``mrcnn_batch.run.scheduler`` (dispatch order and capacity, retry backoff,
attempts, deaths and replacements, stalls)."""

from __future__ import annotations

import pytest

from mrcnn_batch.run.scheduler import Scheduler


def make(pending=range(5), **kw) -> tuple[Scheduler, list]:
    retries: list[tuple[int, str]] = []
    options = {"now": 0.0, "per_worker": 2, "max_attempts": 3, "retry_delay_s": 2.0, "replacements": 2,
               "start_timeout_s": 60.0, "on_retry": lambda shard, reason: retries.append((shard, reason))}
    options.update(kw)
    return Scheduler(pending, **options), retries


def test_ready_workers_take_one_shard_each_then_a_second():
    s, _ = make()
    s.worker_started("a")
    s.worker_started("b")
    assert s.assign(0.0) == []  # nobody ready yet
    s.worker_ready("a")
    s.worker_ready("b")
    assert s.assign(0.0) == [("a", 0), ("b", 1), ("a", 2), ("b", 3)]  # in queue order, spread first
    assert s.assign(0.0) == []  # both full
    s.shard_done("b", 1)
    assert s.assign(0.0) == [("b", 4)]
    for w, shard in [("a", 0), ("a", 2), ("b", 3), ("b", 4)]:
        assert not s.done
        s.shard_done(w, shard)
    assert s.done and s.failed == {} and s.attempts == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}


def test_a_shard_that_raises_waits_its_backoff_then_fails_after_max_attempts():
    s, retries = make([7])
    s.worker_started("a")
    s.worker_ready("a")
    assert s.assign(0.0) == [("a", 7)]
    s.shard_raised("a", 7, "OSError: storage down", now=10.0)
    assert retries == [(7, "OSError: storage down")]
    assert s.assign(11.9) == [] and s.wait_timeout(10.5) == pytest.approx(1.5)  # due at 12 (2 s)
    assert s.assign(12.0) == [("a", 7)]
    s.shard_raised("a", 7, "OSError: still down", now=20.0)
    assert s.assign(23.9) == [] and s.assign(24.0) == [("a", 7)]  # 4 s: doubled
    s.shard_raised("a", 7, "OSError: down for good", now=30.0)
    assert s.done and s.failed == {7: "OSError: down for good (after 3 attempts)"}
    assert len(retries) == 2  # the third failure is final: not queued again


def test_other_shards_go_on_while_one_waits_for_its_retry():
    s, _ = make([1, 2], per_worker=1)
    s.worker_started("a")
    s.worker_ready("a")
    assert s.assign(0.0) == [("a", 1)]
    s.shard_raised("a", 1, "boom", now=0.0)
    assert s.assign(0.0) == [("a", 2)]  # 1 is not due: 2 overtakes it
    s.shard_done("a", 2)
    assert s.assign(1.0) == [] and s.assign(2.0) == [("a", 1)]


def test_a_lost_worker_has_its_shards_retried_at_once_elsewhere_and_is_replaced():
    s, retries = make([1, 2, 3], replacements=1)
    for w in "ab":
        s.worker_started(w)
        s.worker_ready(w)
    assert s.assign(0.0) == [("a", 1), ("b", 2), ("a", 3)]
    assert s.worker_lost("a", "ActorDiedError: killed", now=5.0) is True  # start a replacement
    assert sorted(retries) == [(1, "worker lost: ActorDiedError: killed"), (3, "worker lost: ActorDiedError: killed")]
    assert s.assign(5.0) == [("b", 1)]  # no delay after a death; b had one free place
    assert s.worker_lost("a", "again", now=5.0) is False  # reported twice (its other shard): once counted
    assert s.workers_lost == 1
    s.worker_started("c")
    s.worker_ready("c")
    assert s.assign(5.0) == [("c", 3)]
    assert s.worker_lost("c", "OOM", now=6.0) is False  # the replacements are used up
    assert s.attempts[3] == 2 and 3 in s.queue


def test_worker_deaths_count_as_attempts():
    s, _ = make([9], max_attempts=2, replacements=5)
    for w in "abc":
        s.worker_started(w)
        s.worker_ready(w)
    assert s.assign(0.0) == [("a", 9)]
    s.worker_lost("a", "node died", now=1.0)
    assert s.assign(1.0) == [("b", 9)]
    s.worker_lost("b", "node died", now=2.0)
    assert s.failed == {9: "worker lost: node died (after 2 attempts)"} and s.done


def test_no_worker_left_fails_what_waits():
    s, _ = make([1, 2], replacements=0)
    s.worker_started("a")
    assert s.stalled(0.0) is None  # still starting
    assert s.worker_lost("a", "died while starting", now=1.0) is False
    reason = s.stalled(1.0)
    assert reason and "no worker left" in reason
    assert s.failed == {1: reason, 2: reason} and s.done


def test_no_worker_ready_within_the_start_timeout_fails_what_waits():
    s, _ = make([1], start_timeout_s=30.0)
    s.worker_started("a")  # never placed (cluster out of resources)
    assert s.stalled(29.0) is None
    reason = s.stalled(31.0)
    assert reason and "no worker started within 30s" in reason and s.failed == {1: reason}


def test_a_running_shard_keeps_the_start_timeout_away():
    s, _ = make([1, 2], per_worker=1, start_timeout_s=30.0)
    s.worker_started("a")
    s.worker_ready("a")
    assert s.assign(0.0) == [("a", 1)]
    assert s.stalled(100.0) is None  # a worker is ready and busy: shard 2 waits its turn
    s.shard_done("a", 1)
    assert s.assign(100.0) == [("a", 2)]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        make(per_worker=0)
    with pytest.raises(ValueError):
        make(max_attempts=0)
