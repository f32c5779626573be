"""`spin-ray store check`: scan a namespace for corrupt records and index faults, and repair them.

The faults found, each in batches of SCAN/ZSCAN results sent as one pipeline:
- corrupt: a record (`fit:{DS:g}:I`) that `decode.check_fields` refuses (missing field, wrong length,
  NaN/inf, negative error, unknown source) or that is not a hash at all;
- orphaned: an index entry (`idx:{DS:g}` member I) whose record does not exist;
- unindexed: a sound record with no index entry (invisible to export, worst, stats);
- mismatched: an index entry whose score is not its record's error (filter and worst would rank the
  sample by a number the record does not hold);
- wrong type: an index that is not a sorted set, or a stats key that is not a hash (stats and worst
  cannot read it);
- metadata: the namespace's metadata is missing, of another schema, or malformed.
Repair moves a corrupt record to `spinray:NS:quarantine:fit:{DS:g}:I` (RENAME: kept whole for a person to
look at; `:2`, `:3`... if that name is taken), removes orphaned index entries, indexes unindexed records
and re-indexes mismatched ones from their record, each by a script that first checks the record is
still the one the scan saw; a key of the wrong type is moved to quarantine too (a stats hash is rebuilt
from the records' sources). Metadata is never rewritten: it binds the namespace to its schema and
body model. The summary of the last check is kept in `spinray:NS:check`, which `store stats` shows
without scanning. Scanning only reads, so a check works on a Redis too full to take writes.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from spin_ray.errors import FitStoreError
from spin_ray.store.decode import check_fields
from spin_ray.store.namespace import META_FIELDS, check_meta
from spin_ray.store.records import RECORD_FIELDS, SOURCES, BadRecord, CheckSummary
from spin_ray.store.writes import PIPELINE_CHUNK

NOT_A_HASH = "not a hash"


def _rename_aside(name: str) -> str:
    """Lua that renames KEYS[1] to `name`, or `name`:2, `name`:3, ... where that is taken, leaving it in `target`."""
    return f"""local target = {name}
local n = 1
while redis.call('EXISTS', target) == 1 do
  n = n + 1
  target = {name} .. ':' .. n
end
redis.call('RENAME', KEYS[1], target)"""

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
""" + _rename_aside("KEYS[4]") + """
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


# Set a record's index score to the error it holds, if that is still a number >= 0. KEYS: record, index; ARGV: member
REINDEX_LUA = """
local error = tonumber(redis.call('HGET', KEYS[1], 'error'))
if error == nil or error ~= error or error < 0 or error == math.huge then
  return 0
end
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], 'error'), ARGV[1])
return 1
"""

# Move a key aside if it still has the wrong type. KEYS: key, quarantine name; ARGV: the type it should have
MOVE_WRONG_TYPE_LUA = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' or kind == ARGV[1] then
  return false
end
""" + _rename_aside("KEYS[2]") + """
return target
"""

# The Redis type each kind of namespace key must have.
KEY_TYPES = {"idx": "zset", "stats": "hash"}


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
    mismatched: list[str] = field(default_factory=list)  # sound record keys whose index score is not their error
    wrong_type: list[str] = field(default_factory=list)  # idx/stats keys of the wrong Redis type
    meta_problem: str | None = None  # what is wrong with the namespace metadata, if anything
    quarantined: dict[str, str] = field(default_factory=dict)  # record key -> quarantine key
    moved: dict[str, str] = field(default_factory=dict)  # wrong-type key -> quarantine key
    orphans_removed: int = 0
    indexed: int = 0
    reindexed: int = 0
    stats_rebuilt: int = 0  # stats hashes rebuilt from the records' sources
    _digests: dict[str, str] = field(default_factory=dict, repr=False)
    _errors: dict[str, bytes] = field(default_factory=dict, repr=False)
    _scores: dict[str, float] = field(default_factory=dict, repr=False)  # mismatched key -> its index score
    _types: dict[str, str] = field(default_factory=dict, repr=False)  # wrong-type key -> the type found
    _sources: dict[str, Counter] = field(default_factory=dict, repr=False)  # dataset -> sound records per source

    @property
    def clean(self) -> bool:
        """True when nothing was found."""
        return not (self.corrupt or self.orphans or self.unindexed or self.mismatched or self.wrong_type
                    or self.meta_problem)

    def describe_mismatch(self, key: str) -> str:
        """`KEY (index 0.5, record 7.0)`."""
        return f"{key} (index {self._scores[key]!r}, record {float(self._errors[key])!r})"

    def describe_wrong_type(self, key: str) -> str:
        """`KEY is a string, expected a hash`."""
        kind = key.split(":")[2]
        return f"{key} is a {self._types[key]}, expected a {KEY_TYPES[kind]}"

    def by_reason(self) -> dict[str, int]:
        """Corrupt records counted by reason, most common first."""
        return dict(Counter(b.reason for b in self.corrupt).most_common())

    def summary(self, repaired: bool) -> CheckSummary:
        """The summary kept in the namespace for `store stats`."""
        return CheckSummary(
            time=time.time(), good=self.good, corrupt=len(self.corrupt), orphans=len(self.orphans),
            unindexed=len(self.unindexed), mismatched=len(self.mismatched), wrong_type=len(self.wrong_type),
            meta_problem=self.meta_problem, repaired=repaired,
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
    """(group tag `{DS:g}`, index member) of `spinray:NS:fit:{DS:g}:I`: the tag names the group's index and stats
    keys as a dataset name did in schema 1, and keeps every key a repair script touches in the record's slot."""
    dataset, _, member = key[len(prefix) + len("fit:") :].rpartition(":")
    return dataset, member


def scan(client: redis.Redis, namespace: str, on_progress: Callable[[int], None] | None = None,
         chunk: int = PIPELINE_CHUNK) -> CheckReport:
    """Read every record, index entry, index and stats key and the metadata of the namespace (batched); the faults found."""
    prefix = f"spinray:{namespace}:"
    report = CheckReport(namespace)
    _scan_types(client, prefix, report, chunk)
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
            report._sources.setdefault(dataset, Counter())[fields[4].decode()] += 1
            report._errors[key] = fields[2]
            if score is None or isinstance(score, Exception):  # an index of the wrong type holds no entry
                report.unindexed.append(key)
            elif float(score) != float(fields[2]):
                report.mismatched.append(key)
                report._scores[key] = float(score)
        if on_progress is not None:
            on_progress(len(keys))
    for index_key in _chunks(client.scan_iter(match=f"{prefix}idx:*", count=1000), chunk):
        for name in index_key:
            if name not in report._types:
                _scan_index(client, prefix, name, report, on_progress, chunk)
    report.meta_problem = _meta_problem(client, namespace, prefix, report)
    return report


def _scan_types(client: redis.Redis, prefix: str, report: CheckReport, chunk: int) -> None:
    """Add the index and stats keys of the wrong Redis type to `report.wrong_type`."""
    for kind, wanted in KEY_TYPES.items():
        for keys in _chunks(client.scan_iter(match=f"{prefix}{kind}:*", count=1000), chunk):
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.type(key)
            for key, found in zip(keys, pipe.execute()):
                found = found.decode() if isinstance(found, bytes) else str(found)
                if found not in (wanted, "none"):
                    report.wrong_type.append(key)
                    report._types[key] = found


def _meta_problem(client: redis.Redis, namespace: str, prefix: str, report: CheckReport) -> str | None:
    """What is wrong with the namespace's metadata (schema first), or None if it is sound."""
    key = f"{prefix}meta"
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind == "none":
        has_fits = report.good or report.corrupt or next(client.scan_iter(match=f"{prefix}idx:*", count=1000), None)
        return (f"{key} is missing though the namespace holds fits: writes to it are refused; "
                f"export its fits and import them into a new namespace") if has_fits else None
    if kind != "hash":
        return f"{key} is a {kind}, expected a hash: the namespace's schema and body model are unknown"
    try:
        check_meta(namespace, key, client.hmget(key, *META_FIELDS), None)
    except FitStoreError as err:
        return str(err)
    return None


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


def _each_record(client: redis.Redis, prefix: str, keys: list[str], chunk: int,
                 send: Callable[[Any, str, str, str], None]) -> Iterator[tuple[str, Any]]:
    """(key, reply) of send(pipe, key, dataset, member) for each record key, `chunk` keys a pipeline."""
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        pipe = client.pipeline(transaction=False)
        for key in part:
            send(pipe, key, *_split_record_key(prefix, key))
        yield from zip(part, pipe.execute())


def repair(client: redis.Redis, report: CheckReport, chunk: int = PIPELINE_CHUNK) -> CheckReport:
    """Quarantine the corrupt records, drop orphaned index entries, index unindexed records; fills `report`."""
    prefix = f"spinray:{report.namespace}:"
    _move_wrong_types(client, report, prefix)  # first: the scripts below need an index of the right type
    quarantine = client.register_script(QUARANTINE_LUA)
    drop_orphan = client.register_script(DROP_ORPHAN_LUA)
    reindex = client.register_script(REINDEX_LUA)
    for script in (quarantine, drop_orphan, reindex):  # loaded on every master: a pipeline does not load them
        client.script_load(script.script)

    def move_aside(pipe, key: str, dataset: str, member: str) -> None:
        quarantine(
            keys=[key, f"{prefix}idx:{dataset}", f"{prefix}stats:{dataset}", f"{prefix}quarantine:{key[len(prefix):]}"],
            args=[member, report._digests[key]], client=pipe,
        )  # fmt: skip

    def drop(pipe, key: str, dataset: str, member: str) -> None:
        drop_orphan(keys=[key, f"{prefix}idx:{dataset}"], args=[member], client=pipe)

    def index(pipe, key: str, dataset: str, member: str) -> None:
        pipe.zadd(f"{prefix}idx:{dataset}", {member: float(report._errors[key])}, nx=True)

    def rescore(pipe, key: str, dataset: str, member: str) -> None:
        reindex(keys=[key, f"{prefix}idx:{dataset}"], args=[member], client=pipe)

    for key, moved in _each_record(client, prefix, [b.key for b in report.corrupt], chunk, move_aside):
        if moved:
            report.quarantined[key] = moved.decode()
    report.orphans_removed += sum(int(n) for _, n in _each_record(client, prefix, report.orphans, chunk, drop))
    report.indexed += sum(int(n) for _, n in _each_record(client, prefix, report.unindexed, chunk, index))
    report.reindexed += sum(int(n) for _, n in _each_record(client, prefix, report.mismatched, chunk, rescore))
    _rebuild_stats(client, report, prefix)
    return report


def _move_wrong_types(client: redis.Redis, report: CheckReport, prefix: str) -> None:
    """Move the index and stats keys of the wrong type to quarantine (kept for a person to look at)."""
    move = client.register_script(MOVE_WRONG_TYPE_LUA)
    for key in report.wrong_type:
        kind = key[len(prefix) :].split(":", 1)[0]
        moved = move(keys=[key, f"{prefix}quarantine:{key[len(prefix):]}"], args=[KEY_TYPES[kind]])
        if moved:
            report.moved[key] = moved.decode()


def _rebuild_stats(client: redis.Redis, report: CheckReport, prefix: str) -> None:
    """Set the source counts of each moved stats hash from the sound records (its per-step history is lost)."""
    for key in report.moved:
        if key.startswith(f"{prefix}stats:"):
            counts = report._sources.get(key[len(prefix) + len("stats:") :], Counter())
            client.hset(key, mapping={f"src:{source}": counts.get(source, 0) for source in SOURCES})
            report.stats_rebuilt += 1


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
    sizes = pipe.execute(raise_on_error=False) if indexes else []
    return 2 * sum(n for n in sizes if isinstance(n, int))  # an index of the wrong type is reported by scan


def namespaces(client: redis.Redis) -> list[str]:
    """Every namespace on the server that has metadata or an index, sorted."""
    names = set()
    for pattern in ("spinray:*:meta", "spinray:*:idx:*"):
        names.update(k.decode().split(":")[1] for k in client.scan_iter(match=pattern, count=1000))
    return sorted(names)

