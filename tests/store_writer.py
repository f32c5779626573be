"""A fit-store writer process for the concurrency tests: imports numpy and the store only (no torch)."""

from __future__ import annotations

import numpy as np


def concurrent_writer(store, worker, n_samples, rounds, barrier, results):
    """Write `rounds` random errors for every sample, in batches of 64, then put (worker, errors, written)."""
    rng = np.random.default_rng(100 + worker)
    all_errors, total_written = [], 0
    barrier.wait(timeout=120)  # all writers start together, so their batches really interleave
    for _ in range(rounds):
        order = rng.permutation(n_samples)
        errors = rng.uniform(0, 1000, size=n_samples)
        for start in range(0, n_samples, 64):
            idx = order[start : start + 64]
            e = errors[idx]
            # The pose carries its own error so a test can tell which write a record came from.
            pose = np.repeat(e.astype(np.float32)[:, None], 72, axis=1)
            betas = np.full((idx.size, 10), worker, dtype=np.float32)
            total_written += int(store.keep_best("coco", idx, pose, betas, e, worker, "loop").sum())
        all_errors.append(errors)
    store.close()
    results.put((worker, np.stack(all_errors), total_written))
