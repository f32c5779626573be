"""`spin-ray pool resize N --run NAME`: change a running job's fitter pool size from outside."""

from __future__ import annotations

import argparse
import os

from spin_ray.errors import PipelineError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `pool` and its subcommands."""
    pool = subparsers.add_parser("pool", help="the fitter pool of a running job")
    sub = pool.add_subparsers(dest="pool_command", metavar="SUBCOMMAND", required=True)
    resize = sub.add_parser("resize", help="change the number of fitter actors of a running async job")
    resize.add_argument("num_fitters", type=int, help="new number of fitter actors (>= 1)")
    resize.add_argument("--run", required=True, help="the run's config `name`")
    resize.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else 'auto')")
    resize.add_argument("--ray-namespace", default="spin-ray", help="the run's pipeline.ray_namespace")
    resize.set_defaults(func=_resize)


def _resize(args: argparse.Namespace) -> int:
    import ray

    from spin_ray.pipeline.trainer_actor import trainer_actor_name

    if args.num_fitters < 1:
        raise PipelineError(f"a pool needs at least one fitter, got {args.num_fitters}")
    address = args.address or os.environ.get("RAY_ADDRESS") or "auto"
    joined = not ray.is_initialized()
    if joined:
        try:
            ray.init(address=address, namespace=args.ray_namespace, logging_level="ERROR")
        except Exception as err:
            raise PipelineError(f"could not join the Ray cluster at {address}: {str(err).splitlines()[0]} "
                                "(Ray 2.60 token auth: set RAY_AUTH_MODE=token, see deploy/README.md)") from None
    try:
        name = trainer_actor_name(args.run)
        try:
            trainer = ray.get_actor(name, namespace=args.ray_namespace)
        except ValueError:
            raise PipelineError(f"no running trainer named {name!r} in Ray namespace {args.ray_namespace!r}; "
                                "check the run's config name and pipeline.ray_namespace") from None
        try:
            ray.get(trainer.resize_fitters.remote(args.num_fitters), timeout=60)
        except ray.exceptions.RayTaskError as err:
            raise PipelineError(str(err.as_instanceof_cause()).strip().splitlines()[-1]) from None
        print(f"run {args.run}: fitter pool resizing to {args.num_fitters} after the current step")
        return 0
    finally:
        if joined:
            ray.shutdown()
