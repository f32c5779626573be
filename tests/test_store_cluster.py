"""The fit store on a real local Redis Cluster: same answers as one node, bad URLs, the schema-1 migration, failover."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
import redis

from spin_ray.cli import main
from spin_ray.errors import FitStoreError
from spin_ray.store import integrity
from spin_ray.store.cluster import SLOTS
from spin_ray.store.fit_store import FitStore
from spin_ray.store.server import connect

from conftest import TEST_BODY_HASH


def _fill(store: FitStore, seed: int = 0) -> None:
    """Two datasets, three sources, improvements and ties over three steps."""
    rng = np.random.default_rng(seed)
    for step, source in enumerate(["static", "loop", "gt"]):
        n = 300
        idx = rng.integers(0, 500, n)
        err = np.round(rng.uniform(0, 300, n), 1)  # rounded: ties in the index, ordered by member
        store.keep_best("coco", idx, rng.normal(size=(n, 72)), rng.normal(size=(n, 10)), err, step, source)
        store.keep_best("lsp", idx[:50], rng.normal(size=(50, 72)), rng.normal(size=(50, 10)), err[:50], step, source)


def test_a_cluster_and_one_node_give_the_same_answers(redis_server, redis_cluster, tmp_path):
    ns = f"same-{uuid.uuid4().hex[:8]}"
    node = FitStore.open(redis_server.url, ns, TEST_BODY_HASH, index_groups=1)
    cluster = FitStore.open(redis_cluster.url, ns, TEST_BODY_HASH)  # the cluster default: 16 groups
    try:
        assert node.layout.groups == 1 and cluster.layout.groups == 16
        _fill(node)
        _fill(cluster)
        # The 16 groups of one dataset spread over every master.
        masters = {cluster.client.get_node_from_key(k).name for k in cluster.layout.indexes("coco")}
        assert len(masters) == 3
        assert node.datasets() == cluster.datasets() == ["coco", "lsp"]
        for name in ("coco", "lsp"):
            assert node.count(name) == cluster.count(name)
            for k in (1, 7, 1000):
                for a, b in zip(node.worst(name, k), cluster.worst(name, k)):
                    np.testing.assert_array_equal(a, b)
                for a, b in zip(node.best(name, k), cluster.best(name, k)):
                    np.testing.assert_array_equal(a, b)
            for a, b in zip(node.filter(name, 120.0), cluster.filter(name, 120.0)):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(node.all_errors(name), cluster.all_errors(name)):
                np.testing.assert_array_equal(a, b)
            x, y = node.read_all(name), cluster.read_all(name)
            for field in ("indices", "pose", "betas", "error", "step", "source", "updates"):
                np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
            a, b = np.array(node.progress(name)), np.array(cluster.progress(name))
            assert a.shape == b.shape and np.array_equal(a[:, :2], b[:, :2]) and np.allclose(a[:, 2], b[:, 2], rtol=1e-12)
        s_node, s_cluster = node.stats(threshold=100.0), cluster.stats(threshold=100.0)
        for a, b in zip(s_node.datasets, s_cluster.datasets):
            assert a.model_dump(exclude={"improvements_by_step"}) == b.model_dump(exclude={"improvements_by_step"})
            assert np.allclose(np.array(a.improvements_by_step), np.array(b.improvements_by_step), rtol=1e-12)
        node.export_npy("coco", tmp_path / "node.npy", size=500)
        cluster.export_npy("coco", tmp_path / "cluster.npy", size=500)
        assert (tmp_path / "node.npy").read_bytes() == (tmp_path / "cluster.npy").read_bytes()
        report = integrity.scan(cluster.client, ns)
        assert report.clean and report.good == node.count("coco") + node.count("lsp")
    finally:
        node.drop()
        cluster.drop()


def test_store_check_repairs_on_every_shard(redis_cluster, capsys):
    store = FitStore.open(redis_cluster.url, f"chk-{uuid.uuid4().hex[:8]}", TEST_BODY_HASH)
    try:
        _fill(store)
        c = store.client
        c.hset(store.record_key("coco", 3), "pose", b"abc")  # corrupt
        c.zadd(store.index_key("coco", 499), {"499": 1.0})  # orphan (no record 499... unless written)
        c.zrem(store.index_key("coco", int(store.all_errors("coco")[0][0])), str(int(store.all_errors("coco")[0][0])))
        report = integrity.scan(c, store.namespace)
        assert len(report.corrupt) == 1 and len(report.unindexed) == 1 and not report.clean
        url = store.address.url.get_secret_value()
        assert main(["store", "check", "--url", url, "--namespace", store.namespace, "--repair"]) == 0
        assert main(["store", "check", "--url", url, "--namespace", store.namespace]) == 0
        assert "0 corrupt, 0 orphaned" in capsys.readouterr().out
        assert c.exists(f"{store.key_prefix}quarantine:fit:{{coco:{3 % 16}}}:3") == 1
    finally:
        store.drop()


# -- bad input ---------------------------------------------------------------------------------------


def test_a_cluster_url_at_one_node_and_a_node_url_at_a_cluster_say_which(redis_server, redis_cluster):
    port = redis_server.url.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(FitStoreError, match=f"names 127.0.0.1:{port}, a single Redis node .*use redis://127.0.0.1:{port}"):
        connect(f"redis+cluster://127.0.0.1:{port}", 2)
    node = redis_cluster.node_url(redis_cluster.ports[0])
    with pytest.raises(FitStoreError, match="is a node of a Redis Cluster, not a single Redis: use redis\\+cluster://"):
        connect(node, 2)
    with pytest.raises(FitStoreError, match="'127.0.0.1' is not host:port"):
        connect("redis+cluster://:pw@127.0.0.1", 2)


def test_uncovered_slots_and_a_wrong_password_are_one_line(tmp_path):
    from cluster_fixture import LocalCluster

    with LocalCluster(tmp_path / "c", masters=3, replicas=0, password="s3cret-pass") as cluster:
        with pytest.raises(FitStoreError) as wrong:
            connect(cluster.url.replace("s3cret-pass", "wrong-pass"), 2)
        assert "refused the credentials" in str(wrong.value) and "wrong-pass" not in str(wrong.value)
        store = FitStore.open(cluster.url, "pw", TEST_BODY_HASH)
        assert "s3cret-pass" not in repr(store)
        store.close()
        # One node with another password: a write that reaches it fails in one line, both passwords hidden.
        odd = cluster.master_ports()[-1]
        cluster.client(odd).config_set("requirepass", "other-pass")
        start = time.monotonic()
        with pytest.raises(FitStoreError) as one_node:
            writer = FitStore.open(cluster.url, "pw", TEST_BODY_HASH, connect_timeout_s=20)
            writer.keep_best("coco", np.arange(64), np.zeros((64, 72)), np.zeros((64, 10)), np.ones(64), 0, "loop")
        text = str(one_node.value)
        assert "s3cret-pass" not in text and "other-pass" not in text and "\n" not in text, text
        assert "AuthenticationError" in text or "refused the credentials" in text, text
        assert time.monotonic() - start < 10  # not retried as if the node were failing over
        redis.Redis(host="127.0.0.1", port=odd, password="other-pass").config_set("requirepass", "s3cret-pass")
        # Take the slots of one master away: the URL is refused with the slots named.
        victim = cluster.master_ports()[0]
        slots = [s for lo, hi, *nodes in cluster.client(victim).execute_command("CLUSTER SLOTS")
                 if int(nodes[0][1]) == victim for s in range(int(lo), int(hi) + 1)]
        for port in cluster.ports:
            cluster.client(port).execute_command("CLUSTER DELSLOTS", *slots)
        with pytest.raises(FitStoreError) as gap:
            connect(cluster.url, 2)
        assert f"serves no master for slots {slots[0]}-{slots[-1]}:" in str(gap.value)
        assert "\n" not in str(gap.value) and "s3cret-pass" not in str(gap.value) and slots[-1] < SLOTS


def test_a_schema_1_namespace_is_named_and_migrated_with_the_same_answers(redis_server, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_store import PER_FIT_LUA

    ns = f"old-{uuid.uuid4().hex[:8]}"
    c = redis.Redis.from_url(redis_server.url)
    c.hset(f"spinray:{ns}:meta", mapping={"schema_version": 1, "body_model_hash": TEST_BODY_HASH, "created": 1.7e9})
    sha = c.script_load(PER_FIT_LUA)
    rng = np.random.default_rng(1)
    errors = {}
    for i in rng.permutation(40).tolist() * 2:  # twice: improvements and refusals
        err = round(float(rng.uniform(1, 100)), 3)
        p = f"spinray:{ns}:"
        c.evalsha(sha, 4, f"{p}fit:coco:{i}", f"{p}idx:coco", f"{p}stats:coco", f"{p}meta", repr(err),
                  rng.normal(size=72).astype("<f4").tobytes(), rng.normal(size=10).astype("<f4").tobytes(), 3,
                  "loop", 1.7e9, i, 1, TEST_BODY_HASH, "")
        errors[i] = min(errors.get(i, np.inf), err)
    with pytest.raises(FitStoreError, match=f"key layout of fit-store schema 1 .* `spin-ray store migrate --namespace {ns}`"):
        FitStore.open(redis_server.url, ns, TEST_BODY_HASH)
    assert main(["store", "migrate", "--url", redis_server.url, "--namespace", ns]) == 0
    assert "40 records and 40 index entries of 1 dataset(s) moved to schema 2" in capsys.readouterr().out
    store = FitStore.open(redis_server.url, ns, TEST_BODY_HASH)
    try:
        idx, err = store.all_errors("coco")
        assert dict(zip(idx.tolist(), err.tolist())) == errors
        assert store.read_all("coco").found.all() and integrity.scan(store.client, ns).clean
        assert sum(n for _, n, _ in store.progress("coco")) == int(store.read_all("coco").updates.sum())
        pose = rng.normal(size=(1, 72))
        assert store.keep_best("coco", [0], pose, np.zeros((1, 10)), [0.0], 9, "loop").all()  # writes go on
    finally:
        store.drop()


# -- failover ----------------------------------------------------------------------------------------


def test_a_master_killed_under_load_loses_no_acknowledged_fit(tmp_path):
    from cluster_fixture import LocalCluster

    with LocalCluster(tmp_path / "c", node_timeout_ms=1000) as cluster:
        store = FitStore.open(cluster.url, "failover", TEST_BODY_HASH, connect_timeout_s=30)
        acknowledged: dict[int, float] = {}
        batches = [0]  # batches acknowledged
        stop = threading.Event()
        failures: list[BaseException] = []

        def writer() -> None:
            rng = np.random.default_rng(0)
            try:
                while not stop.is_set():
                    idx = rng.choice(4000, 64, replace=False)
                    err = rng.uniform(0, 1000, 64)
                    written = store.keep_best("coco", idx, rng.normal(size=(64, 72)), rng.normal(size=(64, 10)),
                                              err, 1, "loop")
                    for i, e, w in zip(idx.tolist(), err.tolist(), written.tolist()):
                        if w:
                            acknowledged[i] = min(acknowledged.get(i, np.inf), e)
                    batches[0] += 1
            except BaseException as err:  # noqa: BLE001 - the test reports it
                failures.append(err)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(1.5)
        before = batches[0]
        reader = FitStore.open(cluster.url, "failover", connect_timeout_s=30)  # counts from another client
        counts = [reader.count("coco")]
        victim = cluster.master_ports()[0]
        cluster.kill(victim)
        deadline = time.monotonic() + 30
        while victim in cluster.master_ports() or len(cluster.master_ports()) < 3:
            assert time.monotonic() < deadline, "no replica was promoted"
            time.sleep(0.2)
        promoted_at = batches[0]
        counts.append(reader._cluster_retrying("counting", lambda: reader.count("coco")))
        time.sleep(2.0)  # writes go on against the new topology
        stop.set()
        thread.join(60)
        counts.append(reader.count("coco"))
        # A fit that went in while its reply was lost to the failover is stored but not acknowledged: >=.
        assert counts[0] > 0 and counts[0] <= counts[1] <= counts[2] and counts[2] >= len(acknowledged), counts
        assert not failures, failures
        assert before > 0 and batches[0] > promoted_at >= before  # writes went on after the promotion
        # Every acknowledged fit is there with an error no higher than the one acknowledged.
        idx = np.array(sorted(acknowledged))
        got = store.read("coco", idx)
        assert got.found.all()
        assert (got.error <= np.array([acknowledged[i] for i in idx.tolist()])).all()
        assert integrity.scan(store.client, "failover").clean
        store.close()
        reader.close()


# -- runs on the cluster -----------------------------------------------------------------------------


def test_spin_ray_fit_and_the_store_commands_on_the_cluster(tiny_spin_data, redis_cluster, ray_local, capsys,
                                                            tmp_path):
    ns = f"fit-{uuid.uuid4().hex[:8]}"
    npz = tiny_spin_data["tiny-itw"]
    assert main(["fit", str(npz), "--store", redis_cluster.url, "--namespace", ns,
                 "--fitters", "1", "--iterations", "4", "--limit", "24", "--no-progress"]) == 0
    assert "fitted 24 of 24 sent" in capsys.readouterr().out
    flags = ["--url", redis_cluster.url, "--namespace", ns]
    with FitStore.open(redis_cluster.url, ns) as store:
        try:
            fits = store.read("tiny-itw", np.arange(24))
            assert fits.found.all() and store.count("tiny-itw") == 24 and store.layout.groups == 16
            assert integrity.scan(store.client, ns).clean
            worst = store.worst("tiny-itw", 3)[0]
            assert main(["store", "stats", *flags]) == 0 and "tiny-itw" in capsys.readouterr().out
            assert main(["store", "worst", *flags, "--k", "3"]) == 0
            said = capsys.readouterr().out
            assert all(str(i) in said for i in worst.tolist()), said
            out = tmp_path / "gallery"
            data = f"tiny-itw={npz}:{npz.parent}"
            assert main(["store", "gallery", *flags, "--worst", "3", "--out", str(out), "--data", data]) == 0
            assert len(list((out / "images").glob("*_fit.jpg"))) == 3
            assert main(["store", "export", str(tmp_path / "f.npy"), *flags, "--dataset", "tiny-itw"]) == 0
            assert np.array_equal(np.load(tmp_path / "f.npy")[:24, :72], fits.pose)
        finally:
            store.drop()


def test_an_async_run_on_the_cluster(tmp_path, tiny_spin_data, redis_cluster, ray_local):
    from spin_ray.cli.launch import launch
    from test_launch import tiny_config

    cfg = tiny_config(tmp_path, tiny_spin_data, redis_cluster.url,
                      train={"steps": 8, "checkpoint_every": 8, "report_images": 0})
    summary = launch(cfg, progress=False)
    assert summary["steps"] == 8
    pool = summary["pipeline"]["pool"]
    assert pool["written"] > 0 and pool["lost"] == 0
    with FitStore.open(redis_cluster.url, cfg.store.namespace) as store:
        try:
            assert store.stats().datasets and all(store.read_all(d).found.all() for d in store.datasets())
            assert integrity.scan(store.client, cfg.store.namespace).clean
        finally:
            store.drop()
