"""The checkpointer: langgraph-checkpoint-redis's AsyncRedisSaver, made to store a long thread in linear space and
to read and write a checkpoint in one or a few round trips.

What the stock saver (0.5.2) does, and what this subclass changes — the key layout, the search indexes and every
other method stay the saver's own, so its listing, ``adelete_thread`` and ``aprune`` work on what this writes:

- **Each checkpoint holds every channel's whole value inline** (a JSON document per checkpoint), so a thread whose
  state grows by a turn's messages stores its history quadratically: seven checkpoints a turn, each with the whole
  conversation. Here the *items* of every list channel (``messages``, ``reviews``) and any dict channel of some size
  (``assessments``) are stored once per thread, content-addressed, in one hash ``checkpoint_values:{thread}``;
  a checkpoint holds their references (16 characters each). A message written once is stored once, whatever
  number of checkpoints show it. Which checkpoints a thread keeps is the caller's choice (``adelete_checkpoints``;
  graphs.runs keeps the approval points and the latest turn).
- **Writes cost a round trip per key**: the saver applies TTLs with one EXPIRE call per key after its pipeline
  (a Redis Enterprise proxy workaround). Here a checkpoint (its document, TTL, latest pointer and the values it
  introduces) is one MULTI/EXEC, and a step's writes (documents, TTLs, registry) one pipeline. On a cluster client
  the stock methods run, uncompacted.
- **A read costs about eight round trips**, more with ``refresh_on_read`` (a TTL read, then an EXPIRE per key).
  Here: the latest pointer, then the document with its write registry, then the writes with the values it refers
  to — three. TTLs are set when a key is written and not refreshed when read; the values hash is refreshed on
  every checkpoint of its thread, so it outlives every checkpoint that refers to it.

Listing (``alist``) is the saver's own FT.SEARCH, with the references resolved in one HMGET per thread (each value
revived once, shared by the checkpoints that show it); ``alist_ids`` lists a thread's checkpoint ids alone, for a
caller that keeps what it needs of each elsewhere (graphs.history). Reviving a message no longer costs a failed
import each time (``_cache_constructor_lookups``).

Threads written by the stock saver (values inline) read as they are; what is written from now on is compact.
Checked against the pinned langgraph-checkpoint-redis 0.5.2 (tests/test_scale_core.py): an upgrade must rerun them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, cast

import orjson
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
)
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from langgraph.checkpoint.redis.base import BaseRedisSaver
from langgraph.checkpoint.redis.util import (
    EMPTY_ID_SENTINEL,
    from_storage_safe_id,
    to_storage_safe_id,
    to_storage_safe_str,
)
from redisvl.query import FilterQuery  # type: ignore[import-untyped]
from redisvl.query.filter import Tag  # type: ignore[import-untyped]
from ulid import ULID

log = logging.getLogger(__name__)

# A channel value replaced by references: {_REFS: "ref ref ref"} for a list's items, {_REF: "ref"} for a whole value.
_REFS = "__chatops_refs__"
_REF = "__chatops_ref__"
# A dict channel is stored by reference from this size on (its JSON, in bytes); smaller values stay inline.
_MIN_REF_BYTES = 256
# Threads whose stored references this process remembers (it then sends only the new ones).
_REMEMBERED_THREADS = 2048


class CheckpointValuesMissing(RuntimeError):
    """A checkpoint refers to stored values that are gone (the thread's values hash expired or was deleted)."""


class CompactRedisSaver(AsyncRedisSaver):
    """AsyncRedisSaver storing values once per thread, writing a checkpoint in one round trip (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per thread: the references this process knows are stored (LRU over threads).
        self._stored: OrderedDict[str, set[str]] = OrderedDict()
        _cache_constructor_lookups(self.serde)

    # --- names --------------------------------------------------------------------------------------

    def values_key(self, thread_id: str) -> str:
        return f"{self._checkpoint_prefix}_values:{to_storage_safe_id(thread_id)}"

    # The stock saver caches every key it builds, up to 10,000 write keys that are never evicted: ~2 KB per
    # run, a few MB held for nothing (a key is a string join). Keys are built afresh here.
    def _make_redis_checkpoint_key_cached(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> str:
        return self._make_redis_checkpoint_key(thread_id, checkpoint_ns, checkpoint_id)

    def _make_redis_checkpoint_writes_key_cached(
        self, thread_id: str, checkpoint_ns: str, checkpoint_id: str, task_id: str, idx: int | None
    ) -> str:
        return self._make_redis_checkpoint_writes_key(thread_id, checkpoint_ns, checkpoint_id, task_id, idx)

    @property
    def _ttl_s(self) -> int | None:
        if self.ttl_config and self.ttl_config.get("default_ttl") is not None:
            return int(self.ttl_config["default_ttl"] * 60)
        return None

    # --- writing ------------------------------------------------------------------------------------

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
        stream_mode: str = "values",
    ) -> RunnableConfig:
        if self.cluster_mode:
            return await super().aput(config, checkpoint, metadata, new_versions, stream_mode)
        # Which id and parent: as the stock saver decides them.
        configurable = config["configurable"].copy()
        run_id = configurable.pop("run_id", metadata.get("run_id"))
        thread_id = configurable.pop("thread_id")
        checkpoint_ns = configurable.pop("checkpoint_ns", "")
        config_checkpoint_id = configurable.pop("checkpoint_id", None)
        thread_ts = configurable.pop("thread_ts", "")
        checkpoint_id = config_checkpoint_id or thread_ts or checkpoint.get("id", "")
        parent_checkpoint_id = None
        if checkpoint.get("id") and config_checkpoint_id and checkpoint.get("id") != config_checkpoint_id:
            parent_checkpoint_id = config_checkpoint_id
            checkpoint_id = checkpoint["id"]
        try:
            checkpoint_ts: float = ULID.from_str(checkpoint_id).timestamp
        except Exception:  # noqa: BLE001 - not a ULID (LangGraph's ids are uuid6): now, as the saver does
            checkpoint_ts = time.time() * 1000

        dumped = self._dump_checkpoint(checkpoint.copy())
        bodies = self._compact(dumped)
        known = self._stored.get(thread_id, set())
        new_values = {ref: body for ref, body in bodies.items() if ref not in known}
        document: dict[str, Any] = {
            "thread_id": to_storage_safe_id(thread_id),
            "run_id": to_storage_safe_id(run_id) if run_id else "",
            "checkpoint_ns": to_storage_safe_str(checkpoint_ns),
            "checkpoint_id": to_storage_safe_id(checkpoint_id),
            "parent_checkpoint_id": to_storage_safe_id(parent_checkpoint_id) if parent_checkpoint_id else "",
            "checkpoint_ts": checkpoint_ts,
            "checkpoint": dumped,
            "metadata": self._dump_metadata(metadata),
            "has_writes": False,
        }
        if "source" in metadata and "step" in metadata:
            document["source"] = metadata["source"]
            document["step"] = metadata["step"]

        key = self._make_redis_checkpoint_key_cached(thread_id, checkpoint_ns, checkpoint_id)
        latest = self._make_redis_checkpoint_latest_key(thread_id, checkpoint_ns)
        values_key = self.values_key(thread_id)
        ttl = self._ttl_s
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.exists(values_key)
            if new_values:
                pipe.hset(values_key, mapping=cast(Any, new_values))
            if ttl is not None:
                pipe.expire(values_key, ttl)
            pipe.json().set(key, "$", cast(Any, document))
            if ttl is not None:
                pipe.expire(key, ttl)
            pipe.set(latest, key, ex=ttl)
            had_values = (await pipe.execute())[0]
        if not had_values and len(new_values) < len(bodies):
            # The values this process knew stored are gone (Redis lost its data, or the thread was deleted
            # elsewhere) while this graph still holds them: store all this checkpoint refers to again.
            self._stored.pop(thread_id, None)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(values_key, mapping=cast(Any, bodies))
                if ttl is not None:
                    pipe.expire(values_key, ttl)
                await pipe.execute()
            new_values = bodies
        self._remember(thread_id, new_values)
        return {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns, "checkpoint_id": checkpoint_id}
        }

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        if self.cluster_mode or not writes:
            return await super().aput_writes(config, writes, task_id, task_path)
        thread_id = config["configurable"]["thread_id"]
        checkpoint_ns = config["configurable"].get("checkpoint_ns", "")
        checkpoint_id = config["configurable"]["checkpoint_id"]
        ttl = self._ttl_s
        keys = []
        pipe = self._redis.pipeline(transaction=False)
        for idx, (channel, value) in enumerate(writes):
            type_, blob = self.serde.dumps_typed(value)
            write_idx = WRITES_IDX_MAP.get(channel, idx)
            key = self._make_redis_checkpoint_writes_key_cached(
                thread_id, checkpoint_ns, checkpoint_id, task_id, write_idx
            )
            document = {
                "thread_id": to_storage_safe_id(thread_id),
                "checkpoint_ns": to_storage_safe_str(checkpoint_ns),
                "checkpoint_id": to_storage_safe_id(checkpoint_id),
                "task_id": task_id,
                "task_path": task_path,
                "idx": write_idx,
                "channel": channel,
                "type": type_,
                "blob": self._encode_blob(blob),
            }
            pipe.json().set(key, "$", cast(Any, document))
            keys.append(key)
        checkpoint_key = self._make_redis_checkpoint_key(thread_id, checkpoint_ns, checkpoint_id)
        pipe.json().merge(checkpoint_key, "$", {"has_writes": True})
        registry = self._registry_key(thread_id, checkpoint_ns, checkpoint_id)
        pipe.zadd(registry, cast(Any, {key: n for n, key in enumerate(keys)}))
        if ttl is not None:
            for key in (*keys, registry):
                pipe.expire(key, ttl)
        results = await pipe.execute(raise_on_error=False)
        merge_at = len(keys)
        for n, result in enumerate(results):
            if not isinstance(result, Exception):
                continue
            if n == merge_at:  # the checkpoint is not stored (yet): its flag only speeds up listings
                log.debug("could not flag checkpoint %s as having writes: %s", checkpoint_key, result)
            elif n > merge_at + 1:
                log.warning("could not set the TTL of a checkpoint write: %s", result)
            else:
                raise result

    # --- reading ------------------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        if self.cluster_mode:
            return await super().aget_tuple(config)
        thread_id = config["configurable"]["thread_id"]
        checkpoint_ns = config["configurable"].get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        if checkpoint_id and checkpoint_id != EMPTY_ID_SENTINEL:
            key = self._make_redis_checkpoint_key(thread_id, checkpoint_ns, checkpoint_id)
        else:
            pointer = await self._redis.get(self._make_redis_checkpoint_latest_key(thread_id, checkpoint_ns))
            if not pointer:
                return None
            key = _text(pointer)
            checkpoint_id = from_storage_safe_id(key.rsplit(":", 1)[-1])
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.json().get(key)
            pipe.zrange(self._registry_key(thread_id, checkpoint_ns, checkpoint_id), 0, -1)
            document, write_keys = await pipe.execute()
        if not document:
            return None
        raw_values = document["checkpoint"].get("channel_values") or {}
        refs = _refs_in(raw_values)
        write_keys = [_text(k) for k in write_keys or []]
        async with self._redis.pipeline(transaction=False) as pipe:
            for write_key in write_keys:
                pipe.json().get(write_key)
            if refs:
                pipe.hmget(self.values_key(thread_id), refs)
            results = await pipe.execute()
        bodies = dict(zip(refs, results[-1], strict=True)) if refs else {}
        channel_values = self._recursive_deserialize(self._expand(thread_id, raw_values, bodies))
        writes: dict[tuple[str, str], dict[str, Any]] = {}
        for data in results[: len(write_keys)]:
            if data:
                idx = str(data.get("idx", 0))
                writes[(data.get("task_id", ""), idx)] = {
                    "task_id": data.get("task_id", ""),
                    "idx": idx,
                    "channel": data.get("channel", ""),
                    "type": data.get("type", ""),
                    "blob": data.get("blob", b""),
                }
        raw_metadata = document.get("metadata", "{}")
        metadata = json.loads(raw_metadata) if isinstance(raw_metadata, str) else raw_metadata
        metadata = {
            k.replace("\u0000", ""): v.replace("\u0000", "") if isinstance(v, str) else v for k, v in metadata.items()
        }
        doc_checkpoint_id = from_storage_safe_id(document.get("checkpoint_id", checkpoint_id))
        parent_id = from_storage_safe_id(document.get("parent_checkpoint_id") or "")
        configurable = {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns}
        return CheckpointTuple(
            config={"configurable": {**configurable, "checkpoint_id": doc_checkpoint_id}},
            # Pending sends live in the parent's writes only in checkpoints older than format 4, which this graph
            # never wrote; the stock saver finds none either (it matches channel names against key names).
            checkpoint=self._load_checkpoint(document["checkpoint"], channel_values, []),
            metadata=cast(CheckpointMetadata, metadata),
            parent_config={"configurable": {**configurable, "checkpoint_id": parent_id}} if parent_id else None,
            pending_writes=BaseRedisSaver._load_writes(self.serde, writes),
        )

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,  # noqa: A002 - the saver's signature
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        tuples = [t async for t in super().alist(config, filter=filter, before=before, limit=limit)]
        refs_by_thread: dict[str, list[str]] = {}
        for t in tuples:
            refs_by_thread.setdefault(t.config["configurable"]["thread_id"], []).extend(
                _refs_in(t.checkpoint["channel_values"])
            )
        # Each stored value is fetched and revived once, and shared by the checkpoints that show it.
        revived: dict[str, dict[str, Any]] = {}
        for thread_id, refs in refs_by_thread.items():
            unique = list(dict.fromkeys(refs))
            if not unique:
                continue
            bodies = await self._redis.hmget(self.values_key(thread_id), unique)
            revived[thread_id] = {}
            for ref, body in zip(unique, bodies, strict=True):
                if body is None:
                    raise CheckpointValuesMissing(f"thread {thread_id}: stored value {ref} is gone")
                revived[thread_id][ref] = self._recursive_deserialize(orjson.loads(body))
        for t in tuples:
            values = t.checkpoint["channel_values"]
            found = revived.get(t.config["configurable"]["thread_id"])
            if found:
                t.checkpoint["channel_values"] = {
                    name: _resolve(value, found.__getitem__) for name, value in values.items()
                }
            yield t

    async def aget_channel_values(
        self,
        thread_id: str,
        checkpoint_ns: str = "",
        checkpoint_id: str = "",
        channel_versions: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        raw = await super().aget_channel_values(thread_id, checkpoint_ns, checkpoint_id, channel_versions)
        refs = _refs_in(raw)
        if not refs:
            return raw
        bodies = dict(zip(refs, await self._redis.hmget(self.values_key(thread_id), refs), strict=True))
        return self._expand(thread_id, raw, bodies)

    async def alist_ids(self, thread_id: str, *, limit: int | None = None) -> list[str]:
        """The ids of the thread's root checkpoints, newest first (one FT.SEARCH; nothing of their content)."""
        query = FilterQuery(
            filter_expression=(Tag("thread_id") == to_storage_safe_id(thread_id))
            & (Tag("checkpoint_ns") == to_storage_safe_str("")),
            return_fields=["checkpoint_id"],
            num_results=limit or 10000,
            sort_by=("checkpoint_id", "DESC"),
        )
        results = await self.checkpoints_index.search(query)
        return [from_storage_safe_id(_text(doc["checkpoint_id"])) for doc in results.docs]

    # --- deleting -----------------------------------------------------------------------------------

    async def adelete_checkpoints(self, thread_id: str, checkpoint_ids: Iterable[str]) -> int:
        """Delete root checkpoints of a thread, with their writes and write registries (two round trips).
        Their stored values stay: other checkpoints may show them. Returns how many were asked for."""
        ids = list(checkpoint_ids)
        if not ids:
            return 0
        registries = [self._registry_key(thread_id, "", cid) for cid in ids]
        async with self._redis.pipeline(transaction=False) as pipe:
            for registry in registries:
                pipe.zrange(registry, 0, -1)
            write_keys = await pipe.execute()
        doomed = [self._make_redis_checkpoint_key(thread_id, "", cid) for cid in ids] + registries
        doomed += [_text(k) for keys in write_keys for k in keys or []]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in doomed:  # one key a command: on a cluster, they live in different slots
                pipe.delete(key)
            await pipe.execute()
        return len(ids)

    async def adelete_thread(self, thread_id: str) -> None:
        await super().adelete_thread(thread_id)
        await self._redis.delete(self.values_key(thread_id))
        self._stored.pop(thread_id, None)

    # --- the values store ---------------------------------------------------------------------------

    def _registry_key(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str) -> str:
        assert self._key_registry is not None, "asetup() first"
        return self._key_registry.make_write_keys_zset_key(thread_id, checkpoint_ns, checkpoint_id)

    def _compact(self, dumped: dict[str, Any]) -> dict[str, bytes]:
        """Replace the dumped checkpoint's list items and big dicts by references; return what they refer to."""
        values = dumped.get("channel_values")
        if not values:
            return {}
        bodies: dict[str, bytes] = {}
        for name, value in list(values.items()):
            if isinstance(value, list) and value:
                refs = []
                for item in value:
                    body = orjson.dumps(item)
                    ref = _ref(body)
                    refs.append(ref)
                    bodies[ref] = body
                values[name] = {_REFS: " ".join(refs)}
            elif isinstance(value, dict) and value and _REF not in value and _REFS not in value:
                body = orjson.dumps(value)
                if len(body) >= _MIN_REF_BYTES:
                    ref = _ref(body)
                    bodies[ref] = body
                    values[name] = {_REF: ref}
        return bodies

    def _remember(self, thread_id: str, stored: dict[str, bytes]) -> None:
        known = self._stored.pop(thread_id, None) or set()
        known.update(stored)
        self._stored[thread_id] = known
        while len(self._stored) > _REMEMBERED_THREADS:
            self._stored.popitem(last=False)

    def _expand(self, thread_id: str, raw_values: dict[str, Any], bodies: dict[str, Any]) -> dict[str, Any]:
        """The raw (JSON) channel values with references replaced by what they refer to."""

        def body(ref: str) -> Any:
            found = bodies.get(ref)
            if found is None:
                raise CheckpointValuesMissing(f"thread {thread_id}: stored value {ref} is gone")
            return orjson.loads(found)

        self._remember(thread_id, {ref: b"" for ref, found in bodies.items() if found is not None})
        return {name: _resolve(value, body) for name, value in raw_values.items()}


def _cache_constructor_lookups(serde: Any) -> None:
    """The saver's serializer looks up the class of every LangChain object it revives by importing its module path,
    to tell dataclasses apart; for messages that path (``langchain.schema.messages``) does not exist, so every message
    read costs a failed import, a search of sys.path. The answer never changes: look each path up once."""
    lookup = getattr(serde, "_constructor_class", None)
    if lookup is None:
        return
    found: dict[tuple[str, ...], type[Any] | None] = {}

    def cached(obj: dict[str, Any]) -> type[Any]:
        parts = obj.get("id")
        if not isinstance(parts, list) or not all(isinstance(part, str) for part in parts):
            return cast(type[Any], lookup(obj))
        key = tuple(parts)
        if key not in found:
            try:
                found[key] = lookup(obj)
            except ValueError:
                found[key] = None
        cls = found[key]
        if cls is None:
            raise ValueError(f"Cannot import {key[-1]} from {'.'.join(key[:-1])}")
        return cls

    serde._constructor_class = cached


def _ref(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.blake2b(body, digest_size=12).digest()).decode()


def _refs_in(values: dict[str, Any]) -> list[str]:
    refs: list[str] = []
    for value in values.values():
        if isinstance(value, dict):
            if isinstance(value.get(_REFS), str):
                refs.extend(value[_REFS].split())
            elif isinstance(value.get(_REF), str):
                refs.append(value[_REF])
    return refs


def _resolve(value: Any, lookup: Callable[[str], Any]) -> Any:
    if isinstance(value, dict):
        if isinstance(value.get(_REFS), str):
            return [lookup(ref) for ref in value[_REFS].split()]
        if isinstance(value.get(_REF), str):
            return lookup(value[_REF])
    return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
