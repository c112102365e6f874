"""Wiring: settings -> Redis (external or embedded) -> checkpointer, tools, model, graph -> Runs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ResponseError

from .agent import SYSTEM_PROMPT, Limits, build_graph
from .builtin_tools import BUNDLED_RUNBOOKS, PostMessage, build_registry
from .checkpoints import CompactRedisSaver
from .embedded_redis import EmbeddedRedis
from .ledger import RedisLedger
from .outbound import OutboundGuard
from .planner import make_model
from .policy import Policy
from .redaction import Redactor
from .runs import Runs
from .settings import CoreSettings
from .tools import Assess

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What ``open_runtime`` opened, valid until its block ends."""

    settings: CoreSettings  # what it was opened with
    runs: Runs  # the one way to move a thread: start, resume, rewind, cancel
    redis: Redis  # the shared connection (answers as str), for the chat surface's own keys (graphs.keys)
    redis_url: str  # REDIS_URL, or the embedded server's URL
    embedded: EmbeddedRedis | None  # the embedded server started because REDIS_URL was unset, else None


def redis_client(
    redis_url: str, *, decode_responses: bool, max_connections: int = 100, pool_timeout_s: float = 20.0
) -> Redis:
    """A client whose pool, when all ``max_connections`` are busy (a burst of runs), makes a call wait up to
    ``pool_timeout_s`` for one instead of failing at once. Each call is bounded too: a Redis that stops answering
    fails it in seconds instead of hanging a click forever."""
    pool = BlockingConnectionPool.from_url(
        redis_url,
        decode_responses=decode_responses,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        socket_timeout=10,
        socket_connect_timeout=5,
        # As Redis() does by default (a pool built by hand gets none): a connection that broke while Redis was
        # away is retried on a fresh one, so the first call after Redis is back does not fail.
        retry=Retry(ExponentialWithJitterBackoff(base=0.1, cap=2), 3),
    )
    return Redis.from_pool(pool)


async def open_saver(redis: Redis, ttl_minutes: int) -> CompactRedisSaver:
    """The checkpointer, on ``redis`` (which answers bytes, as the saver expects; the caller closes it).

    Keys expire ``ttl_minutes`` after they are written. ``refresh_on_read`` is off: refreshing costs a TTL read and an
    EXPIRE per key on every read, and a thread's keys are rewritten by every run of it anyway."""
    saver = CompactRedisSaver(redis_client=redis, ttl={"default_ttl": ttl_minutes, "refresh_on_read": False})
    for attempt in range(3):
        try:
            await saver.asetup()
            return saver
        except ResponseError as exc:
            # Several processes starting at once race to create the search indexes; the loser retries.
            if "already exists" not in str(exc) or attempt == 2:
                raise
    return saver


@contextlib.asynccontextmanager
async def open_runtime(
    settings: CoreSettings | None = None,
    *,
    post_message: PostMessage | None = None,
    assess_post: Assess | None = None,
    policy: Policy | None = None,
) -> AsyncIterator[Runtime]:
    """Everything a run needs. ``post_message``/``assess_post``: the chat surface's side of the post_message
    tool (posting, and saying where a post goes and whom it notifies before anyone approves it). ``policy``:
    the approval policy, when the caller already holds one; default ``settings.policy``."""
    settings = settings or CoreSettings.from_env()
    embedded = None
    redis_url = settings.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(settings.data_dir / "redis").start()
        redis_url = embedded.url
        log.info("started embedded Redis on %s (data in %s)", redis_url, settings.data_dir / "redis")
    pool_size, pool_timeout_s = settings.redis_max_connections, settings.redis_pool_timeout_s
    redis = redis_client(redis_url, decode_responses=True, max_connections=pool_size, pool_timeout_s=pool_timeout_s)
    # The saver's own client: it expects bytes.
    saver_redis = redis_client(
        redis_url, decode_responses=False, max_connections=pool_size, pool_timeout_s=pool_timeout_s
    )
    saver = None
    try:
        # Inside the try: a cancel or failure while the saver opens still stops what was started above.
        saver = await open_saver(saver_redis, settings.ttl_minutes)
        runbooks = settings.runbooks_dir or BUNDLED_RUNBOOKS
        registry = build_registry(
            runbooks,
            post_message,
            runbook_timeout_s=settings.runbook_timeout_s,
            runbook_env=settings.runbook_env,
            guard=OutboundGuard(settings.allowlist),
            assess_post=assess_post,
        )
        policy = settings.policy if policy is None else policy
        ttl_s = settings.ttl_minutes * 60
        redactor = Redactor(settings.secrets, {str(runbooks.resolve()): "runbooks"})
        graph = build_graph(
            make_model(settings, runbooks),
            registry,
            policy,
            checkpointer=saver,
            ledger=RedisLedger(redis, prefix=settings.keys.ledger_prefix, ttl_s=ttl_s),
            redactor=redactor,
            system_prompt=system_prompt(settings),
            limits=Limits(settings.max_planner_turns, settings.max_tool_calls),
        )
        runs = Runs(graph, registry, policy, redis, prefix=settings.key_prefix, ttl_s=ttl_s, redact=redactor)
        yield Runtime(settings, runs, redis, redis_url, embedded)
    finally:
        if saver is not None:
            await saver.__aexit__(None, None, None)
        await saver_redis.aclose()
        await redis.aclose()
        if embedded is not None:
            embedded.stop()


def system_prompt(settings: CoreSettings) -> str:
    """The model's instructions, with what the deployment tells it ("the API" is CHATOPS_HEALTH_URL)."""
    if not settings.health_url:
        return SYSTEM_PROMPT
    return f'{SYSTEM_PROMPT}\nWhen asked to check "the API" without a URL, check {settings.health_url}.'
