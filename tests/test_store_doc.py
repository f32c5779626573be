"""docs/STORE.md's redis-cli session and Python snippet, run against a real store: the page cannot drift."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from spin_ray.store.fit_store import FitStore

DOC = Path(__file__).resolve().parents[1] / "docs" / "STORE.md"
TEST_BODY_HASH = "ab" * 16


def _block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, f"docs/STORE.md should have one {language} block"
    return blocks[0]


def _filled(redis_server, namespace: str):
    rng = np.random.default_rng(0)
    store = FitStore.open(redis_server.url, namespace, body_model_hash=TEST_BODY_HASH)
    n = 30
    errors = rng.uniform(5, 200, n)
    store.keep_best("mpii", np.arange(n), rng.normal(0, 0.3, (n, 72)), rng.normal(0, 1, (n, 10)), errors, 7, "loop")
    store.keep_best("coco", np.arange(5), rng.normal(0, 0.3, (5, 72)), rng.normal(0, 1, (5, 10)),
                    rng.uniform(5, 50, 5), 0, "static")
    return store, errors


def test_the_redis_cli_session_finds_the_worst_fits_and_decodes_one(redis_server):
    store, errors = _filled(redis_server, "doc-cli")
    try:
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "URL": redis_server.url, "NS": "doc-cli", "DS": "mpii",
               "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", _block("bash")], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        worst = np.argsort(-errors)[:10]
        assert [int(x) for x in lines[0:20:2]] == worst.tolist()
        np.testing.assert_allclose([float(x) for x in lines[1:20:2]], errors[worst])
        assert int(lines[20]) == int((errors <= 100).sum())
        assert float(lines[21]) == errors[worst[0]] and lines[22:25] == ["7", "loop", "1"]
        pose = np.array(json.loads(lines[26]))  # a printed list of numbers
        np.testing.assert_allclose(pose, store.read("mpii", [worst[0]]).pose[0], atol=1e-4)
    finally:
        store.drop()
        store.close()


def test_the_python_snippet_loads_a_namespace_into_a_dataframe(redis_server):
    store, errors = _filled(redis_server, "doc-py")
    try:
        scope = {"URL": redis_server.url, "NS": "doc-py"}
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(_block("python"), str(DOC), "exec"), scope)
        table = scope["table"]
        assert len(table) == 35 and set(table["dataset"]) == {"mpii", "coco"}
        mpii = table[table["dataset"] == "mpii"].sort_values("index")
        np.testing.assert_allclose(mpii["error"].to_numpy(), errors)
        assert mpii["pose"].iloc[3].shape == (72,) and set(table["source"]) == {"loop", "static"}
        assert f"mpii {int(np.argmax(errors))}" in " ".join(printed.getvalue().split())
    finally:
        store.drop()
        store.close()
