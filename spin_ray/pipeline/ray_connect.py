"""Which Ray to join when none is configured: a live local head, never the dead one Ray's address file may name.

`ray start --head` writes the head's GCS address to `ray_current_cluster` in Ray's temp dir
(/tmp/ray, or $RAY_TMPDIR/ray) and only `ray stop` removes it. After a crash or reboot the file names
a dead GCS, and a plain `ray.init()` keeps trying to reach it (40 s and more) or refuses local
options ("When connecting to an existing cluster, num_cpus and num_gpus must not be provided").
Here a head counts as live only if a GCS process of this machine serves that port and accepts a
TCP connection within a second; otherwise callers start their own Ray with `address="local"`,
which reads neither the file nor RAY_ADDRESS.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 1.0


def _port(address: str) -> int | None:
    try:
        return int(address.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def live_gcs_addresses() -> list[str]:
    """GCS addresses (host:port) of the Ray clusters whose processes run on this machine."""
    from ray._private import services

    services.find_gcs_addresses.cache_clear()
    return sorted(services.find_gcs_addresses())


def _accepts(address: str, timeout_s: float) -> bool:
    host, port = address.rsplit(":", 1)[0], _port(address)
    if port is None:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def recorded_head() -> str | None:
    """The GCS address in Ray's address file (what `ray start --head` wrote), live or not; None without a file."""
    from ray._common.utils import get_ray_address_file

    try:
        with open(get_ray_address_file(None)) as file:
            return file.read().strip() or None
    except OSError:
        return None


def live_recorded_head() -> str | None:
    """The address file's head if a GCS on this machine serves it and answers within a second; else None."""
    recorded = recorded_head()
    if recorded is None:
        return None
    live = [a for a in live_gcs_addresses() if _port(a) == _port(recorded)]
    if live and _accepts(live[0], CONNECT_TIMEOUT_S):
        return live[0]
    log.info("Ray's address file names %s, which no running Ray serves (a head that died without `ray stop`); "
             "ignoring it", recorded)
    return None
