"""What a stored fit is: pydantic models for the store's edges, batch-read arrays, checked byte packing.

A record is one hash in Redis. Its pose and betas are raw little-endian float32 bytes; every other
field is a decimal string. Nothing read from Redis is ever unpickled: `store/decode.py` turns bytes
into arrays only after every field has been checked against the schema below.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from spin_ray.errors import FitStoreError

SCHEMA_VERSION = 2  # 2: hash-tagged keys, the error index in groups (store/keys.py); 1: one index per dataset
POSE_SIZE = 72  # 24 SMPL joints x axis-angle, canonical frame
BETAS_SIZE = 10
FLOAT32_LE = np.dtype("<f4")
POSE_BYTES = POSE_SIZE * FLOAT32_LE.itemsize
BETAS_BYTES = BETAS_SIZE * FLOAT32_LE.itemsize

Source = Literal["static", "loop", "gt"]
SOURCES: tuple[str, ...] = ("static", "loop", "gt")

# Names end up inside Redis keys separated by ':'; a conservative alphabet keeps keys unambiguous.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

# Field names of a record hash, in the order batch reads ask for them.
RECORD_FIELDS: tuple[str, ...] = ("pose", "betas", "error", "step", "source", "updates", "time")


def check_name(kind: str, name: str) -> str:
    """Return `name` if it can be part of a Redis key, else raise FitStoreError saying why."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise FitStoreError(
            f"{kind} name {name!r} is not allowed: use 1-128 characters from letters, digits, '_', '.', '-' "
            f"starting with a letter or digit (':' separates key parts and cannot appear in a name)"
        )
    return name


def check_source(source: str) -> str:
    """Return `source` if it is one of the known fit sources, else raise FitStoreError."""
    if source not in SOURCES:
        raise FitStoreError(f"unknown fit source {source!r}: expected one of {', '.join(SOURCES)}")
    return source


def parse_number(key: str, field: str, data: bytes | None, kind: type) -> float | int:
    """Decode a decimal field of a hash at `key`, naming the key if it is missing or not a number."""
    try:
        if data is None:
            raise ValueError("missing")
        return kind(data.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise FitStoreError(
            f"{key} has field {field}={data!r}, expected a {kind.__name__}"
        ) from None


def format_float(value: float) -> str:
    """Exact decimal text of a float64 (repr round-trips), so Lua and Redis compare the same number."""
    return repr(float(value))


class FitStoreAddress(BaseModel):
    """Everything needed to open a FitStore in any process: small, picklable, password hidden in reprs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: SecretStr = Field(
        description="redis://, rediss:// or redis+cluster://host:port,... URL, possibly with user and password"
    )
    namespace: str = Field("default", description="fit-store namespace, one per run")
    body_model_hash: str | None = Field(
        None, description="hex identity of the body model the fits belong to; None opens read-only"
    )
    connect_timeout_s: float = Field(30.0, gt=0, description="give up connecting after this many seconds")
    index_groups: int | None = Field(
        None, ge=1, le=1024,
        description="index groups per dataset of a namespace this store creates; None: 1 on one node, 16 on a cluster",
    )

    @field_validator("namespace")
    @classmethod
    def _namespace_ok(cls, value: str) -> str:
        return check_name("namespace", value)

    @field_validator("body_model_hash")
    @classmethod
    def _hash_ok(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{8,128}", value):
            raise ValueError(f"body_model_hash must be 8-128 hex digits, got {value!r}")
        return value.lower() if value is not None else None


def make_address(url: str, namespace: str, body_model_hash: str | None, connect_timeout_s: float,
                 index_groups: int | None = None) -> FitStoreAddress:
    """A checked FitStoreAddress; FitStoreError names the bad fields (never their values: a URL may hold a password)."""
    try:
        return FitStoreAddress(
            url=url, namespace=namespace, body_model_hash=body_model_hash, connect_timeout_s=connect_timeout_s,
            index_groups=index_groups,
        )
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise FitStoreError(f"bad fit-store address: {problems}") from None


class NamespaceMeta(BaseModel):
    """Metadata of a namespace: which schema and body model its fits were written with."""

    schema_version: int
    body_model_hash: str
    created: float = Field(description="Unix time the namespace was created")
    index_groups: int = Field(1, ge=1, description="index groups per dataset (store/keys.py), fixed at creation")


class FitRecord(BaseModel):
    """One stored fit, as shown to people and written to files."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    index: int = Field(ge=0)
    pose: list[float] = Field(min_length=POSE_SIZE, max_length=POSE_SIZE)
    betas: list[float] = Field(min_length=BETAS_SIZE, max_length=BETAS_SIZE)
    error: float
    step: int
    source: Source
    updates: int = Field(ge=1)
    time: float

    @field_validator("error")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError("error must be finite and >= 0")
        return value


class DatasetStats(BaseModel):
    """Summary of one dataset's fits in a namespace."""

    dataset: str
    count: int
    by_source: dict[str, int]
    error_quantiles: dict[str, float] = Field(description="quantile label (p0, p50, ...) -> error")
    above_threshold: int = Field(description="fits whose error exceeds the valid-fit threshold")
    bad_errors: int = Field(0, description="index entries whose error is negative or infinite (corrupt records)")
    threshold: float
    improvements_by_step: list[tuple[int, int, float]] = Field(
        description="(step, fits written at that step, their mean error), ordered by step"
    )
    problems: list[str] = Field(
        default_factory=list, description="keys of this dataset that could not be read (e.g. of the wrong Redis type)"
    )

    @property
    def total_updates(self) -> int:
        """Fits written over the namespace's life, improvements included."""
        return sum(n for _, n, _ in self.improvements_by_step)


class CheckSummary(BaseModel):
    """What the last `spin-ray store check` of a namespace found (kept in the namespace for `store stats`)."""

    time: float = Field(description="Unix time of the check")
    good: int
    corrupt: int
    orphans: int = Field(description="index entries without a record")
    unindexed: int = Field(description="sound records missing from their index")
    mismatched: int = Field(0, description="index entries whose score is not their record's error")
    wrong_type: int = Field(0, description="index or stats keys of the wrong Redis type")
    meta_problem: str | None = Field(None, description="what is wrong with the namespace metadata, if anything")
    repaired: bool = Field(description="the check ran with --repair")


class StoreStats(BaseModel):
    """Summary of a whole namespace."""

    namespace: str
    meta: NamespaceMeta | None
    datasets: list[DatasetStats]
    last_check: CheckSummary | None = Field(None, description="the last `store check`, None if never checked")


@dataclass(frozen=True)
class StoredFits:
    """A batch read: row i is sample indices[i]; rows with found[i] False hold zeros / NaN / -1."""

    indices: np.ndarray  # (N,) int64
    found: np.ndarray  # (N,) bool
    pose: np.ndarray  # (N, 72) float32 axis-angle, canonical frame
    betas: np.ndarray  # (N, 10) float32
    error: np.ndarray  # (N,) float64, NaN where missing
    step: np.ndarray  # (N,) int64, -1 where missing
    source: np.ndarray  # (N,) str, '' where missing
    updates: np.ndarray  # (N,) int64, 0 where missing
    time: np.ndarray  # (N,) float64, NaN where missing
    corrupt: tuple["BadRecord", ...] = ()  # records met but skipped as unreadable (their rows are not found)
    orphans: int = 0  # index entries without a record (only `read_all` counts them; those rows are dropped)

    def select(self, rows: np.ndarray) -> "StoredFits":
        """The rows `rows` (indices or a mask) of this read, with the same corrupt list and orphan count."""
        return StoredFits(
            self.indices[rows], self.found[rows], self.pose[rows], self.betas[rows], self.error[rows],
            self.step[rows], self.source[rows], self.updates[rows], self.time[rows], self.corrupt, self.orphans,
        )  # fmt: skip


@dataclass(frozen=True)
class BadRecord:
    """A record hash that cannot be read as a fit: its key, a short reason (for counting) and what was found."""

    key: str
    reason: str  # e.g. "pose: wrong length", "error: negative"
    found: str  # e.g. "3 bytes, expected 288"

    def __str__(self) -> str:
        return f"{self.key} ({self.reason}: {self.found})"
