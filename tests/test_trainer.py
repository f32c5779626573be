"""The trainer on tiny rendered data: loss falls, exact resume, refused checkpoints, NaN samples, a whole run."""

import json
import uuid
import warnings

import pytest
import torch

from spin_ray.body.body_model import BodyModel
from spin_ray.config import config_from_dict
from spin_ray.data.dataset import SpinImageDataset
from spin_ray.data.spin_format import load_spin_npz
from spin_ray.errors import ConfigError, ModelError
from spin_ray.fitting.priors import load_pose_prior
from spin_ray.model.hmr import HMR
from spin_ray.store.fit_store import FitStore
from spin_ray.train.sampling import make_train_loader
from spin_ray.train.supervision import NoFits, SyncFits
from spin_ray.train.trainer import Trainer

torch.set_num_threads(1)


def tiny_config(data, tmp_path, **train):
    """mobilenet_v3_small at 64 px, batch 8, short SMPLify: seconds per run."""
    root = data["tiny-3d"].parent
    return config_from_dict({
        "name": "tiny", "output_dir": str(tmp_path / "out"),
        "network": {"backbone": "mobilenet_v3_small", "dropout": 0.5},
        "data": {"img_res": 64, "datasets": [
            {"name": "tiny-3d", "npz": str(data["tiny-3d"]), "image_root": str(root)},
            {"name": "tiny-itw", "npz": str(data["tiny-itw"]), "image_root": str(root)}]},
        "fitting": {"iterations_camera": 5, "iterations_body": 5, "batch_size": 64},
        "store": {"namespace": f"t-{uuid.uuid4().hex[:10]}"},
        "train": {"mode": "2d", "steps": 10, "batch_size": 8, "lr": 1e-4, "log_every": 5, "checkpoint_every": 1000,
                  "heldout": {"name": "tiny-test", "npz": str(data["tiny-test"]), "image_root": str(root)},
                  "report_images": 4, **train},
    })


@pytest.fixture(scope="module")
def body():
    return BodyModel.embedded()


def _dataset(cfg, name="tiny-3d", train=True):
    entry = next(d for d in cfg.data.datasets if d.name == name)
    return SpinImageDataset(load_spin_npz(entry.npz, entry.image_root, name=name), cfg.data, train=train)


def _trainer(cfg, body, supervisor=None):
    torch.manual_seed(cfg.seed)
    return Trainer(cfg, HMR.from_config(cfg.network), body, supervisor)


def test_loss_falls_on_a_small_set(tiny_spin_data, tmp_path, body):
    cfg = tiny_config(tiny_spin_data, tmp_path, lr=3e-4)
    cfg = cfg.model_copy(update={"network": cfg.network.model_copy(update={"dropout": 0.0})})
    subset = torch.utils.data.Subset(_dataset(cfg, train=False), range(16))
    trainer = _trainer(cfg, body)
    metrics = trainer.fit_loop(make_train_loader(subset, 8, seed=0), 40, progress=False, tensorboard=False)
    losses = torch.tensor([m.loss for m in metrics])
    assert len(metrics) == 40 and torch.isfinite(losses).all()
    assert losses[-8:].mean() < 0.5 * losses[:4].mean(), losses.tolist()


def test_resume_continues_bit_for_bit_in_sync_mode(tiny_spin_data, tmp_path, body, redis_server):
    cfg = tiny_config(tiny_spin_data, tmp_path, mode="sync")
    data = torch.utils.data.ConcatDataset([_dataset(cfg), _dataset(cfg, "tiny-itw")])
    prior = load_pose_prior(cfg.fitting)

    def supervisor(namespace):
        store = FitStore.open(redis_server.url, namespace, body_model_hash=body.identity)
        return SyncFits(store, body, prior, cfg.fitting, cfg.camera)

    steps = 6
    straight = _trainer(cfg, body, supervisor(f"a-{uuid.uuid4().hex[:8]}"))
    expected = straight.fit_loop(make_train_loader(data, 8, cfg.seed), steps, progress=False, tensorboard=False)

    namespace = f"b-{uuid.uuid4().hex[:8]}"
    first = _trainer(cfg, body, supervisor(namespace))
    first.fit_loop(make_train_loader(data, 8, cfg.seed), steps // 2, progress=False, tensorboard=False)
    torch.manual_seed(1234)  # whatever happens in between must not matter
    resumed = Trainer.resume(first.checkpoint_path, cfg, supervisor(namespace), body)
    assert resumed.step == steps // 2 and resumed.samples_consumed == 8 * (steps // 2)
    rest = resumed.fit_loop(make_train_loader(data, 8, cfg.seed, start=resumed.samples_consumed), steps - steps // 2,
                            progress=False, tensorboard=False)
    assert [m.loss for m in resumed.history] == [m.loss for m in expected]
    assert [m.improved for m in rest] == [m.improved for m in expected[steps // 2:]]
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    with pytest.raises(Exception, match="stream item 0 but the trainer has consumed"):
        resumed.fit_loop(make_train_loader(data, 8, cfg.seed), 1, progress=False, tensorboard=False)


def test_checkpoint_of_another_config_is_refused(tiny_spin_data, tmp_path, body):
    cfg = tiny_config(tiny_spin_data, tmp_path)
    path = _trainer(cfg, body).save()
    other = cfg.model_copy(update={"network": cfg.network.model_copy(update={"backbone": "resnet18"})})
    with pytest.raises(ModelError, match="backbone: checkpoint has 'mobilenet_v3_small', config has 'resnet18'"):
        Trainer.resume(path, other, body=body)

    other_body = BodyModel.embedded()
    other_body.identity = "f" * 64
    with pytest.raises(ModelError, match="body_model: checkpoint has"):
        Trainer.resume(path, cfg, body=other_body)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable spin-ray checkpoint"):
        Trainer.resume(tmp_path / "junk.pt", cfg, body=body)


def test_sample_with_nan_keypoints_is_skipped_and_counted(tiny_spin_data, tmp_path, body):
    cfg = tiny_config(tiny_spin_data, tmp_path)
    batch = next(iter(make_train_loader(_dataset(cfg), 8, seed=0)))
    batch["keypoints"][2, 30, 0] = float("nan")
    batch["keypoints"][5] = float("nan")
    trainer = _trainer(cfg, body, NoFits())
    with pytest.warns(UserWarning, match="skipped 2 sample"):
        metrics = trainer.train_step(batch)
    assert metrics.nan_skipped == 2 and metrics.batch == 6 and trainer.nan_skipped == 2
    assert torch.isfinite(torch.tensor(metrics.loss))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    batch["keypoints"][:] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert trainer.train_step(batch) is None
    assert trainer.nan_skipped == 10 and trainer.step == 1


def _data_parallel_worker(rank, port, cfg, body, batches, out):
    """One of two gloo workers: the same initial weights, DistributedDataParallel, the given batches."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        trainer = _trainer(cfg, body, NoFits())
        trainer.wrap_model(lambda model: DistributedDataParallel(model))
        trainer.data_parallel = True
        results = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for batch in batches[rank]:
                metrics = trainer.train_step(batch)
                results.append({k: v.clone() for k, v in trainer.network.state_dict().items()})
                results.append(metrics.batch)
        torch.save(results, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_data_parallel_workers_agree_when_one_has_no_usable_sample_or_a_nan_loss(tiny_spin_data, tmp_path, body):
    """Without agreement a worker that drops its batch or skips its backward leaves the other in an all-reduce."""
    import multiprocessing
    import socket

    cfg = tiny_config(tiny_spin_data, tmp_path)
    good = next(iter(make_train_loader(_dataset(cfg), 8, seed=0)))
    no_keypoints = {**good, "keypoints": torch.full_like(good["keypoints"], float("nan"))}
    huge = good["keypoints"].clone()
    huge[..., :2] = 1e30  # finite labels whose squared error overflows: an infinite loss
    inf_loss = {**good, "keypoints": huge}
    batches = {0: [good, good], 1: [no_keypoints, inf_loss]}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_data_parallel_worker, args=(r, port, cfg, body, batches, tmp_path))
               for r in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    hung = [w for w in workers if w.is_alive()]
    for w in hung:
        w.kill()
    assert not hung, "a data-parallel worker hung in a collective"
    assert [w.exitcode for w in workers] == [0, 0]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    initial = _trainer(cfg, body).network.state_dict()
    after_first, after_second = rank0[0], rank0[2]
    # Step 1: rank 1 had no usable sample, yet both stepped together and hold the same weights.
    assert rank0[1] == 8 and rank1[1] == 0
    assert any(not torch.equal(after_first[k], initial[k]) for k in initial if k.endswith("weight"))
    for k in initial:
        assert torch.equal(rank0[0][k], rank1[0][k]), k
    # Step 2: rank 1's loss was infinite: both skipped the optimiser step, no weight changed anywhere.
    for k in initial:
        if "running" not in k and "num_batches" not in k:  # BatchNorm statistics move in every forward
            assert torch.equal(after_second[k], after_first[k]), k
            assert torch.equal(rank1[2][k], after_first[k]), k


def test_run_training_static_with_static_fits_init(tiny_spin_data, tmp_path):
    from spin_ray.train.run import run_training

    cfg = tiny_config(tiny_spin_data, tmp_path, mode="static", steps=4, checkpoint_every=2,
                      init_store_from_static_fits=True)
    summary = run_training(cfg, progress=False)
    out = tmp_path / "out"
    assert summary.steps == 4 and summary.mode == "static"
    assert summary.store["tiny-itw"]["records"] > 80  # static fits of (nearly) every sample
    assert summary.evaluation["samples"] == 32 and summary.baseline["name"] == "mean-pose"
    # The start is evaluated before the first step on the same held-out rows; 4 steps moved the network.
    assert summary.start_evaluation["name"] == "start" and summary.start_evaluation["samples"] == 32
    assert summary.start_evaluation["pa_mpjpe_mm"] != summary.evaluation["pa_mpjpe_mm"]
    assert (out / "report.png").stat().st_size > 10_000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    assert (out / "redis").is_dir() and (out / "checkpoints" / "last.pt").is_file()
    # Resuming the finished run with more steps continues from step 4.
    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 6,
                                                                        "init_store_from_static_fits": False})})
    again = run_training(more, resume=out / "checkpoints" / "last.pt", progress=False, report=False)
    assert again.steps == 6
    assert again.start_evaluation is None  # a resume does not know its run's start


def test_report_shows_the_same_heldout_images_at_start_and_end(tiny_spin_data, tmp_path):
    from PIL import Image

    from spin_ray.train.run import run_training

    heights = {}
    for evaluate_start in (False, True):
        cfg = tiny_config(tiny_spin_data, tmp_path / str(evaluate_start), steps=2, evaluate_start=evaluate_start)
        summary = run_training(cfg, progress=False)
        assert (summary.start_evaluation is not None) == evaluate_start
        heights[evaluate_start] = Image.open(summary.report).size[1]
    assert heights[True] > heights[False] + 100  # a second row of overlays: the start's, under the end's


def test_async_mode_needs_the_ray_pipeline(tiny_spin_data, tmp_path):
    from spin_ray.train.run import run_training

    with pytest.raises(ConfigError, match="spin_ray.launch"):
        run_training(tiny_config(tiny_spin_data, tmp_path, mode="async"), progress=False)


@pytest.fixture(scope="module")
def small_spin_data(tmp_path_factory):
    """Larger rendered splits (384 training samples each) for the end-to-end learning check."""
    from conftest import _render_tiny_split

    from spin_ray.render.renderer import MeshRenderer

    folder = tmp_path_factory.mktemp("small_spin")
    body = BodyModel.embedded()
    sizes = {"tiny-3d": (384, 21), "tiny-itw": (384, 22), "tiny-test": (64, 23)}
    with MeshRenderer(224, 224, body.faces) as renderer:
        return {name: _render_tiny_split(body, renderer, size, seed, folder, name, with_3d=name != "tiny-itw")
                for name, (size, seed) in sizes.items()}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["2d", "static", "sync"])
def test_each_mode_learns_and_beats_the_mean_pose_on_held_out_data(small_spin_data, tmp_path, mode):
    """The issue's check: a few hundred CPU steps (resnet18 at 64 px) make the loss fall and the held-out
    PA-MPJPE drop below the mean-pose baseline. About a minute per mode on 2 cores."""
    from spin_ray.train.run import run_training

    cfg = tiny_config(small_spin_data, tmp_path, mode=mode, steps=300, batch_size=16, lr=3e-4,
                      init_store_from_static_fits=mode == "static", report_images=0)
    cfg = cfg.model_copy(update={"network": cfg.network.model_copy(update={"backbone": "resnet18", "dropout": 0.0})})
    summary = run_training(cfg, progress=False, report=False)
    assert summary.final_loss < 0.6 * summary.first_loss
    assert summary.evaluation["pa_mpjpe_mm"] < summary.baseline["pa_mpjpe_mm"] - 3.0, (summary.evaluation,
                                                                                      summary.baseline)
    if mode == "sync":
        assert sum(d["loop_writes"] for d in summary.store.values()) > 300


def test_train_cli_runs_single_process_modes_and_async_on_ray(tiny_spin_data, tmp_path, capsys, ray_local):
    import yaml

    from spin_ray.cli import main

    cfg = tiny_config(tiny_spin_data, tmp_path, mode="async", steps=2, report_images=0)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["train", str(path), "--no-progress"]) == 0  # async: the fitter pool on Ray
    assert "async: 2 steps" in capsys.readouterr().out
    assert main(["train", str(path), "--mode", "2d", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2d: 2 steps" in printed and "PA-MPJPE" in printed
    assert (tmp_path / "out" / "checkpoints" / "last.pt").is_file()


def test_a_training_run_refuses_a_store_whose_dataset_name_belongs_to_another_dataset(tiny_spin_data, tmp_path,
                                                                                      redis_server):
    # The fits stored under a name belong to one dataset: training another file under that name would read them.
    from spin_ray.errors import FitStoreError
    from spin_ray.train.run import run_training

    cfg = tiny_config(tiny_spin_data, tmp_path, mode="static", steps=1)
    cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"url": redis_server.url})})
    body = BodyModel.from_config(cfg.body)
    with FitStore.from_config(cfg.store, body.identity) as store:
        store.bind_dataset("tiny-itw", "0" * 64, "elsewhere/tiny-itw.npz")
    with pytest.raises(FitStoreError, match=r"'tiny-itw'.*elsewhere/tiny-itw\.npz.*tiny-itw\.npz"):
        run_training(cfg, progress=False, report=False)
    assert not (tmp_path / "out" / "checkpoints").exists()
    with FitStore.from_config(cfg.store, body.identity) as store:
        store.drop()
