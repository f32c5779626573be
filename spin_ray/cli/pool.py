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
    resize.add_argument("--address", default=None,
                        help="Ray address (default: RAY_ADDRESS, else the live head of Ray's address file, "
                             "else the one Ray running on this machine)")
    resize.add_argument("--ray-namespace", default="spin-ray", help="the run's pipeline.ray_namespace")
    resize.set_defaults(func=_resize)


def _resize(args: argparse.Namespace) -> int:
    import ray

    from spin_ray.pipeline.ray_errors import spin_error
    from spin_ray.pipeline.trainer_actor import trainer_actor_name

    if args.num_fitters < 1:
        raise PipelineError(f"a pool needs at least one fitter, got {args.num_fitters}")
    joined = not ray.is_initialized()
    address = _address(args.address) if joined else None
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
        except ray.exceptions.RayError as err:
            raise spin_error(err, f"run {args.run}: resizing the fitter pool failed") from None
        print(f"run {args.run}: fitter pool resizing to {args.num_fitters} after the current step")
        return 0
    finally:
        if joined:
            ray.shutdown()


def _address(given: str | None) -> str:
    """The cluster to reach: --address, RAY_ADDRESS, a live head from Ray's address file, or the one live local Ray.

    Never Ray's own 'auto', which trusts an address file that a dead head left behind (and then waits on it).
    """
    from spin_ray.pipeline.ray_connect import live_gcs_addresses, live_recorded_head, recorded_head

    address = given or os.environ.get("RAY_ADDRESS")
    if address and address != "auto":
        return address
    head = live_recorded_head()
    if head:
        return head
    live = live_gcs_addresses()
    if len(live) == 1:
        return live[0]
    stale = recorded_head()
    found = f"{len(live)} Ray clusters run here ({', '.join(live)})" if live else "no Ray runs on this machine"
    raise PipelineError(f"{found}{f' (the address file names {stale}, which is dead)' if stale else ''}: "
                        "pass --address or set RAY_ADDRESS to the run's cluster")
