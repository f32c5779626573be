"""One pydantic model tree for a run, loaded from YAML; every value has a default and a description.

Long because the tree is the documentation of every key: one section class per YAML section, each field with
its default, bounds and description, read in one place.
"""

from __future__ import annotations

import re
from pathlib import Path
import typing
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spin_ray.errors import ConfigError
from spin_ray.redact import redact_url


# The devices a config may name. Only the spelling is checked here: a cluster job's config is read on a
# driver that may have no GPU while its workers do; model/device.resolve_device asks where it is used.
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


def device_name(value: str) -> str:
    """value if it names a device spin-ray runs on (cpu, cuda, cuda:N), else ValueError saying what to write."""
    if not DEVICE_PATTERN.fullmatch(value):
        hint = " (a GPU is cuda)" if value.lower().startswith("gpu") else ""
        raise ValueError(f"{value!r} is not a device spin-ray runs on: use cpu, cuda or cuda:N{hint}")
    return value


class Section(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BodyConfig(Section):
    model_path: Path | None = Field(
        None, description="SMPL model file (.pkl or .npz); None uses the embedded open model"
    )
    joint_regressor_extra: Path | None = Field(
        None, description="SPIN's J_regressor_extra.npy (9 dataset joints) for a real SMPL model"
    )
    joint_regressor_h36m: Path | None = Field(
        None, description="SPIN's J_regressor_h36m.npy for evaluation on a real SMPL model"
    )
    num_betas: int = Field(10, ge=1, le=300, description="number of shape coefficients")
    model_path_male: Path | None = Field(
        None, description="male SMPL model file: evaluation's ground truth of rows with gender 'm' (3DPW protocol; "
                          "predictions always use model_path)"
    )
    model_path_female: Path | None = Field(
        None, description="female SMPL model file: evaluation's ground truth of rows with gender 'f' (3DPW protocol)"
    )


class CameraConfig(Section):
    focal_length: float = Field(5000.0, gt=0, description="focal length in pixels of the crop camera")
    crop_size: int = Field(224, gt=0, description="side in pixels of the square crop the keypoints live in")


# SMPLify recipes (spin_ray/fitting/recipes.py); the one list, for the config and the command line.
Recipe = Literal["spin", "staged", "multistart"]
RECIPES: tuple[str, ...] = typing.get_args(Recipe)

# Training modes (spin_ray/train/modes.py makes each one's fit supervisor); the one list, for the config and the
# command line, and what each needs: the fit store, or the Ray pipeline's fitter pool.
Mode = Literal["sync", "async", "static", "2d"]
MODES: tuple[str, ...] = typing.get_args(Mode)
STORE_MODES: tuple[str, ...] = ("sync", "static", "async")
POOL_MODES: tuple[str, ...] = ("async",)


class FittingConfig(Section):
    iterations_camera: int = Field(50, ge=0, description="Adam iterations of the camera stage")
    iterations_body: int = Field(50, ge=0, description="Adam iterations of the body stage")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate of both stages")
    gmof_sigma: float = Field(100.0, gt=0, description="Geman-McClure sigma in pixels")
    pose_prior_weight: float = Field(4.78, ge=0, description="weight of the GMM pose prior")
    angle_prior_weight: float = Field(15.2, ge=0, description="weight of the elbow/knee bending prior")
    shape_prior_weight: float = Field(5.0, ge=0, description="weight of the quadratic shape prior")
    depth_loss_weight: float = Field(100.0, ge=0, description="camera stage: keeps depth near its initial value")
    pose_prior_path: Path | None = Field(
        None, description="gmm_08.pkl of SMPLify for real SMPL; None uses the embedded open prior"
    )
    batch_size: int = Field(
        256, gt=0, description="samples fitted together by the dataset fit (spin-ray fit --batch-size); 256 fitted "
                               "fastest with spin_compiled of 64-4,096 on one CPU thread, and 1.7x 64's fits/s with "
                               "spin (benchmarks/RESULTS.md, 'SMPLify, compiled')")
    valid_error_threshold: float = Field(100.0, gt=0, description="fits with a higher ranking error do not supervise")
    max_abs_beta: float = Field(3.0, gt=0, description="fits with any |beta| above this supervise only towards the mean")
    joints_only: bool = Field(True, description="use the joints-only forward in the loss (False: full mesh)")
    ignored_joints: tuple[str, ...] | None = Field(
        None, description="names of the 49 keypoints that the body stage and the ranking error ignore; None: SPIN's "
                          "five (OP Neck, OP RHip, OP LHip, Right Hip, Left Hip; spin_ray/body/joints.py)"
    )
    recipe: Recipe = Field(
        "spin", description="fitting.fit's recipe: spin (the paper's two stages, the conformance reference), staged "
                            "(depth released in the body stage, prior weights decreasing over steps) or multistart "
                            "(staged from the start and from the pose prior's component means, the best kept); "
                            "spin_ray/fitting/recipes.py, benchmarks/RESULTS.md"
    )
    compiled: bool | Literal["auto"] = Field(
        "auto", description="run each Adam iteration of the recipe as one torch.compile program (fitting/"
                            "compiled_stage.py): 1.4-2.8x the eager fits/s on CPU, equal to float rounding, but a "
                            "process first compiles (30-100 s, 15-30 s from inductor's disk cache). auto: training's "
                            "pool fitters compile (they fit for the whole run), a dataset fit or static fits only "
                            "where one process fits at least compile_min_samples; true: always; false: the eager "
                            "stages, spin equal to SPIN's SMPLify to the bit (the conformance reference)"
    )
    compile_min_samples: int = Field(
        20_000, ge=0, description="compiled: auto compiles a dataset fit's or static fits' stages from this many "
                                  "samples a process on (a warm compile costs what ~10,000 eager fits save at one "
                                  "thread; benchmarks/RESULTS.md, 'SMPLify, compiled')"
    )

    @field_validator("compiled", mode="before")
    @classmethod
    def _compiled_choice(cls, value: object) -> object:
        if isinstance(value, bool) or value == "auto":
            return value
        raise ValueError("compiled is true, false or auto")

    @field_validator("recipe", mode="before")
    @classmethod
    def _former_recipe(cls, value: object) -> object:
        if value == "spin_compiled":
            raise ValueError("recipe spin_compiled is now recipe spin with fitting.compiled: true (the default)")
        return value

    staged_prior_scales: tuple[float, ...] = Field(
        (3.0, 1.0, 0.3), min_length=1,
        description="staged: one body step per value, pose/angle/shape prior weights times the value in that step "
                    "(a last step at 0.1 fits detector noise: its 3D error rises while the 2D error falls)",
    )
    staged_iterations: int = Field(20, ge=0, description="staged: Adam iterations of each body step")
    multistart_starts: int = Field(
        8, ge=1, description="multistart: the start plus this many minus one of the pose prior's most likely "
                             "component means as body poses, screened together"
    )
    multistart_camera_iterations: int = Field(
        5, ge=0, description="multistart: camera-stage Adam iterations of the screening of every start"
    )
    multistart_screen_iterations: int = Field(
        10, ge=0, description="multistart: body iterations of the screening (first staged prior scale); the start "
                              "with the lowest ranking error then runs the remaining staged steps"
    )
    staged_depth_lr_scale: float = Field(
        50.0, gt=0, description="staged: the body steps move the camera depth this many times faster than x, y "
                                "(people stand ~50 m away from the 5000 px camera)"
    )


class StoreConfig(Section):
    url: str | None = Field(
        None, description="redis://, rediss:// or redis+cluster://host:port,... (Redis Cluster) URL; None starts an "
        "embedded redis-server"
    )
    url_env: str | None = Field(None, description="name of an environment variable holding the URL")
    namespace: str = Field("default", min_length=1, description="fit-store namespace, one per run")
    connect_timeout_s: float = Field(30.0, gt=0, description="give up connecting after this many seconds")
    outage_timeout_s: float = Field(
        600.0, gt=0, description="a running job waits this long for a lost Redis to come back before failing"
    )
    index_groups: int | None = Field(
        None, ge=1, le=1024, description="index groups per dataset of a namespace created by this run (a cluster "
        "spreads a dataset over its shards by group); None: 1 on one Redis node, 16 on a Redis Cluster"
    )


class PipelineConfig(Section):
    num_fitters: int = Field(2, ge=1, description="fitter actors in the pool at the start of a run")
    fitter_num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per fitter actor (fractions allowed)")
    fitter_num_gpus: float = Field(
        0.0, ge=0, description="GPUs Ray reserves per fitter actor (fractions below 1 allowed)"
    )
    fitter_threads: int = Field(1, ge=1, description="torch intra-op threads inside each fitter actor")
    fitter_device: str | None = Field(
        None, description="torch device of the fitters: cpu or cuda[:i]; None uses the run's device"
    )
    max_in_flight_per_fitter: int = Field(
        2, ge=1, description="calls sent to one fitter and not yet collected (a call: one request, or queued requests "
                             "fitted together up to fitter_batch_size samples)"
    )
    max_in_flight: int | None = Field(
        None, ge=1, description="requests in flight over the whole pool; None: num_fitters x max_in_flight_per_fitter"
    )
    max_pending: int | None = Field(
        None, ge=0, description="requests queued in the pool while every fitter is busy; None: max_in_flight"
    )
    fitter_batch_size: int | None = Field(
        256, ge=1, description="most samples one fitter call fits together: requests queued when a fitter frees up are "
                               "fitted as one batch up to this size (a request is never split); None: one request a "
                               "call. 256 fitted fastest of 64-4,096 on one CPU thread with compiled stages "
                               "(benchmarks/RESULTS.md, 'SMPLify, compiled')"
    )
    busy_policy: Literal["drop", "block"] = Field(
        "drop", description="pool full: drop the oldest queued request (submit never waits), or block submit"
    )
    block_timeout_s: float = Field(600.0, gt=0, description="busy_policy block: raise after waiting this long")
    max_restarts: int = Field(3, ge=0, description="times a dead fitter actor is recreated, per pool slot")
    staleness_steps: int = Field(
        50, ge=0, description="results of requests older than this many trainer steps are written but counted stale"
    )
    fitter_class: str = Field(
        "spin_ray.pipeline.fitter:FitterActor",
        description="module:Class of the fitter actors (FitterActor's calls: fit, fit_many, ping, pid); the default "
                    "runs SMPLify",
    )
    startup_timeout_s: float = Field(300.0, gt=0, description="wait this long for new fitters to answer a ping")
    autoscaler_report_wait_s: float = Field(
        10.0, ge=0, description="a request no live node meets waits this long for the autoscaler's first report of "
        "its node types; none by then: not refused ahead (the waits stay bounded by startup_timeout_s)"
    )
    metrics_window_s: float = Field(30.0, gt=0, description="seconds of recent results behind fits/s and mean error")
    trainer_num_cpus: float = Field(
        1.0, ge=0, description="CPUs Ray reserves for the trainer actor (each trainer worker when train.workers > 1)"
    )
    trainer_num_gpus: float = Field(
        0.0, ge=0, description="GPUs Ray reserves for the trainer actor (each trainer worker when train.workers > 1)"
    )
    submits_in_transit: int = Field(
        2, ge=1, description="train.workers > 1: a worker's submits on their way to the shared pool service; "
        "beyond this, submit drops (busy_policy drop) or waits (block)"
    )
    lookahead_steps: int = Field(
        0, ge=0, description="async: fit each batch from predictions made this many steps before it trains (0: off)"
    )
    fitter_schedule: dict[int, int] = Field(
        default_factory=dict, description="async: resize the pool during a run, {trainer step: number of fitters}"
    )
    ray_address: str | None = Field(None, description="Ray cluster to join (or RAY_ADDRESS); None starts a local Ray")
    ray_namespace: str = Field("spin-ray", min_length=1, description="Ray namespace of the run's actors")

    @field_validator("fitter_class")
    @classmethod
    def _module_and_class(cls, value: str) -> str:
        module, _, name = value.partition(":")
        if not module or not name.isidentifier():
            raise ValueError(f"give the fitter actor class as 'module:Class', got {value!r}")
        return value

    @field_validator("fitter_schedule")
    @classmethod
    def _schedule_ok(cls, value: dict[int, int]) -> dict[int, int]:
        bad = {step: n for step, n in value.items() if step < 1 or n < 1}
        if bad:
            raise ValueError(f"steps and fitter counts must be >= 1, got {bad}")
        return value

    @field_validator("fitter_device")
    @classmethod
    def _fitter_device_name(cls, value: str | None) -> str | None:
        return None if value is None else device_name(value)

    @field_validator("fitter_num_gpus")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise ValueError(f"Ray shares a GPU only in fractions below 1; above 1 ask for whole GPUs, got {value}")
        return value


class DatasetEntry(Section):
    name: str = Field(..., min_length=1, description="dataset name; samples are named (name, row)")
    npz: Path = Field(..., description="SPIN-format .npz file (imgname, center, scale, part, ...)")
    image_root: Path = Field(..., description="folder that the npz's imgname paths are relative to")
    ratio: float = Field(1.0, ge=0, description="relative share of this dataset in a mixed batch")


class DataConfig(Section):
    datasets: list[DatasetEntry] = Field(default_factory=list, description="training datasets and their mix")
    img_res: int = Field(224, gt=0, description="side in pixels of the image crop fed to the network")
    rot_factor: float = Field(30.0, ge=0, description="rotation std in degrees (clipped at twice this)")
    rot_prob: float = Field(0.4, ge=0, le=1, description="share of samples rotated (SPIN zeroes 60 %)")
    scale_factor: float = Field(0.25, ge=0, lt=1, description="box scale std, clipped to 1 +- this")
    noise_factor: float = Field(0.4, ge=0, le=1, description="per-channel colour gains uniform in 1 +- this")
    flip_prob: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0 loads in the trainer)")
    bad_samples: Literal["skip", "raise"] = Field(
        "skip", description="a sample with a missing image or bad annotations: skip it (counted) or raise"
    )
    ignore_3d: bool = Field(
        False, description="train as if no image had 3D ground truth: every row's SMPL and 3D joints are withheld, "
        "so all 3D supervision comes from fits (the paper's unpaired setting, Table 3; SPIN's --ignore_3d); "
        "held-out evaluation still uses the truth"
    )


class NetworkConfig(Section):
    backbone: Literal["resnet18", "resnet34", "resnet50", "mobilenet_v3_small"] = Field(
        "resnet18", description="torchvision backbone (random init; resnet50 is the paper's, for GPUs)"
    )
    pretrained_path: Path | None = Field(
        None, description="local ImageNet state dict for the backbone; None keeps the random init (never downloads)"
    )
    mean_params_path: Path | None = Field(
        None, description="SPIN's smpl_mean_params.npz; None computes mean parameters for the open model"
    )
    init_checkpoint: Path | None = Field(
        None, description="a spin-ray checkpoint, or shipped fp16 weights (spin_ray/model/assets/, `make pretrained`), "
        "whose network weights start this run (SPIN fine-tunes a pretrained HMR); only the weights are taken, not the "
        "optimiser, step or fits; None starts from pretrained_path or random"
    )
    ief_iterations: int = Field(3, ge=1, description="iterative error feedback steps of the regressor head")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout after each hidden layer of the regressor head")
    freeze_batchnorm: bool = Field(
        False, description="BatchNorm normalises with its running statistics (kept fixed) instead of the batch's, "
        "so a step does not depend on how its batch is split over data-parallel workers; for a pretrained backbone"
    )


class LossConfig(Section):
    keypoint_loss_weight: float = Field(5.0, ge=0, description="2D keypoint loss weight")
    keypoint_3d_loss_weight: float = Field(5.0, ge=0, description="3D keypoint loss weight (SPIN reuses the 2D one)")
    pose_loss_weight: float = Field(1.0, ge=0, description="rotation-matrix MSE against valid fits")
    beta_loss_weight: float = Field(0.001, ge=0, description="betas MSE against valid fits")
    shape_loss_weight: float = Field(0.0, ge=0, description="vertex L1 against valid fits (SPIN: off)")
    cam_loss_weight: float = Field(1.0, ge=0, description="camera prior (exp(-10 s))^2 keeping the scale positive")
    openpose_train_weight: float = Field(0.0, ge=0, description="confidence factor of the 25 OpenPose keypoints")
    gt_train_weight: float = Field(1.0, ge=0, description="confidence factor of the 24 dataset keypoints")
    loss_scale: float = Field(60.0, gt=0, description="factor on the weighted sum (SPIN multiplies its loss by 60)")


class TrainConfig(Section):
    mode: Mode = Field(
        "sync", description="sync: SPIN as published; async: Ray fitter pool; static: stored fits only; 2d: no fits"
    )
    steps: int = Field(10000, ge=0, description="optimiser steps of the run")
    batch_size: int = Field(64, gt=0, description="images per optimiser step (SPIN: 64)")
    lr: float = Field(5e-5, gt=0, description="Adam learning rate (SPIN: 5e-5)")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay (SPIN: 0)")
    num_threads: int = Field(1, ge=1, description="torch intra-op threads of the trainer")
    log_every: int = Field(100, gt=0, description="steps between logged scalars")
    checkpoint_every: int = Field(10000, gt=0, description="steps between checkpoints")
    init_store_from_static_fits: bool = Field(
        False, description="before training, fit each training dataset without stored fits from the mean pose (static fits)"
    )
    heldout: DatasetEntry | None = Field(
        None, description="held-out set for the end-of-run evaluation and report; None: synth-test on synthetic data"
    )
    report_images: int = Field(8, ge=0, description="held-out images with mesh overlays in the end-of-run report")
    evaluate_start: bool = Field(
        True, description="before the first step, evaluate the starting network on the held-out set too, so the "
        "summary and the report show start and end side by side (skipped on a resume)"
    )
    loss: LossConfig = Field(default_factory=LossConfig)
    workers: int = Field(
        1, ge=1, description="data-parallel trainer workers on Ray Train (DDP), each taking batch_size / workers "
        "of every step's batch; 1 runs the single trainer actor"
    )
    max_failures: int = Field(
        3, ge=-1, description="workers > 1: times Ray Train restarts the workers from the last checkpoint after one "
        "fails (-1: always)"
    )
    sync_batchnorm: bool = Field(
        True, description="workers > 1 on GPUs: BatchNorm statistics over the whole step's batch (SyncBatchNorm); "
        "CPU workers keep per-worker statistics (torch has no CPU SyncBatchNorm)"
    )

    @model_validator(mode="after")
    def _batch_splits_over_workers(self) -> TrainConfig:
        if self.batch_size % self.workers:
            raise ValueError(f"batch_size {self.batch_size} does not split evenly over {self.workers} workers; "
                             "use a multiple of train.workers")
        return self

    @property
    def uses_store(self) -> bool:
        """Whether this mode's supervisor reads or writes the fit store."""
        return self.mode in STORE_MODES

    @property
    def uses_fitter_pool(self) -> bool:
        """Whether this mode's fits come from the Ray pipeline's fitter pool (it trains on Ray only)."""
        return self.mode in POOL_MODES


SYNTH_SPLITS: tuple[str, ...] = ("synth-3d", "synth-itw", "synth-test")


class SynthConfig(Section):
    sizes: dict[str, int] = Field(
        default_factory=lambda: {"synth-3d": 1000, "synth-itw": 1000, "synth-test": 200},
        description="samples per split: synth-3d (SMPL + 3D truth), synth-itw (2D only), synth-test (held out)",
    )
    image_size: int = Field(256, ge=32, le=2048, description="side in pixels of the square synthetic images")
    seed: int = Field(0, ge=0, description="seed of the synthetic data (test split uses a disjoint stream)")
    cache_dir: Path | None = Field(None, description="folder of generated datasets; None uses <cache_dir>/synth")
    workers: int = Field(0, ge=0, description="generator processes; 0 uses every core")
    chunk_size: int = Field(50, ge=1, description="samples per seeded work unit (changing it changes the data)")
    image_format: Literal["jpg", "png"] = Field("jpg", description="image file format")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of the written images")
    max_yaw_deg: float = Field(45.0, ge=0, le=180, description="people turn up to +- this many degrees from facing the camera")
    large_turn_prob: float = Field(0.15, ge=0, le=1, description="share of samples with any yaw and a roll")
    max_roll_deg: float = Field(30.0, ge=0, le=180, description="largest in-plane roll of a large-turn sample")
    person_height: tuple[float, float] = Field(
        (0.55, 0.9), description="person box side as a fraction of the image side, uniform in this range"
    )
    focal_length: tuple[float, float] = Field(
        (400.0, 1500.0), description="focal length in pixels of the image camera, uniform in this range"
    )
    truncation_prob: float = Field(0.1, ge=0, le=1, description="share of samples pushed partly out of the image")
    occlusion_depth: float = Field(
        0.05, gt=0, description="metres: a keypoint is occluded if another part's surface at its pixel is this much closer"
    )
    self_occlusion_depth: float = Field(
        0.3, gt=0, description="metres: ... or its own (or a neighbouring) part's surface is this much closer"
    )
    surface_occlusion_depth: float = Field(
        0.1, gt=0, description="metres: the same for keypoints on the skin (face, feet, head top)"
    )
    detector_noise: float = Field(
        0.01, ge=0, description="detector keypoint noise std as a fraction of the person box side (times 0.5-3)"
    )
    detector_swap_prob: float = Field(0.05, ge=0, le=1, description="share of samples with a left/right limb swap")
    detector_dropout_prob: float = Field(0.05, ge=0, le=1, description="share of detector keypoints missed")
    occluded_dropout_prob: float = Field(0.5, ge=0, le=1, description="share of occluded detector keypoints missed")

    @field_validator("sizes")
    @classmethod
    def _known_splits(cls, sizes: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(sizes) - set(SYNTH_SPLITS))
        if unknown:
            raise ValueError(f"unknown synthetic split(s) {unknown}; the splits are {list(SYNTH_SPLITS)}")
        negative = {k: v for k, v in sizes.items() if v < 0}
        if negative:
            raise ValueError(f"split sizes must be >= 0, got {negative}")
        return sizes

    @field_validator("person_height", "focal_length")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"need 0 < low <= high, got {value}")
        return value


class RunConfig(Section):
    name: str = Field("spin-ray", description="run name, used in output paths")
    seed: int = Field(0, description="seed of every random generator in the run")
    device: str = Field("cpu", description="torch device of the trainer and fitters: cpu or cuda[:i]")
    output_dir: Path = Field(Path("outputs"), description="folder for checkpoints, reports, store data")
    cache_dir: Path = Field(Path(".cache"), description="folder for built assets: synthetic data, models")
    body: BodyConfig = Field(default_factory=BodyConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    fitting: FittingConfig = Field(default_factory=FittingConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        return device_name(value)


def _format_validation_error(err: ValidationError, source: str) -> str:
    """Render pydantic's errors as one line per problem with its dotted key path."""
    lines = []
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{path}' (typo? see spin_ray/config.py for the keys)")
        else:
            # An echoed URL may hold a password: shown redacted, whatever it looks like.
            shown = redact_url(item.get("input")) if "url" in path else repr(item.get("input"))
            lines.append(f"{source}: {path}: {item['msg']} (got {shown})")
    return "\n".join(lines)


def config_from_dict(data: dict, source: str = "config") -> RunConfig:
    """Validate a plain dict as a RunConfig, raising ConfigError with key paths."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run config."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder; give a YAML file (see configs/ for examples)")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (see configs/ for examples)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a run config is YAML in UTF-8)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    if data is None:
        # An empty file is more often a mistake than a wish for a full default run (GBs of data and outputs).
        raise ConfigError(f"{path} is empty or only comments: start from configs/local.yaml, or write `{{}}` in it "
                          f"to run every default on purpose")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return config_from_dict(data, source=str(path))


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML parse error on one line: what was wrong and where (line:column, 1-based)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def with_overrides(cfg: RunConfig, **sections: dict) -> RunConfig:
    """The config with command-line values put in its sections (None values ignored), validated like a config file.

    The one place command-line flags reach a config: `with_overrides(cfg, train={"steps": 10})`.
    """
    data = cfg.model_dump(mode="json")
    for section, values in sections.items():
        if section not in data or not isinstance(data[section], dict):
            raise ConfigError(f"no config section {section!r} to override")
        data[section].update({key: value for key, value in values.items() if value is not None})
    return config_from_dict(data, source="command line")


def with_store_url(cfg: RunConfig, url: str) -> RunConfig:
    """The config with its store at `url`, a URL already resolved (store.url_env is no longer read)."""
    return cfg.model_copy(update={"store": cfg.store.model_copy(update={"url": url, "url_env": None})})
