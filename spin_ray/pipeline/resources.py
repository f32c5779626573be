"""Can the run's actors ever be placed? Checked against the cluster before anything waits for them.

Ray queues an actor whose CPUs or GPUs no node has, and waits for it forever (an autoscaler only
logs "No available node types can fulfill resource request"). So before creating actors the driver
compares each request (trainer actor, Ray Train workers, fitters) with what one node has, over the
live nodes (`ray.nodes()`) and the node types an autoscaler may still add. Where the autoscaler
reports its node types (autoscaler v2 puts them in the GCS: `ray._private.state.state.get_cluster_config()`,
which Ray Train and Ray Data read for the same check) they count like nodes; an autoscaler that does
not report them (v1: `ray up`, older KubeRay) may bring anything, so nothing is refused and the
waits stay bounded by pipeline.startup_timeout_s. An autoscaler that has not yet reported (a cluster
still starting: its monitor's first status names no node) is waited for up to
pipeline.autoscaler_report_wait_s, then counts as unknown, never as a fixed cluster. On a fixed cluster a request no node can hold, or
a trainer and one fitter that cannot be placed side by side, is a PipelineError naming the config key.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from spin_ray.config import PipelineConfig, RunConfig
from spin_ray.errors import PipelineError

log = logging.getLogger(__name__)

RESOURCE_NAMES = {"CPU": "CPUs", "GPU": "GPUs"}
# What a request that fits no live node waits for the autoscaler's first report, unless told otherwise.
AUTOSCALER_REPORT_WAIT_S = PipelineConfig.model_fields["autoscaler_report_wait_s"].default
STATUS_POLL_S = 0.5


@dataclass(frozen=True)
class Request:
    """One kind of actor the run creates: what one needs, how many are wanted and how many must run."""

    what: str
    needs: dict[str, float]
    keys: dict[str, str]  # resource -> the config key that sets it
    count: int = 1
    at_least: int = 1


@dataclass(frozen=True)
class ClusterShape:
    """Per-node resource totals: live nodes, node types an autoscaler can add, and whether an autoscaler hides its types."""

    nodes: list[dict[str, float]]
    node_types: dict[str, dict[str, float]] = field(default_factory=dict)
    unknown_autoscaler: bool = False

    def describe(self) -> str:
        """'1 node' / '2 nodes and autoscaler node types gpu, cpu', for messages."""
        text = f"{len(self.nodes)} live node{'s' if len(self.nodes) != 1 else ''}"
        if self.node_types:
            text += " and autoscaler node types " + ", ".join(sorted(self.node_types))
        return text


def _fits(needs: dict[str, float], node: dict[str, float]) -> bool:
    return all(amount <= node.get(name, 0.0) + 1e-9 for name, amount in needs.items() if amount > 0)


def _reported_node_types() -> dict[str, dict[str, float]] | None:
    """Autoscaler v2's node types that can be added (max_count != 0); None if it reports none."""
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception as err:  # noqa: BLE001 - a GCS without the call: as if nothing were reported
        log.debug("no autoscaler cluster config (%s)", err)
        return None
    if config is None or not config.node_group_configs:
        return None
    return {group.name or f"type-{i}": {k: float(v) for k, v in group.resources.items()}
            for i, group in enumerate(config.node_group_configs) if group.max_count != 0}


def _status_hides_types(raw: bytes | str | None) -> bool | None:
    """From the v1 monitor's status: whether its autoscaler may add nodes of types it does not report.

    None while it has not reported its nodes yet: the monitor writes a status from its first loop,
    before its autoscaler has load metrics, so a status without nodes in it says nothing about them.
    """
    if not raw:
        return None
    try:
        report = json.loads(raw).get("autoscaler_report") or {}
    except (ValueError, AttributeError):
        return None
    names = {*(report.get("active_nodes") or {}), *(report.get("pending_launches") or {}),
             *(node[1] for node in report.get("pending_nodes") or [] if len(node) > 1)}
    if not names:
        return None
    # A local Ray's monitor runs the read-only provider, whose node types are its live nodes, named
    # "node_<id>"; any other name is a node type of a real (or Ray's fake multi-node) provider.
    return any(not str(name).startswith("node_") for name in names)


def _monitor_status() -> bytes | None:
    """The v1 monitor's latest autoscaling status in the GCS (None if there is none or no GCS to ask)."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        return _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    except Exception as err:  # noqa: BLE001
        log.debug("no autoscaler status (%s)", err)
        return None


def autoscaler_shape(
    nodes: list[dict[str, float]], wait_s: float,
    read_types: Callable[[], dict[str, dict[str, float]] | None] = _reported_node_types,
    read_status: Callable[[], bytes | str | None] = _monitor_status,
) -> ClusterShape:
    """The live nodes with what the autoscaler may add, waiting up to wait_s for its first report.

    A report of node types (v2) counts them; a v1 status that names node types means it may add
    anything (unknown); one that names only live nodes means a fixed cluster. No report within
    wait_s (a cluster still starting, or a loaded head) is unknown, never refused.
    """
    deadline = time.monotonic() + wait_s
    while True:
        node_types = read_types()
        if node_types is not None:
            return ClusterShape(nodes, node_types)
        hides = _status_hides_types(read_status())
        if hides is not None:
            return ClusterShape(nodes, unknown_autoscaler=hides)
        if time.monotonic() >= deadline:
            log.info("no autoscaler report of node types within %g s (pipeline.autoscaler_report_wait_s): resource "
                     "requests that no live node meets are not refused ahead (waits are bounded by "
                     "pipeline.startup_timeout_s)", wait_s)
            return ClusterShape(nodes, unknown_autoscaler=True)
        time.sleep(STATUS_POLL_S)


def cluster_shape(with_autoscaler: bool = True, report_wait_s: float | None = None) -> ClusterShape:
    """The connected cluster's live nodes and, if asked, what its autoscaler may add (inside a Ray session)."""
    import ray

    nodes = [{k: float(v) for k, v in node["Resources"].items()} for node in ray.nodes() if node.get("Alive")]
    if not with_autoscaler:
        return ClusterShape(nodes)
    return autoscaler_shape(nodes, AUTOSCALER_REPORT_WAIT_S if report_wait_s is None else report_wait_s)


def run_requests(cfg: RunConfig) -> list[Request]:
    """What a run asks Ray for: the trainer actor or Ray Train workers, and (async) the fitters."""
    pipeline = cfg.pipeline
    trainer_keys = {"CPU": "pipeline.trainer_num_cpus", "GPU": "pipeline.trainer_num_gpus"}
    requests = []
    if cfg.train.workers > 1:
        gpus = pipeline.trainer_num_gpus if cfg.device.startswith("cuda") else 0.0
        requests.append(Request(f"each of train.workers={cfg.train.workers} trainer workers",
                                {"CPU": pipeline.trainer_num_cpus, "GPU": gpus}, trainer_keys,
                                count=cfg.train.workers, at_least=cfg.train.workers))
    else:
        requests.append(Request("the trainer actor", {"CPU": pipeline.trainer_num_cpus,
                                                       "GPU": pipeline.trainer_num_gpus}, trainer_keys))
    if cfg.train.uses_fitter_pool:
        requests.append(fitter_request(cfg))
    return requests


def fitter_request(cfg: RunConfig) -> Request:
    """What one fitter actor asks for; at least one of pipeline.num_fitters must run."""
    pipeline = cfg.pipeline
    return Request("a fitter actor", {"CPU": pipeline.fitter_num_cpus, "GPU": pipeline.fitter_num_gpus},
                   {"CPU": "pipeline.fitter_num_cpus", "GPU": "pipeline.fitter_num_gpus"},
                   count=pipeline.num_fitters, at_least=1)


def _largest(shape: ClusterShape, name: str) -> float:
    return max([node.get(name, 0.0) for node in [*shape.nodes, *shape.node_types.values()]], default=0.0)


def _single_fit_error(request: Request, shape: ClusterShape) -> str | None:
    """Why no node (live, or a type the autoscaler can add) can ever hold one of `request`; None if one can."""
    if any(_fits(request.needs, node) for node in [*shape.nodes, *shape.node_types.values()]):
        return None
    for name in ("GPU", "CPU", *sorted(set(request.needs) - {"GPU", "CPU"})):
        amount = request.needs.get(name, 0.0)
        largest = _largest(shape, name)
        if amount > largest + 1e-9:
            unit = RESOURCE_NAMES.get(name, name)
            return (f"{request.keys.get(name, name)}: {amount:g}, but the largest node has {largest:g} {unit} "
                    f"({shape.describe()}): {request.what} could never start. Lower it, or add a node with "
                    f"{amount:g} {unit}")
    needs = ", ".join(f"{request.keys.get(n, n)}: {a:g}" for n, a in request.needs.items() if a > 0)
    return (f"{needs}: no node has all of these at once ({shape.describe()}): {request.what} could never start. "
            "Lower one of them, or add a node that has them all")


def _pack(requests: list[tuple[Request, int]], nodes: list[dict[str, float]]) -> bool:
    """First-fit-decreasing: can `count` of each request be placed on these nodes together?"""
    free = [dict(node) for node in nodes]
    items = [r for r, count in requests for _ in range(count)]
    items.sort(key=lambda r: (r.needs.get("GPU", 0.0), r.needs.get("CPU", 0.0)), reverse=True)
    for request in items:
        node = next((n for n in free if _fits(request.needs, n)), None)
        if node is None:
            return False
        for name, amount in request.needs.items():
            node[name] = node.get(name, 0.0) - amount
    return True


def _needs_text(request: Request) -> str:
    return ", ".join(f"{request.keys.get(n, n)}: {a:g}" for n, a in request.needs.items() if a > 0) or "nothing"


def check_requests(requests: list[Request], shape: ClusterShape) -> None:
    """Raise PipelineError naming the config key if a request can never be met on this cluster."""
    if shape.unknown_autoscaler:
        log.info("an autoscaler that does not report its node types runs: resource requests are not checked "
                 "ahead (waits are bounded by pipeline.startup_timeout_s)")
        return
    for request in requests:
        reason = _single_fit_error(request, shape)
        if reason is not None:
            raise PipelineError(reason)
    if shape.node_types:  # the autoscaler adds nodes of a type that holds each: they can all come
        return
    # A fixed cluster: what does not fit into its totals now never will (other actors only borrow).
    if not _pack([(r, r.at_least) for r in requests], shape.nodes):
        wanted = " and ".join(f"{r.at_least} x {r.what} ({_needs_text(r)})" for r in requests)
        totals = {name: sum(n.get(name, 0.0) for n in shape.nodes) for name in ("CPU", "GPU")}
        raise PipelineError(f"{wanted} cannot run side by side on this cluster ({shape.describe()}, "
                            f"{totals['CPU']:g} CPUs and {totals['GPU']:g} GPUs in all): lower those keys or add nodes")
    for i, request in enumerate(requests):
        if request.count == request.at_least or _pack([(r, r.count if j <= i else r.at_least)
                                                       for j, r in enumerate(requests)], shape.nodes):
            continue
        fit = max(n for n in range(request.at_least, request.count)
                  if _pack([(r, n if j == i else r.at_least) for j, r in enumerate(requests)], shape.nodes))
        raise PipelineError(f"pipeline.num_fitters: {request.count}, but only {fit} x {request.what} "
                            f"({_needs_text(request)}) fit on this cluster beside the rest ({shape.describe()}); "
                            f"the others would wait forever. Use pipeline.num_fitters: {fit} or fewer CPUs/GPUs each")


def check_placeable(requests: list[Request], autoscaler: bool = True, report_wait_s: float | None = None) -> None:
    """Fail in seconds, naming the key, if a request can never be placed (in a Ray session).

    The live nodes decide alone when everything fits on them (one `ray.nodes()` call); only then is
    the autoscaler asked what it may add (`autoscaler=False`: there is none, as on a local Ray),
    waiting up to report_wait_s (default: pipeline.autoscaler_report_wait_s's) for its first report.
    """
    try:
        check_requests(requests, cluster_shape(with_autoscaler=False))
    except PipelineError:
        if not autoscaler:
            raise
        check_requests(requests, cluster_shape(report_wait_s=report_wait_s))


def check_run_resources(cfg: RunConfig, autoscaler: bool = True) -> None:
    """check_placeable for the run's trainer actor or Ray Train workers and (async) its fitters."""
    check_placeable(run_requests(cfg), autoscaler, cfg.pipeline.autoscaler_report_wait_s)
