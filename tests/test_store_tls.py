"""The fit store over TLS: one Redis node and a 3-master Redis Cluster serving TLS only, with a private CA.

What a user of a self-managed TLS Redis writes: `rediss://host:port?ssl_ca_certs=/path/ca.pem` or
`rediss+cluster://host:port,...?ssl_ca_certs=...`. Certificates and servers are real (tests/tls_fixture.py).
"""

from __future__ import annotations

import subprocess
import time
import uuid

import numpy as np
import pytest

from spin_ray.cli import main
from spin_ray.errors import FitStoreError
from spin_ray.store import integrity
from spin_ray.store.fit_store import FitStore
from spin_ray.store.server import connect, free_port

from conftest import TEST_BODY_HASH
from tls_fixture import make_certificates, missing_tls_tools, tls_redis_server, tls_server_args


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    why = missing_tls_tools(folder / "bin")
    if why:
        pytest.skip(why)
    return make_certificates(folder / "certs")


@pytest.fixture(scope="module")
def tls_node(tls_files, tmp_path_factory):
    """One Redis serving TLS only on a free port: (its port, the process)."""
    folder = tmp_path_factory.mktemp("tls-node")
    port = free_port()
    proc = subprocess.Popen([str(tls_redis_server(folder / "bin")), *tls_server_args(tls_files, port),
                             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        connect(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls_files.ca}", 20).close()
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _write_and_check(url: str) -> None:
    """Fits written through `url` are read back, kept by the lower error, and listed by the store commands."""
    ns = f"tls-{uuid.uuid4().hex[:8]}"
    store = FitStore.open(url, ns, TEST_BODY_HASH)
    try:
        rng = np.random.default_rng(0)
        pose, betas = rng.normal(size=(64, 72)), rng.normal(size=(64, 10))
        store.keep_best("coco", np.arange(64), pose, betas, np.arange(64, dtype=float) + 10, 0, "loop")
        store.keep_best("coco", np.arange(32), pose[:32] + 1, betas[:32], np.full(32, 5.0), 1, "loop")
        got = store.read("coco", np.arange(64))
        assert got.found.all()
        np.testing.assert_allclose(got.error, np.r_[np.full(32, 5.0), np.arange(32, 64) + 10.0])
        np.testing.assert_allclose(got.pose[32:], pose[32:], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got.pose[:32], pose[:32] + 1, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(store.worst("coco", 3)[0], [63, 62, 61])
        assert integrity.scan(store.client, ns).clean
        assert main(["store", "stats", "--url", url, "--namespace", ns]) == 0
    finally:
        store.drop()
        store.close()


def test_one_tls_node_takes_the_whole_store(tls_node, tls_files, capsys):
    _write_and_check(f"rediss://127.0.0.1:{tls_node}/0?ssl_ca_certs={tls_files.ca}")
    assert "coco" in capsys.readouterr().out


def test_a_tls_cluster_takes_the_whole_store(tls_files, tmp_path, capsys):
    from cluster_fixture import LocalCluster

    binary = tls_redis_server(tmp_path / "bin")
    with LocalCluster(tmp_path / "c", masters=3, replicas=1, tls=tls_files, server_binary=binary) as cluster:
        assert cluster.url.startswith("rediss+cluster://")
        _write_and_check(cluster.url)
        assert "coco" in capsys.readouterr().out
        # A plain rediss:// URL at one node of it is refused as for a plain cluster.
        with pytest.raises(FitStoreError, match="is a node of a Redis Cluster, not a single Redis: use rediss\\+cluster"):
            connect(cluster.node_url(cluster.ports[0]), 5)


def test_tls_bad_input_is_one_line_and_does_not_wait(tls_node, tls_files, tmp_path):
    url = f"rediss://127.0.0.1:{tls_node}/0"
    started = time.monotonic()
    with pytest.raises(FitStoreError) as unknown_ca:
        connect(url, 30)
    assert time.monotonic() - started < 10  # a failed certificate check is not retried for 30 s
    assert "not verified" in str(unknown_ca.value) and "ssl_ca_certs=/path/ca.pem" in str(unknown_ca.value)
    with pytest.raises(FitStoreError, match="ssl_ca_certs=/nowhere/ca.pem is not a file"):
        connect(url + "?ssl_ca_certs=/nowhere/ca.pem", 5)
    with pytest.raises(FitStoreError, match="to a plain connection: write rediss://"):
        connect(f"redis://127.0.0.1:{tls_node}/0?ssl_ca_certs={tls_files.ca}", 5)
    with pytest.raises(FitStoreError, match="ssl_cert_reqs=maybe is not one of none, optional, required"):
        connect(f"{url}?ssl_cert_reqs=maybe", 5)
    with pytest.raises(FitStoreError, match="'socket_timeout', which a Redis Cluster URL does not take"):
        connect(f"rediss+cluster://127.0.0.1:{tls_node}?socket_timeout=3", 5)
    # A plain client at the TLS port, and TLS at a plain port: said for what they are.
    with pytest.raises(FitStoreError, match="resets plain connections: then write rediss://"):
        connect(f"redis://127.0.0.1:{tls_node}/0", 1)
    plain = subprocess.Popen([str(tls_redis_server(tmp_path / "bin")), "--port", str(port := free_port()),
                              "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        connect(f"redis://127.0.0.1:{port}/0", 10).close()
        with pytest.raises(FitStoreError, match="a plain port never finishes the handshake"):
            connect(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls_files.ca}", 1)
    finally:
        plain.terminate()
        plain.wait(10)
