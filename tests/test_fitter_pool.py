"""FitterPool on a real local Ray and a real redis-server: bounds, busy policies, restarts, resize, staleness."""

import os
import signal
import time
import uuid

import numpy as np
import pytest
import ray

from pipeline_problems import fast_config, make_request, seed_store
from spin_ray.body.body_model import BodyModel
from spin_ray.config import RunConfig
from spin_ray.errors import ConfigError, PipelineError
from spin_ray.pipeline.fitter_protocol import import_fitter_class
from spin_ray.pipeline.pool import FitterPool
from spin_ray.store.fit_store import FitStore
from spin_ray.store.records import FitStoreAddress
from spin_ray_sim.fitters import slow_fitter_class

BATCH = 4


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


@pytest.fixture
def store(redis_server, body):
    store = FitStore.open(redis_server.url, f"pool-{uuid.uuid4().hex[:10]}", body_model_hash=body.identity)
    yield store
    store.drop()
    store.close()


@pytest.fixture
def make_pool(ray_local, store):
    pools = []

    def make(delay_s: float = 0.0, **pipeline) -> FitterPool:
        """A pool of real fitters that each sleep delay_s before a fit (0: plain FitterActors)."""
        fitter_class = slow_fitter_class(delay_s) if delay_s > 0 else None
        pools.append(FitterPool(fast_config(**pipeline), store.address, name=f"test{len(pools)}",
                                fitter_class=fitter_class))
        return pools[-1]

    yield make
    for pool in pools:
        pool.shutdown()


def accounted(m) -> int:
    """Requests with an outcome or still in the pool; must equal m.submitted."""
    return m.completed + m.failed + m.dropped + m.lost + m.abandoned + m.in_flight + m.pending


def wait_until(predicate, pool, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out; pool metrics: {pool.metrics()}"
        pool.poll()
        time.sleep(0.05)


def test_requests_land_improved_fits_in_the_store(make_pool, store, body):
    pool = make_pool(num_fitters=2)
    camera = fast_config().camera
    before = {seed: seed_store(store, body, camera, BATCH, seed, first_index=BATCH * seed) for seed in range(4)}
    requests = [make_request(body, camera, BATCH, seed, step=10 + seed, first_index=BATCH * seed, augment=seed % 2 == 1)
                for seed in range(4)]
    assert all(pool.submit(r) for r in requests)
    pool.set_step(62)  # the trainer moved on: requests of steps 10 and 11 are now more than 50 steps old
    assert pool.drain(60)
    reports = pool.poll()  # every report since the last poll, including those drain collected
    assert sorted(r.request_id for r in reports) == sorted(r.request_id for r in requests)
    m = pool.metrics()
    assert m.completed == 4 and m.failed == m.dropped == m.lost == 0 and accounted(m) == m.submitted == 4
    assert m.samples_fitted == 4 * BATCH == sum(r.fitted for r in reports) and m.written == sum(r.written for r in reports)
    assert m.written > 0 and m.fits_per_s > 0 and np.isfinite(m.mean_error)
    assert m.stale == 2 and m.current_step == 62 and m.num_fitters == 2 and m.in_flight == 0
    assert pool.exports_ray_metrics  # gauges and counters were created and every publish so far succeeded
    for seed, request in enumerate(requests):
        stored = store.read("synth", request.indices)
        improved = stored.source == "loop"
        assert (stored.error <= before[seed] + 1e-9).all()
        assert improved.sum() >= BATCH // 2, f"request {seed}: the fit should beat a 0.6 rad noisy pose"
        assert (stored.step[improved] == request.step).all() and (stored.error[improved] < before[seed][improved]).all()
    again = make_request(body, camera, BATCH, 9)
    pool.submit(again)
    with pytest.raises(PipelineError, match="already queued or in flight"):
        pool.submit(again)


def test_drop_policy_bounds_in_flight_drops_the_oldest_and_never_blocks(make_pool, body):
    # One request a call (no batching of queued requests), so the bounds count requests here.
    pool = make_pool(num_fitters=2, max_in_flight_per_fitter=2, max_pending=3, delay_s=0.6, fitter_batch_size=None)
    camera = fast_config().camera
    requests = [make_request(body, camera, BATCH, seed, step=seed) for seed in range(16)]
    durations, samples = [], []
    for request in requests:
        start = time.perf_counter()
        pool.submit(request)
        durations.append(time.perf_counter() - start)
        samples.append(pool.metrics())
    assert max(durations) < 0.2, f"submit blocked under drop: {max(durations):.3f} s"
    assert max(m.in_flight for m in samples) == 4  # the bound is reached, and never passed
    assert all(max(m.in_flight_per_fitter.values()) <= 2 and m.pending <= 3 for m in samples)
    assert samples[-1].dropped >= 16 - 4 - 3 - 2  # at most a couple can finish while 16 are submitted
    assert pool.drain(60)
    completed = {r.request_id for r in pool.poll()}
    m = pool.metrics()
    assert m.peak_in_flight == 4 and accounted(m) == m.submitted == 16 and m.completed == len(completed)
    assert m.dropped == 16 - m.completed
    # Drop means the oldest queued goes: the three newest requests are always fitted.
    assert {r.request_id for r in requests[-3:]} <= completed


def test_queued_requests_are_fitted_together_up_to_the_fitter_batch_size(make_pool, store, body):
    # pipeline.fitter_batch_size: requests queued while the fitter is busy go in one call (never split), each
    # written with its own step and reported on its own, with the same fits as one request a call.
    pool = make_pool(num_fitters=1, max_in_flight_per_fitter=1, max_pending=8, delay_s=0.5,
                     fitter_batch_size=3 * BATCH)
    camera = fast_config().camera
    requests = [make_request(body, camera, BATCH, seed, step=seed, first_index=BATCH * seed, augment=seed % 2 == 1)
                for seed in range(7)]
    assert all(pool.submit(r) for r in requests)  # the first is sent at once, six wait
    m = pool.metrics()
    assert m.in_flight == 1 and m.in_flight_samples == BATCH and m.pending == 6
    reports = {r.request_id: r for r in pool.poll()}
    while pool.metrics().in_flight == 1:  # the first comes back: three of the six go in one call
        time.sleep(0.02)
        reports |= {r.request_id: r for r in pool.poll()}
    m = pool.metrics()
    assert (m.in_flight, m.in_flight_samples, m.pending, m.fitter_calls) == (3, 3 * BATCH, 3, 2), m
    assert pool.drain(60)
    reports |= {r.request_id: r for r in pool.poll()}
    m = pool.metrics()
    assert m.completed == 7 and m.dropped == 0 and accounted(m) == m.submitted == 7
    assert m.fitter_calls == 3  # 1 request, then 3 + 3 of the six queued (12 samples each)
    assert sorted(reports) == sorted(r.request_id for r in requests)
    assert all(reports[r.request_id].step == r.step and reports[r.request_id].batch_size == BATCH for r in requests)
    together = {seed: store.read("synth", r.indices) for seed, r in enumerate(requests)}
    for seed, request in enumerate(requests):
        assert (together[seed].source == "loop").all() and (together[seed].step == request.step).all()
    # The same requests one a call, into a fresh namespace: the same fits to float rounding.
    alone = FitStore.open(store.address.url.get_secret_value(), f"{store.namespace}-alone", body_model_hash=body.identity)
    try:
        single = FitterPool(fast_config(num_fitters=1, fitter_batch_size=None, busy_policy="block"), alone.address,
                            name="alone")
        try:
            for request in requests:
                single.submit(request)
            assert single.drain(60) and single.metrics().fitter_calls == 7
        finally:
            single.shutdown()
        for seed, request in enumerate(requests):
            one = alone.read("synth", request.indices)
            np.testing.assert_allclose(together[seed].error, one.error, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(together[seed].pose, one.pose, atol=1e-3)
    finally:
        alone.drop()
        alone.close()


def test_a_fitter_class_without_fit_many_gets_one_request_a_call_and_says_so(ray_local, store, body, caplog):
    from spin_ray_sim.standin import standin_fitter_class

    caplog.set_level("INFO", logger="spin_ray.pipeline.pool")
    config = fast_config(num_fitters=1, max_in_flight_per_fitter=1, max_pending=8, fitter_batch_size=64)
    pool = FitterPool(config, store.address, name="no-batching", fitter_class=standin_fitter_class(20.0))
    try:
        said = [r.message for r in caplog.records if "fitter_batch_size is unused" in r.message]
        assert len(said) == 1 and "has no fit_many" in said[0]
        camera = config.camera
        for seed in range(4):  # one sent, three queued behind it
            assert pool.submit(make_request(body, camera, BATCH, seed, step=seed, first_index=BATCH * seed))
        assert pool.drain(60)
        m = pool.metrics()
        assert m.completed == 4 and m.fitter_calls == 4
    finally:
        pool.shutdown()


def test_drop_with_no_queue_refuses_the_new_request_and_failed_fits_are_counted(make_pool, store, body):
    pool = make_pool(num_fitters=1, max_in_flight_per_fitter=1, max_pending=0, delay_s=0.5)
    camera = fast_config().camera
    assert pool.submit(make_request(body, camera, BATCH, 0))
    assert not pool.submit(make_request(body, camera, BATCH, 1))
    assert pool.metrics().dropped == 1
    assert pool.drain(30)
    # A fit that raises (here: the namespace was re-created for another body model) is counted failed,
    # its reason kept, and the fitter stays in service.
    store.drop()
    FitStore.open(store.address.url.get_secret_value(), store.namespace, body_model_hash="0123456789abcdef").close()
    pool.submit(make_request(body, camera, BATCH, 2))
    assert pool.drain(30)
    m = pool.metrics()
    assert m.failed == 1 and m.completed == 1 and m.restarts == 0 and m.num_fitters == 1
    assert "changed under this writer" in m.last_error and accounted(m) == m.submitted == 3


def test_block_policy_waits_for_a_free_fitter(make_pool, body):
    pool = make_pool(num_fitters=1, max_in_flight_per_fitter=1, busy_policy="block", delay_s=0.4)
    camera = fast_config().camera
    durations = []
    for seed in range(3):
        start = time.perf_counter()
        assert pool.submit(make_request(body, camera, BATCH, seed))
        durations.append(time.perf_counter() - start)
        assert pool.metrics().in_flight <= 1
    assert durations[0] < 0.2 and min(durations[1:]) > 0.3
    assert pool.drain(30)
    assert len(pool.poll()) == 3  # reports collected while submit waited are kept for poll
    pool.submit(make_request(body, camera, BATCH, 3))
    final = pool.shutdown()  # without draining: what is in flight is abandoned, and counted
    assert final.completed == 3 and final.dropped == 0 and final.peak_in_flight == 1
    assert final.abandoned == 1 and final.num_fitters == 0 and accounted(final) == final.submitted == 4
    with pytest.raises(PipelineError, match="was shut down"):
        pool.submit(make_request(body, camera, BATCH, 4))


def _pid(handle) -> int:
    return ray.get(handle.pid.remote(), timeout=30)


def test_a_killed_fitter_is_replaced_and_its_request_sent_again_once(make_pool, store, body):
    pool = make_pool(num_fitters=2, max_in_flight_per_fitter=1, delay_s=1.0, max_restarts=3)
    camera = fast_config().camera
    before = np.concatenate([seed_store(store, body, camera, BATCH, s, first_index=BATCH * s) for s in range(3)])
    requests = [make_request(body, camera, BATCH, s, first_index=BATCH * s) for s in range(3)]
    for request in requests[:2]:
        pool.submit(request)
    victims = pool.fitter_handles()
    assert pool.metrics().in_flight_per_fitter == {name: 1 for name in victims}
    first, second = victims.values()
    ray.kill(first, no_restart=True)  # ray.kill while its request runs
    start = time.perf_counter()
    pid = _pid(second)
    assert time.perf_counter() - start < 0.9, "pid/ping must answer while a fit runs (health concurrency group)"
    os.kill(pid, signal.SIGKILL)  # and a crash of the process itself
    pool.submit(requests[2])
    assert pool.drain(90)
    m = pool.metrics()
    assert m.restarts == 2 and m.num_fitters == 2 and set(pool.fitter_handles()).isdisjoint(victims)
    assert m.resubmitted == 2 and m.lost == 0 and m.completed == 3 and accounted(m) == m.submitted == 3
    after = store.read("synth", np.arange(3 * BATCH))
    assert (after.error <= before + 1e-9).all() and (after.source == "loop").sum() > 0
    for handle in pool.fitter_handles().values():  # the replacements work
        assert ray.get(handle.ping.remote(), timeout=30)


def test_a_request_is_never_sent_a_third_time_and_restarts_are_capped(make_pool, body):
    pool = make_pool(num_fitters=1, max_in_flight_per_fitter=1, delay_s=2.0, max_restarts=2)
    camera = fast_config().camera
    request = make_request(body, camera, BATCH, 0)
    pool.submit(request)
    os.kill(_pid(next(iter(pool.fitter_handles().values()))), signal.SIGKILL)
    wait_until(lambda: pool.metrics().resubmitted == 1 and pool.metrics().in_flight == 1, pool)
    # Kill the replacement while it holds the re-sent request: the request is lost, not sent again.
    os.kill(_pid(next(iter(pool.fitter_handles().values()))), signal.SIGKILL)
    wait_until(lambda: pool.metrics().lost == 1, pool)
    m = pool.metrics()
    assert m.resubmitted == 1 and m.restarts == 2 and m.in_flight == m.pending == 0 and m.completed == 0
    assert accounted(m) == m.submitted == 1
    # Slot restarts are used up: one more death leaves no fitter, and submit says why.
    ray.kill(next(iter(pool.fitter_handles().values())), no_restart=True)
    # The pool learns of the death from the replacement's first ping or from a request sent to it.
    with pytest.raises(PipelineError, match="no fitter is left"):
        for seed in range(1, 100):
            pool.submit(make_request(body, camera, BATCH, seed))
            time.sleep(0.2)
    assert pool.metrics().num_fitters == 0
    assert "max_restarts" in pool.metrics().last_error


def test_resize_grows_and_shrinks_without_losing_work(make_pool, body):
    pool = make_pool(num_fitters=1, max_in_flight_per_fitter=1, delay_s=0.5)
    camera = fast_config().camera
    pool.resize(3)
    pool.wait_ready(60)
    assert pool.metrics().num_fitters == 3 and pool.max_in_flight() == 3
    for seed in range(3):
        pool.submit(make_request(body, camera, BATCH, seed))
    m = pool.metrics()
    assert m.in_flight == 3 and set(m.in_flight_per_fitter.values()) == {1}  # one each: least busy first
    handles = pool.fitter_handles()
    pool.resize(1)  # while all three are busy: the retired two finish their requests first
    assert pool.metrics().num_fitters == 1 and pool.max_in_flight() == 1
    assert pool.drain(30)
    m = pool.metrics()
    assert m.completed == 3 and m.lost == m.resubmitted == 0 and len(pool.fitter_handles()) == 1
    retired = [h for name, h in handles.items() if name not in pool.fitter_handles()]
    assert len(retired) == 2
    for handle in retired:
        # ray.kill is asynchronous: a ping sent at once may still be answered on a loaded machine.
        deadline = time.monotonic() + 30
        with pytest.raises(ray.exceptions.RayActorError):
            while time.monotonic() < deadline:
                ray.get(handle.ping.remote(), timeout=30)
                time.sleep(0.2)


def test_a_fitter_that_cannot_start_is_reported(ray_local, redis_server):
    address = FitStoreAddress(url=redis_server.url, namespace="pool-bad", body_model_hash="0123456789abcdef")
    with pytest.raises(PipelineError, match="fitter bad-0.0: the fit store is for body model .*different body models"):
        FitterPool(fast_config(num_fitters=1), address, name="bad")


def test_a_replacement_that_dies_before_answering_does_not_cost_the_request_its_resend(make_pool, body):
    """After a node dies, a replacement can land on it and die at once: the re-sent request waits for a live one."""
    pool = make_pool(num_fitters=1, max_in_flight_per_fitter=1, delay_s=2.0, max_restarts=3)
    camera = fast_config().camera
    pool.submit(make_request(body, camera, BATCH, 0))
    os.kill(_pid(next(iter(pool.fitter_handles().values()))), signal.SIGKILL)
    wait_until(lambda: pool.metrics().resubmitted == 1, pool)
    # The replacement is starting: kill it before its first answer (as a dying node would).
    starting = [s for s in pool._fitters.slots if s.starting is not None]
    assert starting, "the replacement should not take work before it answers a ping"
    ray.kill(starting[0].actor, no_restart=True)
    assert pool.drain(120)
    m = pool.metrics()
    assert m.completed == 1 and m.lost == 0 and m.resubmitted == 1 and m.restarts == 2


@pytest.mark.parametrize("path, message", [
    ("spin_ray.pipeline.fitter.FitterActor", "must be 'module:Class'"),
    ("spin_ray.no_such_module:Fitter", "cannot import spin_ray.no_such_module"),
    ("spin_ray.pipeline.fitter:fitter_device", "is not a fitter actor class"),
    ("spin_ray.config:RunConfig", "missing fit, ping, pid"),
])
def test_a_bad_fitter_class_is_one_clear_config_error(path, message):
    with pytest.raises(ConfigError, match=message):
        import_fitter_class(path)


def test_the_default_fitter_class_is_the_smplify_fitter():
    from spin_ray.pipeline.fitter import FitterActor

    assert import_fitter_class(RunConfig().pipeline.fitter_class) is FitterActor
