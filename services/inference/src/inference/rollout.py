"""Rollout state: which versions of each model serve, shared by every replica through Redis.

Redis holds one hash per model (``<prefix>rollout:<model>``: ``champion``, ``canary``,
``canary_weight``, ``shadow``, each alias's ``<alias>_at`` change time and a ``revision``) and
the set of models. Three writers change it, all through one Lua script so each change is atomic:

* the rollout topic (``registry.rollout-changed.v1``, compacted): every replica replays it from
  the start at each start-up, so an empty Redis is rebuilt from it. An event is applied only
  when it is newer than what the alias holds (``changed_at``; on the same instant, the greater
  author and version), so replaying old history never undoes a later change and two changes
  stamped alike end the same way in any order;
* the operator API and the canary analysis, which compare-and-set on ``revision`` and publish
  their change back to the topic, so the topic stays the complete history.

The topic is compacted, so its last record per alias must be the newest change: when a record
older than Redis's lands last (concurrent writers, a registry clock behind the gateway's), the
publisher that lost the race, and every replica reading that record, publish the newer change
again (:meth:`RolloutState._republish_newer`).

Requests never wait for Redis: each replica serves from an in-memory copy it refreshes every
``rollout_refresh_s``. When Redis is unreachable it keeps the last good copy (and counts, and
says so in readiness). Redis also holds a generation token (``<prefix>rollout:generation``),
which only the refresh writes. When a replica finds it missing (Redis restarted without
persistence, flushed) or different from the one it last read (another replica found it missing
first), or a model it serves gone from Redis (the routing keys deleted without the token), it
writes its last good copy back, each alias with its own change time and author, and
only where Redis holds nothing newer: changes written since the loss (the topic, an operator)
keep winning, a replica's replay of older history never overrides a restored alias, and a copy
that lags another replica's merges under it. A revision never repeats across a loss: a model's
first revision is the Redis server's clock in microseconds (and above the written-back copy's).
A version change is a new copy: requests already running finish on the version they started
with, new ones take the new route, and none is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError
from schemas.envelope import Envelope
from schemas.registry import Alias, RolloutChangedV1

from inference import metrics
from inference.errors import InvalidInput, ModelNotFound, RolloutConflict
from inference.routing import ModelRoute

log = logging.getLogger(__name__)

ALIASES: tuple[Alias, ...] = ("champion", "canary", "shadow")

# KEYS: hash, models set. ARGV: model, expected revision ('' = any), lowest new revision, newest ('1':
# the change time is raised above every changed alias's, so the change applies), then (alias,
# version ('' = none), weight, changed_at (µs), changed_by) quintuples. An alias changes when its
# change is newer than the one it holds (``RolloutChangedV1.order``): a later change time, or the
# same change time and a greater (author, version) pair, so that two writers' changes stamped alike
# (a registry clock ahead of the gateway's) end the same way whichever order they arrive in, live
# or replayed from the topic.
# Returns {revision, change time of the last alias}:
# the new revision, 0 when every alias already holds a newer change, -1 when the expected
# revision does not match. A model's first revision is the server's clock in µs (not below the
# lowest new revision), so a revision read before Redis lost the table never matches again.
_APPLY = """
if ARGV[2] ~= '' then
  local rev = redis.call('HGET', KEYS[1], 'revision') or '0'
  if rev ~= ARGV[2] then return {-1, ''} end
end
local raise = 0
if ARGV[4] == '1' then
  for i = 5, #ARGV, 5 do
    local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i] .. '_at') or '0')
    if current >= tonumber(ARGV[i + 3]) and current + 1 > raise then raise = current + 1 end
  end
end
local applied = 0
local stamp = ''
for i = 5, #ARGV, 5 do
  local alias = ARGV[i]
  local at = ARGV[i + 3]
  if raise > tonumber(at) then at = string.format('%d', raise) end
  stamp = at
  local current = redis.call('HGET', KEYS[1], alias .. '_at')
  local newer = (not current) or tonumber(current) < tonumber(at)
  if (not newer) and tonumber(current) == tonumber(at) then
    local by = redis.call('HGET', KEYS[1], alias .. '_by') or ''
    local held = redis.call('HGET', KEYS[1], alias) or ''
    newer = by < ARGV[i + 4] or (by == ARGV[i + 4] and held < ARGV[i + 1])
  end
  if newer then
    redis.call('HSET', KEYS[1], alias, ARGV[i + 1], alias .. '_at', at, alias .. '_by', ARGV[i + 4])
    if alias == 'canary' then redis.call('HSET', KEYS[1], 'canary_weight', ARGV[i + 2]) end
    applied = applied + 1
  end
end
if applied == 0 then return {0, stamp} end
redis.call('SADD', KEYS[2], ARGV[1])
local lowest = tonumber(ARGV[3])
local rev = redis.call('HGET', KEYS[1], 'revision')
local new
if rev then
  new = math.max(tonumber(rev) + 1, lowest)
else
  local t = redis.call('TIME')
  new = math.max(tonumber(t[1]) * 1000000 + tonumber(t[2]), lowest)
end
redis.call('HSET', KEYS[1], 'revision', string.format('%d', new))
return {new, stamp}
"""

_RESTORED = "inference-last-known-good"


@dataclass(frozen=True, slots=True)
class AliasChange:
    """Point ``alias`` at ``version`` (None: remove it); ``weight`` only for the canary."""

    alias: Alias
    version: int | None
    weight: float | None = None

    def checked(self) -> AliasChange:
        """The change, with a canary weight in [0, 1] (0 when the canary is removed).

        Raises:
            InvalidInput: a weight on champion or shadow, or out of range.

        """
        if self.version is not None and self.version < 1:
            raise InvalidInput(f"version must be 1 or more, not {self.version}")
        if self.alias != "canary":
            if self.weight is not None:
                raise InvalidInput(f"only the canary takes a weight; {self.alias} gets all or mirrored traffic")
            return self
        weight = 0.0 if self.version is None else self.weight
        if weight is None or not 0 <= weight <= 1:
            raise InvalidInput("a canary needs a weight between 0 and 1 (0.05 sends 5% of entities to it)")
        return AliasChange(self.alias, self.version, weight)


Publish = Callable[[list[RolloutChangedV1]], Awaitable[None]]

_EPOCH = datetime.fromtimestamp(0, UTC)
_MICROSECOND = timedelta(microseconds=1)


class RolloutState:
    """The rollout table: Redis as the shared truth, an in-memory copy for requests.

    Args:
        redis: the shared Redis.
        prefix: key prefix.
        publish: sends this replica's own changes to the rollout topic.

    """

    def __init__(self, redis: Redis, *, prefix: str, publish: Publish | None = None) -> None:
        self._redis = redis
        self._prefix = prefix
        self._publish = publish
        self._apply = redis.register_script(_APPLY)
        self._table: dict[str, ModelRoute] = {}
        self._rows: dict[str, dict[bytes, bytes]] = {}
        """The Redis hashes the in-memory copy was read from (change times included), to write back."""
        self._generation: str | None = None
        """The generation token read last: a different one means Redis lost the table since."""
        self.loaded = False
        """True once the table was read from Redis at least once."""
        self.redis_error: str | None = None
        """Why the last refresh failed (None when it succeeded): requests use the last good copy."""
        self.refreshed_at: float | None = None
        """``time.monotonic()`` of the last successful refresh."""
        self.on_table: Callable[[dict[str, ModelRoute]], Awaitable[None]] | None = None
        """Awaited with a changed table before it replaces the in-memory copy (the version gate)."""
        self.live = False
        """True once the rollout topic's replay caught up (:meth:`mark_live`)."""
        self._tails: dict[tuple[str, str], RolloutChangedV1] = {}
        """The last record read from the topic per alias, until it was checked against Redis."""

    def _key(self, model: str) -> str:
        return f"{self._prefix}rollout:{model}"

    @property
    def _models_key(self) -> str:
        return f"{self._prefix}rollout:models"

    @property
    def _generation_key(self) -> str:
        return f"{self._prefix}rollout:generation"

    async def _models(self) -> list[str]:
        return sorted(_text(m) for m in await self._redis.smembers(self._models_key))

    @property
    def table(self) -> dict[str, ModelRoute]:
        """The in-memory copy (replaced, never mutated, on refresh)."""
        return self._table

    def route(self, model: str) -> ModelRoute:
        """The rollout of ``model``.

        Raises:
            ModelNotFound: no rollout exists for it.

        """
        found = self._table.get(model)
        if found is None:
            raise ModelNotFound(f"model {model!r} has no rollout on this gateway; register it and point its "
                                "champion alias at a version (registry or PUT /v1/rollout/{model})")
        return found

    async def refresh(self) -> dict[str, ModelRoute]:
        """Re-read every model's rollout from Redis into the in-memory copy.

        One round trip when the set of models and the generation are unchanged (they and the known
        models' hashes are read together); the metrics of a model's routes are set only when they
        changed. When the generation is missing or new, Redis lost the table since this replica's
        last read: its copy is written back first (see the module's docstring).

        Raises:
            RedisError: Redis did not answer (the previous copy stays).

        """
        known = sorted(self._table)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._generation_key)
            pipe.smembers(self._models_key)
            for m in known:
                pipe.hgetall(self._key(m))
            raw_generation, members, *rows = await pipe.execute()
        models = sorted(_text(m) for m in members)
        generation = None if raw_generation is None else _text(raw_generation)
        # Lost: the generation is missing or new (Redis restarted empty), or a model this replica
        # knows is gone from Redis (its hash or its entry in the model set: models are never removed,
        # only their aliases), as when the routing keys were deleted but not the token.
        present = set(models)
        lost = generation is None or generation != self._generation or any(
            self._has_aliases(self._rows.get(m, {})) and (not row or m not in present)
            for m, row in zip(known, rows, strict=True))
        if lost:
            if self._rows:
                await self._write_back(generation)
            if generation is None:
                await self._redis.set(self._generation_key, uuid.uuid4().hex, nx=True)
                token = await self._redis.get(self._generation_key)
                generation = None if token is None else _text(token)
            self._generation = generation
            models, known = await self._models(), []
        if models != known:
            async with self._redis.pipeline(transaction=False) as pipe:
                for m in models:
                    pipe.hgetall(self._key(m))
                rows = await pipe.execute()
        previous = self._table
        table = {m: _route(m, row) for m, row in zip(models, rows, strict=True)}
        if self.on_table is not None and table != previous:
            # Before the new table serves: e.g. a new canary is checked ready first (inference.readiness).
            try:
                await self.on_table(table)
            except Exception:
                log.exception("rollout table hook failed; the new table serves anyway")
        self._table = table
        self._rows = dict(zip(models, rows, strict=True))
        self.loaded = True
        self.redis_error = None
        self.refreshed_at = time.monotonic()
        for m, r in table.items():
            if previous.get(m) != r:
                metrics.CANARY_WEIGHT.labels(m).set(r.canary_weight if r.canary is not None else 0)
                for alias in ALIASES:
                    metrics.ROLLOUT_VERSION.labels(m, alias).set(getattr(r, alias) or 0)
        return table

    @staticmethod
    def _has_aliases(row: dict[bytes, bytes]) -> bool:
        return any(f"{alias}_at".encode() in row for alias in ALIASES)

    async def _write_back(self, generation: str | None) -> None:
        """Merge the copy's aliases into Redis with their own change times; newer ones in Redis stay."""
        restored = 0
        for m, row in self._rows.items():
            args: list[str | int | float] = [m, "", int(_text(row.get(b"revision", b"0")) or 0) + 1, ""]
            for alias in ALIASES:
                at = row.get(f"{alias}_at".encode())
                if at is None:
                    continue
                weight = row.get(b"canary_weight", b"") if alias == "canary" else b""
                args += [alias, _text(row.get(alias.encode(), b"")), _text(weight), _text(at),
                         _text(row.get(f"{alias}_by".encode(), _RESTORED.encode()))]
            if len(args) > 4:
                revision, _ = await self._apply(keys=[self._key(m), self._models_key], args=args)
                restored += int(revision) > 0
        log.log(logging.WARNING if restored else logging.INFO,
                "Redis lost the rollout table since this replica's last read; wrote back its last known routes "
                "where Redis held nothing newer", extra={"models": sorted(self._rows), "restored": restored,
                                                         "generation": generation})

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        """Refresh every ``interval_s`` until ``stop`` is set; failures keep the last good copy.

        Any failure of a round is logged and counted, and the next round runs: the refresher
        never stops before ``stop``.
        """
        while not stop.is_set():
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                self.redis_error = str(exc) or type(exc).__name__
                metrics.ROLLOUT_REFRESH_FAILURES.inc()
                log.warning("rollout refresh failed; serving the last known routes", extra={"error": str(exc)})
            except Exception as exc:
                self.redis_error = f"{type(exc).__name__}: {exc}"
                metrics.ROLLOUT_REFRESH_FAILURES.inc()
                log.exception("rollout refresh failed unexpectedly; serving the last known routes, retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    async def apply(self, model: str, changes: Sequence[AliasChange], *, changed_at: datetime, changed_by: str,
                    expected_revision: int | None = None) -> int:
        """Apply ``changes`` atomically; the new revision, or 0 when all were older than what Redis holds.

        Raises:
            RolloutConflict: ``expected_revision`` is not the current revision.

        """
        revision, _ = await self._write(model, changes, changed_at=changed_at, changed_by=changed_by,
                                        expected_revision=expected_revision, newest=False)
        return revision

    async def _write(self, model: str, changes: Sequence[AliasChange], *, changed_at: datetime, changed_by: str,
                     expected_revision: int | None, newest: bool) -> tuple[int, datetime]:
        """Run the script: the new revision (0: nothing newer) and the change time it applied with."""
        at = _micros(changed_at)
        args: list[str | int | float] = [model, "" if expected_revision is None else str(expected_revision), 0,
                                         "1" if newest else ""]
        for c in changes:
            c = c.checked()
            args += [c.alias, "" if c.version is None else str(c.version), "" if c.weight is None else c.weight,
                     at, changed_by]
        raw_revision, raw_at = await self._apply(keys=[self._key(model), self._models_key], args=args)
        revision = int(raw_revision)
        if revision == -1:
            raise RolloutConflict(f"the rollout of {model!r} changed since revision {expected_revision}; "
                                  "read it again (GET /v1/rollout/{model}) and retry")
        stamp = _text(raw_at)
        return revision, (_EPOCH + int(stamp) * _MICROSECOND) if stamp else changed_at

    async def change(self, model: str, changes: Sequence[AliasChange], *, changed_by: str, reason: str,
                     origin: str, expected_revision: int | None = None) -> ModelRoute:
        """Change the rollout now (this replica's own change) and publish it to the rollout topic.

        Returns:
            The model's rollout after the change.

        Raises:
            RolloutConflict, InvalidInput.

        """
        checked = [c.checked() for c in changes]
        before = self._table.get(model, ModelRoute(model))
        # The operator's (or the analysis's) change is the newest intent: when an alias holds a
        # later change time (a registry clock ahead of this one), the change takes the time just
        # after it, so it applies here and its record wins on the topic too.
        # Above this replica's copy too: after Redis lost the table, the copy is written back later.
        now = datetime.now(UTC)
        row = self._rows.get(model, {})
        held = [int(_text(row[f"{c.alias}_at".encode()])) for c in checked if f"{c.alias}_at".encode() in row]
        if held and max(held) >= _micros(now):
            now = _EPOCH + (max(held) + 1) * _MICROSECOND
        revision, now = await self._write(model, checked, changed_at=now, changed_by=changed_by,
                                          expected_revision=expected_revision, newest=True)
        metrics.ROLLOUT_CHANGES.labels(origin).inc()
        await self.refresh()
        if self._publish is not None and revision > 0:
            events = [RolloutChangedV1(model_name=model, alias=c.alias, version=c.version,
                                       previous_version=getattr(before, c.alias),
                                       weight=c.weight if c.alias == "canary" and c.version is not None else None,
                                       changed_by=changed_by, reason=reason, changed_at=now) for c in checked]
            try:
                await self._publish(events)
            except Exception:
                # Redis already serves the change; only the topic's history misses it (logged loudly).
                log.exception("rollout change applied but not published", extra={"model": model})
            else:
                await self._check_published(model, events)
        return self.route(model)

    async def _republish_newer(self, model: str, published: list[RolloutChangedV1]) -> None:
        """Publish again what Redis holds for each alias of ``published`` when it is newer than that record.

        Two replicas changing one alias at once can publish out of order: the newer change's record
        goes out first and the older one lands after it, so the compacted topic would keep the
        older one as the last record of its key and a rebuild from the topic would serve it. Each
        publisher therefore reads the alias back *after* its record is on the topic; whichever
        record landed last, its publisher sees the newest change in Redis and, when that is not its
        own, publishes it again with its own change time and author (a replay applies it only where
        nothing newer is held, so the repeat changes nothing). Rounds repeat while Redis moved on
        meanwhile, at most three. Consumers do the same with the last record of each alias they read
        (:meth:`on_events`), which also covers a registry record published out of order and a
        topic whose writers all stopped before they could check.
        """
        assert self._publish is not None
        for _ in range(3):
            row = await self._redis.hgetall(self._key(model))
            newer: list[RolloutChangedV1] = []
            for event in published:
                raw_at = row.get(f"{event.alias}_at".encode())
                if raw_at is None:
                    continue
                version = _text(row.get(event.alias.encode(), b""))
                held = (int(_text(raw_at)), _text(row.get(f"{event.alias}_by".encode(), b"")), version)
                if held <= event.order():
                    continue
                weight = _text(row.get(b"canary_weight", b"")) if event.alias == "canary" and version else ""
                newer.append(RolloutChangedV1(
                    model_name=model, alias=event.alias, version=int(version) if version else None,
                    weight=float(weight) if weight else None,
                    changed_by=_text(row.get(f"{event.alias}_by".encode(), _RESTORED.encode())),
                    reason=f"republished: newer than the change published by {event.changed_by} after it",
                    changed_at=_EPOCH + int(_text(raw_at)) * _MICROSECOND))
            if not newer:
                return
            log.info("republished newer rollout changes after an older record",
                     extra={"model": model, "aliases": [e.alias for e in newer]})
            await self._publish(newer)
            published = newer

    async def on_events(self, envelopes: list[Envelope[RolloutChangedV1]]) -> None:
        """Apply rollout events from the topic (idempotent: older or repeated events change nothing).

        The last record of each alias is then checked against Redis (once :attr:`live`; during the
        replay, once it caught up): when Redis holds a newer change, the topic got the two out of
        order (two writers at once, or a writer whose clock is behind another's) and the compacted
        topic would keep the older record as the last of its key, so the change Redis holds is
        published again (:meth:`_check_tails`).
        """
        for env in envelopes:
            e = env.payload
            self._tails[e.model_name, e.alias] = e
            weight = (e.weight or 0.0) if e.alias == "canary" else None
            change = AliasChange(e.alias, e.version, weight)
            try:
                change = change.checked()
            except InvalidInput as exc:
                log.warning("rollout event ignored", extra={"model": e.model_name, "reason": str(exc)})
                continue
            revision = await self.apply(e.model_name, [change], changed_at=e.changed_at, changed_by=e.changed_by)
            if revision > 0:
                metrics.ROLLOUT_CHANGES.labels("topic").inc()
                log.info("rollout changed", extra={"model": e.model_name, "alias": e.alias, "version": e.version,
                                                   "weight": change.weight, "by": e.changed_by})
        await self.refresh()
        if self.live:
            await self._check_tails()

    async def mark_live(self) -> None:
        """The replay of the rollout topic caught up: check the last record of every alias read so far."""
        self.live = True
        await self._check_tails()

    async def _check_tails(self) -> None:
        """Publish again every alias whose last record read is older than what Redis holds."""
        tails, self._tails = self._tails, {}
        by_model: dict[str, list[RolloutChangedV1]] = {}
        for (model, _), event in tails.items():
            by_model.setdefault(model, []).append(event)
        for model, events in by_model.items():
            await self._check_published(model, events)

    async def _check_published(self, model: str, events: list[RolloutChangedV1]) -> None:
        """:meth:`_republish_newer`, its failures logged: Redis serves the newer change either way."""
        if self._publish is None:
            return
        try:
            await self._republish_newer(model, events)
        except Exception:
            # Only the topic's last record of the alias stays older than the change Redis serves.
            log.exception("could not publish a newer rollout change again", extra={"model": model})


def _micros(at: datetime) -> int:
    """Microseconds since the epoch, exactly (a float timestamp can be off by one)."""
    return ((at if at.tzinfo is not None else at.replace(tzinfo=UTC)) - _EPOCH) // _MICROSECOND


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _route(model: str, row: dict[bytes, bytes]) -> ModelRoute:
    def text(name: str) -> str:
        value = row.get(name.encode(), b"")
        return value.decode()

    def version(name: str) -> int | None:
        raw = text(name)
        return int(raw) if raw else None

    weight = text("canary_weight")
    return ModelRoute(model=model, champion=version("champion"), canary=version("canary"),
                      canary_weight=float(weight) if weight else 0.0, shadow=version("shadow"),
                      revision=int(text("revision") or 0))
