"""The single-process trainer: one step shared by every mode, the loop, logging and exact resume."""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from spin_ray.body.body_model import BodyModel
from spin_ray.config import RunConfig
from spin_ray.errors import DataError
from spin_ray.geometry import perspective_projection, pixels_to_normalised, weak_perspective_to_translation
from spin_ray.model.device import resolve_device
from spin_ray.model.hmr import HMR, HMROutput
from spin_ray.train.checkpoint import (
    check_identity,
    checkpoint_network,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    run_identity,
    save_checkpoint,
)
from spin_ray.train.losses import LossInputs, LossTargets, spin_loss
from spin_ray.train.sampling import stream_start
from spin_ray.train.supervision import Batch, FitSupervisor, FitTargets, NoFits


@dataclass(frozen=True)
class StepMetrics:
    """What one training step did, for the progress bar, TensorBoard and the report."""

    step: int  # optimiser steps completed after this one
    loss: float
    keypoints_2d: float
    keypoints_3d: float
    pose: float
    betas: float
    vertices: float
    camera: float
    batch: int  # samples used
    nan_skipped: int  # samples dropped for NaN / inf keypoints
    valid_fraction: float  # share of samples supervised by a valid fit (or ground truth)
    fits_found: float  # samples with a stored fit
    fitted: float  # fits computed during the step (sync)
    improved: float  # fits that replaced a worse stored one (sync)
    stored_error: float  # mean ranking error of the batch's stored fits (NaN if none)
    seconds: float

    def scalars(self) -> dict[str, float]:
        """Every number by name, step excluded."""
        return {k: float(v) for k, v in asdict(self).items() if k != "step"}


def blank_rows(batch: Batch, blank: torch.Tensor) -> dict[str, Any]:
    """The batch with rows where blank (B,) is true turned into label-free samples (keypoints zeroed with
    confidence 0, no 3D or SMPL truth): they stay in the forward pass and add nothing to the loss."""
    out = dict(batch)
    rows = blank[:, None, None]
    out["keypoints"] = torch.where(rows, torch.zeros_like(batch["keypoints"]), batch["keypoints"])
    if "S" in batch:
        out["S"] = torch.where(rows, torch.zeros_like(batch["S"]), batch["S"])
    for key in ("has_3d", "has_smpl"):
        if key in batch:
            out[key] = batch[key] & ~blank.to(batch[key].device)
    return out


def select_rows(batch: Batch, keep: torch.Tensor) -> dict[str, Any]:
    """The batch restricted to rows where keep (B,) is true; lists are filtered like tensors."""
    rows = keep.nonzero().flatten().tolist()
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == keep.shape[0]:
            out[key] = value[keep]
        elif isinstance(value, (list, tuple)) and len(value) == keep.shape[0]:
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value
    return out


def projected_keypoints(keypoints_3d: torch.Tensor, camera: torch.Tensor, focal_length: float, crop_size: int) -> torch.Tensor:
    """Model keypoints (B,49,3) through the weak-perspective camera (B,3), normalised to [-1, 1] over the crop."""
    translation = weak_perspective_to_translation(camera, focal_length, crop_size)
    pixels = perspective_projection(keypoints_3d, translation, focal_length, crop_size=crop_size)
    return pixels_to_normalised(pixels, crop_size)


class Trainer:
    """Model, optimiser, body model and fit supervisor; `train_step` is the step every mode shares."""

    def __init__(
        self, cfg: RunConfig, model: HMR, body: BodyModel, supervisor: FitSupervisor | None = None,
        output_dir: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device, "device")
        self.model = model.to(self.device)
        self.body = body.to(self.device)
        self.supervisor = supervisor if supervisor is not None else NoFits()
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr,
                                          weight_decay=cfg.train.weight_decay)
        self.output_dir = Path(output_dir) if output_dir is not None else Path(cfg.output_dir)
        self.step = 0
        self.samples_consumed = 0  # stream position of the data: items taken from the loader
        self.nan_skipped = 0
        self.history: list[StepMetrics] = []
        # Data-parallel hooks (spin_ray.pipeline.train_workers): each worker takes every
        # stream_stride-th stream item, so a batch of b advances the stream by b * stream_stride;
        # checkpoint_hook, if set, replaces fit_loop's own save() (rank 0 reports to Ray Train).
        self.stream_stride = 1
        self.checkpoint_hook: Callable[[Trainer], None] | None = None
        # Set under DistributedDataParallel: every worker must run the same forward, backward and
        # collective calls each step, so a worker never drops its whole batch or skips a backward alone.
        self.data_parallel = False

    # -- identity and checkpoints ---------------------------------------------------------------

    @property
    def identity(self) -> dict[str, Any]:
        """What a checkpoint of this trainer must match to be resumed."""
        return run_identity(self.cfg, self.body.identity)

    @property
    def network(self) -> HMR:
        """The bare regressor, also when wrap_model put it inside a wrapper (DistributedDataParallel)."""
        return getattr(self.model, "module", self.model)

    def wrap_model(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Train through wrap(model) (e.g. DistributedDataParallel); the optimiser and checkpoints keep the bare weights."""
        self.model = wrap(self.model)

    @property
    def checkpoint_path(self) -> Path:
        """Where fit_loop writes its checkpoints."""
        return self.output_dir / "checkpoints" / "last.pt"

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint (atomically) with every state needed to continue exactly."""
        return save_checkpoint(path or self.checkpoint_path, {
            "model": self.network.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "step": self.step,
            "samples_consumed": self.samples_consumed,
            "nan_skipped": self.nan_skipped,
            "config": self.cfg.model_dump(mode="json"),
            "identity": self.identity,
            "rng": rng_states(),
            "history": [asdict(m) for m in self.history],
        })

    @classmethod
    def resume(
        cls, path: str | Path, cfg: RunConfig, supervisor: FitSupervisor | None = None,
        body: BodyModel | None = None, output_dir: str | Path | None = None,
    ) -> Trainer:
        """A trainer in the exact state of checkpoint path; refused if it was written under another config."""
        payload = load_checkpoint(path)
        body = body if body is not None else BodyModel.from_config(cfg.body)
        check_identity(payload.get("identity", {}), run_identity(cfg, body.identity), path)
        model = checkpoint_network(payload, cfg, body, str(path), "this run",
                                   "resume under the config the checkpoint was written with")
        trainer = cls(cfg, model, body, supervisor, output_dir)
        trainer.optimiser.load_state_dict(payload["optimiser"])
        trainer.step = int(payload["step"])
        trainer.samples_consumed = int(payload["samples_consumed"])
        trainer.nan_skipped = int(payload.get("nan_skipped", 0))
        trainer.history = [StepMetrics(**m) for m in payload.get("history", [])]
        restore_rng_states(payload["rng"])
        return trainer

    # -- the step -------------------------------------------------------------------------------

    def loss_inputs(self, pred: HMROutput) -> LossInputs:
        """Body-model keypoints and their projection for the predictions."""
        cam = self.cfg.camera
        vertices = None
        if self.cfg.train.loss.shape_loss_weight > 0:
            out = self.body(pred.rotmat, pred.betas)
            vertices, keypoints = out.vertices, out.keypoints
        else:
            keypoints = self.body.keypoints(pred.rotmat, pred.betas)
        keypoints_2d = projected_keypoints(keypoints, pred.camera, cam.focal_length, cam.crop_size)
        return LossInputs(pred.rotmat, pred.betas, pred.camera, keypoints_2d, keypoints, vertices)

    def loss_targets(self, batch: Batch, fits: FitTargets | None) -> LossTargets:
        """The batch's labels plus the supervisor's fits."""
        fit_vertices = None
        if fits is not None and self.cfg.train.loss.shape_loss_weight > 0:
            with torch.no_grad():
                fit_vertices = self.body(fits.rotmat, fits.betas).vertices
        return LossTargets(
            keypoints_2d=batch["keypoints"], keypoints_3d=batch["S"], has_3d=batch["has_3d"].bool(),
            fit_rotmat=None if fits is None else fits.rotmat,
            fit_betas=None if fits is None else fits.betas,
            fit_error=None if fits is None else fits.error,
            has_smpl=None if fits is None else fits.has_smpl,
            fit_vertices=fit_vertices,
        )

    def _to_device(self, batch: Batch) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _all_workers(self, ok: bool) -> bool:
        """ok on every data-parallel worker (ok itself for a single trainer)."""
        if not self.data_parallel:
            return ok
        flag = torch.tensor([int(ok)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def predict(self, batch: Batch) -> HMROutput:
        """A no-grad forward of the current weights on a batch (lookahead), leaving the model in train mode."""
        with torch.no_grad():
            return self.model(batch["img"].to(self.device))

    def train_step(self, batch: Batch) -> StepMetrics | None:
        """Forward, fit targets, SPIN loss, backward, optimiser step; None if no usable sample was left."""
        started = time.perf_counter()
        batch = self._to_device(batch)
        finite = torch.isfinite(batch["keypoints"]).flatten(1).all(dim=1)
        dropped = int((~finite).sum())
        if dropped:
            self.nan_skipped += dropped
            warnings.warn(f"step {self.step}: skipped {dropped} sample(s) with NaN/inf keypoints "
                          f"({self.nan_skipped} so far)", stacklevel=2)
            if self.data_parallel:
                batch = blank_rows(batch, ~finite)
            else:
                batch = select_rows(batch, finite)
                if not bool(finite.any()):
                    return None
        self.model.train()
        pred = self.model(batch["img"])
        # Fits are written with the number of the step making them (1-based): 0 is left to static fits.
        fits = self.supervisor.targets(batch, pred, self.step + 1)
        terms = spin_loss(self.loss_inputs(pred), self.loss_targets(batch, fits), self.cfg.train.loss,
                          self.cfg.fitting)
        if not self._all_workers(bool(torch.isfinite(terms.total))):
            warnings.warn(f"step {self.step}: non-finite loss {float(terms.total)} (on this worker or another); "
                          "optimiser step skipped", stacklevel=2)
            self.optimiser.zero_grad(set_to_none=True)
        else:
            self.optimiser.zero_grad(set_to_none=True)
            terms.total.backward()
            self.optimiser.step()
        detached = HMROutput(*(t.detach() for t in pred))
        self.supervisor.after_step(batch, detached, self.step + 1)
        self.step += 1
        counts = fits.counts if fits is not None else {}
        loss, kp2d, kp3d, pose, betas, verts, cam = (float(t.detach()) for t in terms[:7])
        metrics = StepMetrics(
            step=self.step, loss=loss, keypoints_2d=kp2d, keypoints_3d=kp3d, pose=pose, betas=betas,
            vertices=verts, camera=cam, batch=int(finite.sum()),
            nan_skipped=dropped, valid_fraction=float(terms.valid_fits.float().mean()),
            fits_found=counts.get("found", 0.0), fitted=counts.get("fitted", 0.0),
            improved=counts.get("improved", 0.0), stored_error=counts.get("stored_error", math.nan),
            seconds=time.perf_counter() - started,
        )
        self.history.append(metrics)
        return metrics

    # -- the loop -------------------------------------------------------------------------------

    def fit_loop(self, loader: Iterable[Mapping[str, Any]], steps: int, progress: bool = True,
                 tensorboard: bool = True, on_step: Callable[[StepMetrics], None] | None = None,
                 ) -> list[StepMetrics]:
        """Run `steps` steps from loader; checkpoint every train.checkpoint_every steps and at the end.

        on_step, if given, is called with each step's metrics (e.g. to report progress to a driver).
        """
        start = stream_start(loader)  # type: ignore[arg-type]
        if start is not None and start != self.samples_consumed:
            raise DataError(f"the loader starts at stream item {start} but the trainer has consumed "
                            f"{self.samples_consumed}: build it with make_train_loader(..., "
                            "start=trainer.samples_consumed)")
        writer = self._tensorboard() if tensorboard else None
        done: list[StepMetrics] = []
        bar = tqdm(total=steps, desc=f"train {self.supervisor.name}", unit="step", disable=not progress)
        iterator = iter(loader)
        batch = next(iterator, None) if steps > 0 else None
        # Batches after the current one: one for the store-read prefetch, or lookahead_steps of them
        # when the supervisor wants predictions for batch t+k made at step t.
        lookahead = max(0, int(getattr(self.supervisor, "lookahead_steps", 0)))
        window: deque[Mapping[str, Any]] = deque()
        fitted, fit_seconds = 0.0, 0.0
        try:
            for i in range(steps):
                if batch is None:
                    raise DataError(f"the loader ran out of batches after {i} of {steps} steps")
                self.samples_consumed += len(batch["index"]) * self.stream_stride
                while len(window) < max(1, lookahead) and i + 1 + len(window) < steps:
                    upcoming = next(iterator, None)
                    if upcoming is None:
                        break
                    window.append(upcoming)
                    if lookahead:
                        self.supervisor.lookahead(upcoming, self.predict)
                if window:
                    self.supervisor.prefetch(window[0])
                metrics = self.train_step(batch)
                batch = window.popleft() if window else None
                bar.update(1)
                if metrics is not None:
                    done.append(metrics)
                    if on_step is not None:
                        on_step(metrics)
                    fitted += metrics.fitted
                    fit_seconds += metrics.seconds
                    bar.set_postfix(loss=f"{metrics.loss:.3f}", kp2d=f"{metrics.keypoints_2d:.4f}",
                                    fits_s=f"{fitted / max(fit_seconds, 1e-9):.1f}",
                                    store_err=f"{metrics.stored_error:.1f}", valid=f"{metrics.valid_fraction:.2f}")
                    if writer is not None and (self.step % self.cfg.train.log_every == 0 or i + 1 == steps):
                        for name, value in metrics.scalars().items():
                            writer.add_scalar(f"train/{name}", value, self.step)
                if self.step % self.cfg.train.checkpoint_every == 0:
                    self._checkpoint()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        self._checkpoint()
        return done

    def _checkpoint(self) -> None:
        """fit_loop's periodic and final checkpoint: the hook if one is set, else save()."""
        if self.checkpoint_hook is not None:
            self.checkpoint_hook(self)
        else:
            self.save()

    def _tensorboard(self):
        """A SummaryWriter under output_dir/tensorboard, or None (with a warning) without tensorboard."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)",
                          stacklevel=2)
            return None
        return SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
