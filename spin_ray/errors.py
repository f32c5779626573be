"""Errors meant for people: each says what was wrong and how to fix it."""


class SpinRayError(Exception):
    """Base class of every error spin-ray raises on purpose."""


class ConfigError(SpinRayError):
    """A run config is missing, malformed or has invalid values."""


class BodyModelError(SpinRayError):
    """A body model file is missing, unsafe, truncated or has wrong shapes."""


class InputError(SpinRayError):
    """Parameters or keypoints passed to a public function have the wrong shape or values."""


class FitStoreError(SpinRayError):
    """The fit store rejected a read or write, or Redis could not be reached."""


class FitStoreUnavailable(FitStoreError):
    """Redis stopped answering (connection lost or timed out): waiting may help, the request was fine."""


class StoreFullError(FitStoreError):
    """Redis is at its `maxmemory` with the noeviction policy and refuses writes: running again cannot help.

    `written` is how many rows of the refused call went in before Redis filled (None where unknown).
    """

    def __init__(self, message: str, written: int | None = None) -> None:
        super().__init__(message)
        self.written = written

    def __reduce__(self) -> tuple:
        # Keeps `written` through pickling (a Ray actor's error reaches the driver pickled).
        return (type(self), (str(self), self.written))


class DataDirInUseError(FitStoreError):
    """A live process owns the embedded server's data dir (holds its lock): a second owner would corrupt its AOF."""


class DataError(SpinRayError):
    """A dataset file or image is missing or malformed."""


class RenderError(SpinRayError):
    """The headless renderer could not start (no EGL/GL) or was given unusable input."""


class ModelError(SpinRayError):
    """Network weights or mean parameters are missing or do not fit the configured regressor."""


class PipelineError(SpinRayError):
    """The Ray pipeline (fitter pool, fitter actors, fit requests) was misused or could not keep running."""
