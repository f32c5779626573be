"""SMPLify's Adam stage as one compiled program per iteration (torch.compile): loss, gradient, Adam step and the
failure bookkeeping of `smplify.run_stage`, fused by inductor into a few kernels.

The eager stage issues ~3,000 small tensor ops per iteration (forward and backward); at batch 64 on one CPU
thread their dispatch costs more than their arithmetic. Here the gradient comes from `torch.func.grad_and_value`
inside the traced program, so an iteration is one call with no autograd graph at run time. The update is
Adam's (torch.optim.Adam's formula, betas 0.9 / 0.999, eps 1e-8) and the failure rules are run_stage's: a
sample whose loss or parameters turn non-finite is frozen at its last good values and flagged. Results equal
the eager stage's to float rounding, not to the bit (fused kernels sum in another order): every recipe runs
it when `fitting.compiled` is on (the default, fitting/recipes.py); `compiled: false` keeps the eager stages,
where `spin` equals SPIN's SMPLify to the bit.

A compile failure or an unsupported platform runs the eager `run_stage` instead, with one warning line per
process and device type; so does torch's own switch TORCH_COMPILE_DISABLE=1 (one info line), which the test
suite sets so that its many short-lived processes do not each compile. Compiled code is cached by inductor on disk (its FX graph cache, under
TORCHINDUCTOR_CACHE_DIR or the temp folder), so a restarted fitter loads it in seconds instead of compiling.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import torch

from spin_ray.config import FittingConfig
from spin_ray.fitting.smplify import SmplifyParams, run_stage

log = logging.getLogger(__name__)

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as run_stage uses them
ADAM_EPS = 1e-8
FIELDS = ("global_orient", "body_pose", "betas", "camera_t")

# Device types whose compile failed in this process: a failed compile is not retried on every fit (it can take
# a minute). Process-wide like torch.compile's own cache, which it mirrors.
_FAILED_COMPILES: set[str] = set()


def adam_iteration(
    loss_fn: Callable[[SmplifyParams], torch.Tensor], trainable: tuple[str, ...], scales: dict[str, torch.Tensor],
    leaves: tuple[torch.Tensor, ...], last_good: dict[str, torch.Tensor], exp_avg: tuple[torch.Tensor, ...],
    exp_avg_sq: tuple[torch.Tensor, ...], step_size: torch.Tensor, bias_correction2_sqrt: torch.Tensor,
    failed: torch.Tensor,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], dict[str, torch.Tensor],
           torch.Tensor]:
    """One Adam iteration of run_stage as a pure function: (leaves, exp_avg, exp_avg_sq, last_good, failed) after it.

    Leaves are the trainable fields divided by their scales; failed samples are evaluated at last_good.
    """

    def values(current: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        return {name: leaf * scales[name] if name in scales else leaf for name, leaf in zip(trainable, current)}

    def total(*current: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        moved = values(current)
        safe = {name: torch.where(failed[:, None], last_good[name], moved[name]) if name in moved else last_good[name]
                for name in FIELDS}
        per_sample = loss_fn(SmplifyParams(**safe))
        now_failed = failed | ~torch.isfinite(per_sample)
        return torch.where(now_failed, torch.zeros_like(per_sample), per_sample).sum(), (per_sample, now_failed)

    grads, (_, (_, failed)) = torch.func.grad_and_value(total, argnums=tuple(range(len(leaves))), has_aux=True)(
        *leaves)
    beta1, beta2 = ADAM_BETAS
    new_leaves, new_avg, new_avg_sq = [], [], []
    for leaf, grad, avg, avg_sq in zip(leaves, grads, exp_avg, exp_avg_sq):
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0).masked_fill(failed[:, None], 0.0)
        avg = torch.lerp(avg, grad, 1 - beta1)
        avg_sq = avg_sq * beta2 + (1 - beta2) * grad * grad
        new_leaves.append(leaf - step_size * avg / (avg_sq.sqrt() / bias_correction2_sqrt + ADAM_EPS))
        new_avg.append(avg)
        new_avg_sq.append(avg_sq)
    moved = values(tuple(new_leaves))
    finite = torch.stack([torch.isfinite(moved[name]).all(dim=1) for name in trainable]).all(dim=0)
    failed = failed | ~finite
    good = dict(last_good)
    for name in trainable:
        good[name] = torch.where(failed[:, None], last_good[name], moved[name])
    return tuple(new_leaves), tuple(new_avg), tuple(new_avg_sq), good, failed


def out_of_memory(err: BaseException) -> bool:
    """Whether err is an allocator's refusal (CPU or CUDA): a batch too large, not a compile failure."""
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


def compiles(fitting: FittingConfig, samples: int | None = None) -> bool:
    """Whether `fitting` runs compiled stages in a process that fits `samples` samples (None: open-ended, e.g. a
    training run's pool fitter); fitting.compiled auto compiles from fitting.compile_min_samples on."""
    if fitting.compiled == "auto":
        return samples is None or samples >= fitting.compile_min_samples
    return bool(fitting.compiled)


def compiling_disabled() -> bool:
    """Whether torch's TORCH_COMPILE_DISABLE is set (said once a process): the eager stage runs instead."""
    disabled = bool(torch._dynamo.config.disable)
    if disabled:
        _say_disabled()
    return disabled


@functools.cache
def _say_disabled() -> None:
    log.info("TORCH_COMPILE_DISABLE is set: SMPLify runs its eager stages (fitting.compiled has no effect)")


@functools.cache
def compiled_iteration() -> Callable:
    """adam_iteration under torch.compile (one wrapper per process; dynamic batch: one program for every size)."""
    if not torch.cuda.is_available():
        # Inductor's C++ build says "No CUDA runtime is found" once a process on a CPU machine: nothing to act on.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(adam_iteration, fullgraph=True, dynamic=True)


def compiled_run_stage(
    params: SmplifyParams, trainable: tuple[str, ...], iterations: int, lr: float,
    failed: torch.Tensor, loss_fn: Callable[[SmplifyParams], torch.Tensor],
    scales: dict[str, torch.Tensor] | None = None,
    on_iteration: Callable[[SmplifyParams, torch.Tensor], None] | None = None,
) -> tuple[SmplifyParams, torch.Tensor]:
    """run_stage's contract with each iteration compiled; the eager run_stage (one warning) where compiling fails."""
    device = params.global_orient.device.type
    if iterations == 0 or device in _FAILED_COMPILES or compiling_disabled():
        return run_stage(params, trainable, iterations, lr, failed, loss_fn, scales, on_iteration)
    scales = scales or {}
    step = compiled_iteration()
    last_good = {name: getattr(params, name).detach().clone() for name in FIELDS}
    # Copies: a leaf that aliases last_good's tensor would make the compiled program specialise on the aliasing.
    leaves = tuple(last_good[name] / scales[name] if name in scales else last_good[name].clone() for name in trainable)
    exp_avg = tuple(torch.zeros_like(leaf) for leaf in leaves)
    exp_avg_sq = tuple(torch.zeros_like(leaf) for leaf in leaves)
    dtype, beta1, beta2 = leaves[0].dtype, *ADAM_BETAS
    for iteration in range(1, iterations + 1):
        # Python floats as 0-d tensors: a float argument would be a constant of the program, one compile each.
        step_size = torch.tensor(lr / (1 - beta1**iteration), dtype=dtype, device=leaves[0].device)
        correction = torch.tensor((1 - beta2**iteration) ** 0.5, dtype=dtype, device=leaves[0].device)
        try:
            started = time.perf_counter()
            out = step(loss_fn, trainable, scales, leaves, last_good, exp_avg, exp_avg_sq, step_size, correction,
                       failed)
            if iteration == 1 and time.perf_counter() - started > 1.0:
                log.info("compiled SMPLify stage %s ready in %.1f s", "+".join(trainable),
                         time.perf_counter() - started)
        except Exception as err:  # noqa: BLE001 - any compile failure falls back to the eager stage
            if iteration > 1 or out_of_memory(err):
                raise
            _FAILED_COMPILES.add(device)
            reason = str(err).splitlines()[0][:200] if str(err) else ""
            log.warning("torch.compile of the SMPLify stage failed on %s (%s: %s); fitting with the eager stage, "
                        "several times slower (benchmarks/RESULTS.md, 'SMPLify, compiled')", device,
                        type(err).__name__, reason)
            return run_stage(params, trainable, iterations, lr, failed, loss_fn, scales, on_iteration)
        leaves, exp_avg, exp_avg_sq, last_good, failed = out
        if on_iteration is not None:
            on_iteration(SmplifyParams(**last_good), failed)
    return SmplifyParams(**{name: last_good[name].detach() for name in FIELDS}), failed
