"""Errors that come back from Ray actors, tasks and Ray Train, as the one-line SpinRayErrors a local call raises.

Ray wraps what an actor raises: a method's exception arrives as a RayTaskError (the original object
in `.cause`), an exception in an actor's `__init__` only as text inside a RayActorError, and a Ray
Train worker's as text inside TrainingFailedError. `spin_error` turns each back into the SpinRayError
that was raised (same type, same message), so a run that fails inside an actor reads like one that
fails in the driver; anything else becomes a PipelineError with the error's most telling line.
"""

from __future__ import annotations

import re

from spin_ray import errors
from spin_ray.errors import PipelineError, SpinRayError

# "spin_ray.errors.ConfigError: message" (or the bare class name), the last line of a remote traceback.
_SPIN_LINE = re.compile(r"^(?:spin_ray\.errors\.)?([A-Z]\w*): (.+)$")
LINE_LIMIT = 500


def cause_line(err: BaseException) -> str:
    """The most telling short line of a (Ray) error: the last `SomeError: message` line, else its first line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error:" in line and not line.startswith("File "):
            return line[:LINE_LIMIT]
    return (lines[0] if lines else type(err).__name__)[:LINE_LIMIT]


def _spin_class(name: str) -> type[SpinRayError] | None:
    found = getattr(errors, name, None)
    return found if isinstance(found, type) and issubclass(found, SpinRayError) else None


def remote_spin_error(err: BaseException) -> SpinRayError | None:
    """The SpinRayError raised inside an actor, task or Ray Train worker that `err` carries; None if none."""
    cause = getattr(err, "cause", None)  # RayTaskError keeps the original exception
    if isinstance(cause, SpinRayError):
        return cause
    if isinstance(err, SpinRayError):
        return err
    for line in reversed([line.strip() for line in str(err).splitlines() if line.strip()]):
        match = _SPIN_LINE.match(line)
        if match and (spin_class := _spin_class(match.group(1))) is not None:
            return spin_class(match.group(2)[:LINE_LIMIT])
    return None


def spin_error(err: BaseException, context: str) -> SpinRayError:
    """`err` as a one-line SpinRayError: the one raised remotely if there was one, else PipelineError("context: cause")."""
    return remote_spin_error(err) or PipelineError(f"{context}: {cause_line(err)}")
