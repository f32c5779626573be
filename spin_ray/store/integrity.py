"""`spin-ray store check`: scan a namespace for corrupt records and orphaned index entries, and repair them.

Three faults are found, each in batches of SCAN/ZSCAN results sent as one pipeline:
- corrupt: a record (`fit:DS:I`) that `decode.check_fields` refuses (missing field, wrong length,
  NaN/inf, negative error, unknown source) or that is not a hash at all;
- orphaned: an index entry (`idx:DS` member I) whose record does not exist;
- unindexed: a sound record with no index entry (invisible to export, worst, stats).
Repair moves a corrupt record to `spinray:NS:quarantine:fit:DS:I` (RENAME: kept whole for a person to
look at; `:2`, `:3`... if that name is taken), removes orphaned index entries and indexes unindexed
records, each by a script that first checks the record is still the one the scan saw. The summary of
the last check is kept in `spinray:NS:check`, which `store stats` shows without scanning.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import redis

from spin_ray.store.decode import check_fields
from spin_ray.store.records import RECORD_FIELDS, BadRecord, CheckSummary
from spin_ray.store.writes import PIPELINE_CHUNK

NOT_A_HASH = "not a hash"

# Move a corrupt record aside if it is still what the scan saw (same digest of its fields).
# KEYS: record, index, stats, quarantine name; ARGV: index member, digest seen by the scan
QUARANTINE_LUA = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then
  return false
end
local digest = 'not a hash'
local source = false
if kind == 'hash' then
  local fields = redis.call('HMGET', KEYS[1], 'pose', 'betas', 'error', 'step', 'source', 'updates', 'time')
  local parts = {}
  for j = 1, 7 do
    parts[j] = fields[j] and ('+' .. #fields[j] .. ':' .. fields[j]) or '-'
  end
  digest = redis.sha1hex(table.concat(parts, '|'))
  source = fields[5]
end
if digest ~= ARGV[2] then
  return false
end
local target = KEYS[4]
local n = 1
while redis.call('EXISTS', target) == 1 do
  n = n + 1
  target = KEYS[4] .. ':' .. n
end
redis.call('RENAME', KEYS[1], target)
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 and (source == 'static' or source == 'loop' or source == 'gt') then
  redis.call('HINCRBY', KEYS[3], 'src:' .. source, -1)
end
return target
"""

# Remove an index entry only if its record is still absent. KEYS: record, index; ARGV: member
DROP_ORPHAN_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
return redis.call('ZREM', KEYS[2], ARGV[1])
"""


def fields_digest(fields: Iterable[bytes | None]) -> str:
    """The digest QUARANTINE_LUA computes of a record's RECORD_FIELDS (same encoding, sha1 hex)."""
    parts = [b"-" if f is None else b"+%d:%s" % (len(f), f) for f in fields]
    return hashlib.sha1(b"|".join(parts)).hexdigest()


@dataclass
class CheckReport:
    """What a scan of one namespace found and, after `repair`, what was done."""

    namespace: str
    good: int = 0
    corrupt: list[BadRecord] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # record keys an index names but that do not exist
    unindexed: list[str] = field(default_factory=list)  # sound record keys missing from their index
    quarantined: dict[str, str] = field(default_factory=dict)  # record key -> quarantine key
    orphans_removed: int = 0
    indexed: int = 0
    _digests: dict[str, str] = field(default_factory=dict, repr=False)
    _errors: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def clean(self) -> bool:
        """True when nothing was found."""
        return not (self.corrupt or self.orphans or self.unindexed)

    def by_reason(self) -> dict[str, int]:
        """Corrupt records counted by reason, most common first."""
        return dict(Counter(b.reason for b in self.corrupt).most_common())

    def summary(self, repaired: bool) -> CheckSummary:
        """The summary kept in the namespace for `store stats`."""
        return CheckSummary(
            time=time.time(), good=self.good, corrupt=len(self.corrupt), orphans=len(self.orphans),
            unindexed=len(self.unindexed), repaired=repaired,
        )  # fmt: skip


def _chunks(keys: Iterator[bytes], size: int) -> Iterator[list[str]]:
    """Distinct keys (SCAN may repeat one) in lists of at most `size`."""
    seen: set[bytes] = set()
    batch: list[str] = []
    for key in keys:
        if key in seen:
            continue
        seen.add(key)
        batch.append(key.decode())
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _split_record_key(prefix: str, key: str) -> tuple[str, str]:
    """(dataset, index member) of `spinray:NS:fit:DS:I`."""
    dataset, _, member = key[len(prefix) + len("fit:") :].rpartition(":")
    return dataset, member


def scan(client: redis.Redis, namespace: str, on_progress: Callable[[int], None] | None = None,
         chunk: int = PIPELINE_CHUNK) -> CheckReport:
    """Read every record and index entry of the namespace (batched); the faults found."""
    prefix = f"spinray:{namespace}:"
    report = CheckReport(namespace)
    for keys in _chunks(client.scan_iter(match=f"{prefix}fit:*", count=1000), chunk):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            dataset, member = _split_record_key(prefix, key)
            pipe.hmget(key, *RECORD_FIELDS)
            pipe.zscore(f"{prefix}idx:{dataset}", member)
        replies = pipe.execute(raise_on_error=False)
        for key, fields, score in zip(keys, replies[0::2], replies[1::2]):
            dataset, member = _split_record_key(prefix, key)
            bad = BadRecord(key, NOT_A_HASH, "wrong Redis type") if isinstance(fields, Exception) else None
            if not (dataset and member.isdigit()):
                bad = BadRecord(key, "key: malformed", "expected fit:DATASET:INDEX")
            bad = bad or check_fields(key, tuple(fields))
            report._digests[key] = NOT_A_HASH if isinstance(fields, Exception) else fields_digest(fields)
            if bad is not None:
                report.corrupt.append(bad)
                continue
            report.good += 1
            if score is None:
                report.unindexed.append(key)
                report._errors[key] = fields[2]
        if on_progress is not None:
            on_progress(len(keys))
    for index_key in _chunks(client.scan_iter(match=f"{prefix}idx:*", count=1000), chunk):
        for name in index_key:
            _scan_index(client, prefix, name, report, on_progress, chunk)
    return report


def _scan_index(client: redis.Redis, prefix: str, index_key: str, report: CheckReport,
                on_progress: Callable[[int], None] | None, chunk: int) -> None:
    """Add the index's entries whose record does not exist to `report.orphans`."""
    dataset = index_key[len(prefix) + len("idx:") :]
    members = (m for m, _ in client.zscan_iter(index_key, count=1000))
    for batch in _chunks(members, chunk):
        pipe = client.pipeline(transaction=False)
        keys = [f"{prefix}fit:{dataset}:{m}" for m in batch]
        for key in keys:
            pipe.exists(key)
        report.orphans.extend(k for k, there in zip(keys, pipe.execute()) if not there)
        if on_progress is not None:
            on_progress(len(batch))


def repair(client: redis.Redis, report: CheckReport, chunk: int = PIPELINE_CHUNK) -> CheckReport:
    """Quarantine the corrupt records, drop orphaned index entries, index unindexed records; fills `report`."""
    prefix = f"spinray:{report.namespace}:"
    quarantine = client.register_script(QUARANTINE_LUA)
    drop_orphan = client.register_script(DROP_ORPHAN_LUA)
    for start in range(0, len(report.corrupt), chunk):
        keys = [b.key for b in report.corrupt[start : start + chunk]]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            dataset, member = _split_record_key(prefix, key)
            quarantine(
                keys=[key, f"{prefix}idx:{dataset}", f"{prefix}stats:{dataset}", f"{prefix}quarantine:{key[len(prefix):]}"],
                args=[member, report._digests[key]], client=pipe,
            )  # fmt: skip
        for key, moved in zip(keys, pipe.execute()):
            if moved:
                report.quarantined[key] = moved.decode()
    for start in range(0, len(report.orphans), chunk):
        pipe = client.pipeline(transaction=False)
        for key in report.orphans[start : start + chunk]:
            dataset, member = _split_record_key(prefix, key)
            drop_orphan(keys=[key, f"{prefix}idx:{dataset}"], args=[member], client=pipe)
        report.orphans_removed += sum(int(n) for n in pipe.execute())
    for start in range(0, len(report.unindexed), chunk):
        pipe = client.pipeline(transaction=False)
        for key in report.unindexed[start : start + chunk]:
            dataset, member = _split_record_key(prefix, key)
            pipe.zadd(f"{prefix}idx:{dataset}", {member: float(report._errors[key])}, nx=True)
        report.indexed += sum(int(n) for n in pipe.execute())
    return report


def save_summary(client: redis.Redis, namespace: str, summary: CheckSummary) -> None:
    """Keep the summary of a check in the namespace (`spinray:NS:check`)."""
    client.set(f"spinray:{namespace}:check", summary.model_dump_json())


def load_summary(client: redis.Redis, namespace: str) -> CheckSummary | None:
    """The summary of the namespace's last check, or None if it was never checked (or the summary is unreadable)."""
    try:
        raw = client.get(f"spinray:{namespace}:check")
        return CheckSummary.model_validate_json(raw) if raw else None
    except (ValueError, redis.exceptions.ResponseError):
        return None


def scan_size(client: redis.Redis, namespace: str) -> int:
    """About how many items `scan` visits (records plus index entries, from the index sizes): for a progress bar."""
    indexes = list(client.scan_iter(match=f"spinray:{namespace}:idx:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in indexes:
        pipe.zcard(key)
    return 2 * sum(pipe.execute()) if indexes else 0


def namespaces(client: redis.Redis) -> list[str]:
    """Every namespace on the server that has metadata or an index, sorted."""
    names = set()
    for pattern in ("spinray:*:meta", "spinray:*:idx:*"):
        names.update(k.decode().split(":")[1] for k in client.scan_iter(match=pattern, count=1000))
    return sorted(names)

