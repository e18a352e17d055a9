"""The fan-out bookkeeping in Redis (app/core/store/groups.py, worker/fanout.py sweep) on a real redis-server,
with no worker: claims, the reduce queued exactly once, dead groups put back, losses counted."""

from __future__ import annotations

import json

import pytest
from rq import Queue

from app.core.settings import Settings
from app.core.store import ALIVE_TTL_S, FAILED, MAX_LOST_ATTEMPTS, RUNNING, Store, group_alive_key
from worker.fanout import dispatch, sweep

GROUPS = [{"names": ["a", "b"], "bytes": 100}, {"names": ["c"], "bytes": 80}, {"names": ["d", "e"], "bytes": 120}]


@pytest.fixture
def env(redis_url, tmp_path):
    from app.core.store import connect

    r = connect(redis_url)
    r.flushdb()
    store = Store(r)
    settings = Settings(redis_url=redis_url, data_dir=tmp_path)
    aid = "f" * 16
    store.create_analysis(aid, {"total_bytes": 300}, {})
    assert store.start_attempt(aid, "dispatcher", "w0", {})
    store.set_groups(aid, GROUPS)
    return store, settings, aid


def jobs(store: Store, settings: Settings) -> list[tuple[str, tuple]]:
    q = Queue(settings.queue, connection=store.r)
    return [(j.func_name, j.args) for j in q.jobs]


def test_dispatch_queues_every_group_once_and_the_split_is_fixed(env):
    store, settings, aid = env
    assert store.set_groups(aid, [{"names": ["x"], "bytes": 1}]) == GROUPS  # the first split wins
    assert dispatch(store, settings, aid, GROUPS) == [0, 1, 2]
    assert jobs(store, settings) == [("worker.tasks.run_group", (aid, k)) for k in range(3)]
    assert store.is_fanout(aid) and aid not in store.orphans()
    progress = json.loads(store.get_raw(aid)["progress"])
    assert progress["groups"] == {"total": 3, "done": 0, "running": 0}
    assert (progress["tensors_total"], progress["bytes_total"], progress["bytes_done"]) == (5, 300, 0)


def test_the_reduce_is_queued_by_the_last_group_only(env):
    store, settings, aid = env
    dispatch(store, settings, aid, GROUPS)
    for k in range(3):
        assert store.start_group(aid, k, f"run-{k}", "w") == 1
        assert store.start_group(aid, k, "another", "w") == 0  # held
    last = [store.finish_group(aid, k, f"run-{k}", 3, 10 + k, len(GROUPS[k]["names"]), GROUPS[k]["bytes"])
            for k in (2, 0, 1)]
    assert last == [False, False, True]
    assert store.start_group(aid, 0, "late duplicate", "w") == 0  # done groups are never run again
    assert not store.finish_group(aid, 1, "run-1", 3, 11, 1, 80)  # a second finish queues nothing
    raw = store.get_raw(aid)
    assert raw["reduce"] == "queued"
    assert store.start_fanout_reduce(aid, "reducer") and not store.start_fanout_reduce(aid, "other")
    states = store.group_states(aid, 3)
    assert [s["status"] for s in states] == ["done"] * 3 and [s["runs"] for s in states] == ["1"] * 3
    assert sum(int(s["bytes_read"]) for s in states) == 33
    progress = store.sum_group_progress(aid, 3)
    assert progress["bytes_done"] == progress["bytes_total"] == 300 and progress["groups"]["done"] == 3


def test_sweep_requeues_a_dead_group_and_fails_after_max_lost_runs(env):
    store, settings, aid = env
    dispatch(store, settings, aid, GROUPS)
    Queue(settings.queue, connection=store.r).empty()
    assert store.start_group(aid, 0, "done-run", "w") == 1
    store.finish_group(aid, 0, "done-run", 3, 1, 2, 100)
    assert store.start_group(aid, 1, "alive-run", "w") == 1
    for death in range(1, MAX_LOST_ATTEMPTS + 1):
        assert store.start_group(aid, 2, f"run-{death}", "w") == 1
        store.r.delete(group_alive_key(aid, 2))  # its worker was SIGKILLed: the key expires
        store.refresh_group(aid, 1, "alive-run")
        sweep(store, settings)
        raw = store.get_raw(aid)
        if death < MAX_LOST_ATTEMPTS:
            assert raw["status"] == RUNNING and store.is_alive(aid)  # the janitor vouches for it
            assert store.group_states(aid, 3)[2]["status"] == "queued"
            assert jobs(store, settings)[0] == ("worker.tasks.run_group", (aid, 2))  # at the front
            assert store.group_states(aid, 3)[1]["status"] == "running"  # the live group is left alone
        else:
            assert raw["status"] == FAILED and json.loads(raw["error"])["code"] == "worker_lost"
            assert not store.is_fanout(aid)
    # A retry dispatches again: losses forgotten, the done group kept, the others queued.
    store.create_analysis(aid, {}, {})
    assert store.start_attempt(aid, "dispatcher-2", "w0", {})
    store.r.delete(group_alive_key(aid, 1))
    assert dispatch(store, settings, aid, GROUPS) == [1, 2]
    assert [s["lost"] for s in store.group_states(aid, 3)][1:] == ["0", "0"]


def test_sweep_queues_a_forgotten_reduce_and_requeues_a_dead_one(env):
    store, settings, aid = env
    dispatch(store, settings, aid, GROUPS)
    queue = Queue(settings.queue, connection=store.r)
    queue.empty()
    for k in range(3):
        store.start_group(aid, k, "r", "w")
        store.finish_group(aid, k, "r", 3, 0, 1, 1)
    store.r.hdel(f"subnetscope:analysis:{aid}", "reduce")  # its enqueue was lost (the worker died just then)
    sweep(store, settings)
    assert store.get_raw(aid)["reduce"] == "queued"
    assert jobs(store, settings) == [("worker.tasks.reduce_fanout", (aid,))]
    sweep(store, settings)
    assert len(jobs(store, settings)) == 1  # queued and recent: not again

    assert store.start_fanout_reduce(aid, "reducer")
    store.r.delete(f"subnetscope:analysis:{aid}:reduce:alive")  # the reducer died
    queue.empty()
    sweep(store, settings)
    assert store.get_raw(aid)["reduce"] == "queued" and store.get_raw(aid)["reduce_lost"] == "1"
    assert jobs(store, settings) == [("worker.tasks.reduce_fanout", (aid,))]
    assert store.start_fanout_reduce(aid, "reducer-2")
    store.refresh_fanout_reduce(aid, "reducer-2")
    assert store.r.ttl(f"subnetscope:analysis:{aid}:alive") > ALIVE_TTL_S - 2


def test_a_finished_fanout_leaves_no_group_keys(env):
    store, settings, aid = env
    dispatch(store, settings, aid, GROUPS)
    store.end_fanout(aid, 3)
    left = [k.decode() for k in store.r.scan_iter(match=f"subnetscope:analysis:{aid}:*")]
    assert not [k for k in left if ":group" in k or ":reduce" in k], left
    assert not store.is_fanout(aid)


def test_sweep_requeues_a_queued_group_whose_job_is_gone(env, monkeypatch):
    import worker.fanout as fanout_module

    store, settings, aid = env
    queue = Queue(settings.queue, connection=store.r)
    store.dispatch_groups(aid, GROUPS)  # the dispatcher died before it enqueued anything
    sweep(store, settings)
    assert sorted(args for _, args in jobs(store, settings)) == [(aid, k) for k in range(3)]
    sweep(store, settings)
    assert len(jobs(store, settings)) == 3  # their jobs are queued now: nothing more

    lost = queue.jobs[1]
    lost.delete()  # e.g. Redis lost it
    sweep(store, settings)
    assert len(jobs(store, settings)) == 2  # enqueued a moment ago: given time to show up
    monkeypatch.setattr(fanout_module, "GROUP_JOB_LOST_AFTER_S", 0)
    sweep(store, settings)
    assert sorted(args for _, args in jobs(store, settings)) == [(aid, k) for k in range(3)]
