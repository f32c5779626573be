"""The fit store's key names (schema 2): hash-tagged so a record, its index and its stats share a Redis Cluster slot.

A dataset's samples are spread over G index groups (sample I is in group I mod G; G is fixed in the
namespace's metadata when it is created). Group g of dataset DS in namespace NS has the hash tag
`{DS:g}`, so on Redis Cluster the record `spinray:NS:fit:{DS:g}:I`, the index `spinray:NS:idx:{DS:g}`
and the stats `spinray:NS:stats:{DS:g}` of one group live in one slot (one keep-best script call can
touch them all), and the G groups of a dataset spread over every shard. A single Redis node holds the
same keys. Keys without a tag (`meta`, `datasets`, `check`) are read on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spin_ray.errors import FitStoreError


@dataclass(frozen=True)
class KeyLayout:
    """Key names of one namespace with `groups` index groups per dataset."""

    namespace: str
    groups: int

    @property
    def prefix(self) -> str:
        """Every key of the namespace starts with this (`spinray:NS:`)."""
        return f"spinray:{self.namespace}:"

    @property
    def meta(self) -> str:
        """The namespace's metadata hash."""
        return f"{self.prefix}meta"

    def tag(self, dataset: str, group: int) -> str:
        """The hash tag of one group of a dataset: `{DS:g}`."""
        return f"{{{dataset}:{group}}}"

    def group_of(self, index: int) -> int:
        """The index group of sample `index`."""
        return index % self.groups

    def record(self, dataset: str, index: int) -> str:
        """The record of sample (dataset, index)."""
        return f"{self.prefix}fit:{self.tag(dataset, self.group_of(index))}:{index}"

    def record_prefix(self, dataset: str, group: int) -> str:
        """Record key = this + index, for the samples of one group."""
        return f"{self.prefix}fit:{self.tag(dataset, group)}:"

    def index(self, dataset: str, group: int) -> str:
        """The error index (sorted set: member I, score = its error) of one group of a dataset."""
        return f"{self.prefix}idx:{self.tag(dataset, group)}"

    def stats(self, dataset: str, group: int) -> str:
        """The statistics hash of one group of a dataset (also stamped with the schema and body model)."""
        return f"{self.prefix}stats:{self.tag(dataset, group)}"

    def indexes(self, dataset: str) -> list[str]:
        """The error indexes of every group of a dataset, by group."""
        return [self.index(dataset, g) for g in range(self.groups)]

    def stats_keys(self, dataset: str) -> list[str]:
        """The statistics hashes of every group of a dataset, by group."""
        return [self.stats(dataset, g) for g in range(self.groups)]

    def by_group(self, indices: np.ndarray) -> dict[int, np.ndarray]:
        """Positions in `indices` of the samples of each group that has any, in order."""
        groups = indices % self.groups
        out: dict[int, np.ndarray] = {}
        if self.groups == 1:
            return {0: np.arange(indices.shape[0])} if indices.shape[0] else {}
        order = np.argsort(groups, kind="stable")
        cuts = np.flatnonzero(np.diff(groups[order])) + 1
        for part in np.split(order, cuts):
            if part.size:
                out[int(groups[part[0]])] = part
        return out


def split_tag(tag: str) -> tuple[str, int]:
    """(dataset, group) of a hash tag `{DS:g}`; FitStoreError if it is not one."""
    dataset, _, group = tag.strip("{}").rpartition(":")
    if not (tag.startswith("{") and tag.endswith("}") and dataset and group.isdigit()):
        raise FitStoreError(f"{tag!r} is not a fit-store group tag {{DATASET:GROUP}} (a key of the schema-1 layout?)")
    return dataset, int(group)


def datasets_of(index_keys: list[str], prefix: str) -> list[str]:
    """The sorted, distinct dataset names of index keys `PREFIXidx:{DS:g}` (others ignored)."""
    names = set()
    for key in index_keys:
        rest = key[len(prefix) + len("idx:") :]
        try:
            names.add(split_tag(rest)[0])
        except FitStoreError:
            continue
    return sorted(names)
