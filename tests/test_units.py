"""Pure pieces in isolation: argument validation, review answers, policy, settings, the offline
planner, and the plain-Redis lock, ledger (on fakeredis) and run index (in memory, on fakeredis and on Redis)."""

from __future__ import annotations

import asyncio
import uuid

import fakeredis
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from redis.asyncio import Redis

from graphs.builtin_tools import build_registry, find_runbooks, resolve_runbook
from graphs.errors import (
    ConfigError,
    InvalidArguments,
    InvalidDecision,
    RunBusy,
    ToolFailed,
)
from graphs.keys import Keys
from graphs.ledger import RedisLedger
from graphs.locks import ThreadLocks
from graphs.planner import OFFLINE_LABEL, OfflinePlanner, make_model
from graphs.policy import Policy
from graphs.review import build_request, check_response
from graphs.run_index import MemoryRunIndex, RedisRunIndex
from graphs.settings import CoreSettings
from graphs.tools import summarize_args
from graphs.types import PendingReview, approve, edit, reject


@pytest.fixture
def registry(runbooks):
    return build_registry(runbooks.dir)


def test_edited_args_are_checked_against_the_tool_schema(registry):
    assert registry.validate_args("post_message", {"channel": "#ops", "text": "hi"}) == {
        "channel": "#ops",
        "text": "hi",
    }
    with pytest.raises(InvalidArguments) as wrong_type:
        registry.validate_args("post_message", {"channel": ["#ops"], "text": "hi"})
    assert set(wrong_type.value.errors) == {"channel"}
    with pytest.raises(InvalidArguments, match="text: Field required"):
        registry.validate_args("post_message", {"channel": "#ops"})
    with pytest.raises(InvalidArguments, match="unknown tool"):
        registry.validate_args("rm_rf", {})
    with pytest.raises(InvalidArguments, match="expected an object"):
        registry.validate_args("post_message", "channel=#ops")


def test_a_review_answer_must_fit_the_request(registry):
    calls = [
        {"name": "run_runbook", "args": {"name": "record"}, "id": "c1"},
        {"name": "post_message", "args": {"channel": "#ops", "text": "x"}, "id": "c2"},
    ]
    request = build_request(calls, registry, Policy())
    assert request["action_requests"][1]["description"] == "post_message(channel=#ops, text=x)"
    assert request["review_configs"][0]["args_schema"]["properties"]["name"]["type"] == "string"
    ok = check_response(
        request, {"decisions": [approve(), edit("post_message", {"channel": "#a", "text": "y"})]}, registry
    )
    assert ok[1] == {"type": "edit", "edited_action": {"name": "post_message", "args": {"channel": "#a", "text": "y"}}}
    with pytest.raises(InvalidDecision, match="decisions"):
        check_response(request, [approve(), approve()], registry)
    with pytest.raises(InvalidDecision, match="not the tool"):
        check_response(request, {"decisions": [approve(), edit("run_runbook", {"name": "x"})]}, registry)
    with pytest.raises(InvalidDecision, match="rejection message must be text"):
        check_response(request, {"decisions": [approve(), {"type": "reject", "message": 3}]}, registry)
    assert check_response(request, {"decisions": [reject("no"), reject()]}, registry)[0]["message"] == "no"


def test_policy_modes():
    policy = Policy()
    assert policy.mode("http_check") == "auto" and policy.mode("run_runbook") == "ask"
    assert policy.mode("some_new_tool") == "ask"  # nobody said it is safe
    assert policy.with_rules(post_message="deny").mode("post_message") == "deny"
    with pytest.raises(ConfigError, match="'sometimes'"):
        Policy().with_rules(x="sometimes")  # type: ignore[arg-type]


def test_settings_name_the_bad_variable():
    with pytest.raises(ConfigError, match="CHATOPS_TTL_MINUTES"):
        CoreSettings.from_env({"CHATOPS_TTL_MINUTES": "soon"})
    assert not CoreSettings.from_env({}).model_configured
    assert CoreSettings.from_env({"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}).model_configured


def test_core_settings_read_the_policy_and_the_allowlist_from_the_one_mapping_given(monkeypatch):
    monkeypatch.setenv("CHATOPS_TOOL_RUN_RUNBOOK", "deny")  # the process environment, not the mapping given
    env = {"CHATOPS_TOOL_POST_MESSAGE": "deny", "CHATOPS_EXPIRES_AFTER": "90s", "CHATOPS_HTTP_ALLOW": "status.internal"}
    settings = CoreSettings.from_env(env)
    assert settings.policy.mode("post_message") == "deny" and settings.policy.expires_after_s == 90
    assert settings.policy.mode("run_runbook") == "ask" and Policy.from_env({}).mode("run_runbook") == "ask"
    assert [h.entry for h in settings.allowlist.hosts] == ["status.internal"]
    with pytest.raises(ConfigError, match=r"CHATOPS_HTTP_ALLOW.*'status.internal:port'"):
        CoreSettings.from_env({"CHATOPS_HTTP_ALLOW": "status.internal:port"})
    with pytest.raises(ConfigError, match="CHATOPS_TOOL_POST_MESSAGE"):
        CoreSettings.from_env({"CHATOPS_TOOL_POST_MESSAGE": "sometimes"})


def test_the_offline_planner_is_used_only_without_a_model(runbooks):
    assert isinstance(make_model(CoreSettings(), runbooks.dir), OfflinePlanner)
    for configured in ({"openai_api_key": "k"}, {"openai_base_url": "http://127.0.0.1:1/v1"}, {"model": "m"}):
        assert isinstance(make_model(CoreSettings(**configured), runbooks.dir), ChatOpenAI)


def test_offline_planner_plans_by_keywords_and_labels_itself(runbooks):
    planner = OfflinePlanner(runbooks_dir=runbooks.dir)
    task = HumanMessage("check http://127.0.0.1:9/health, run the disk-usage runbook and post a summary to #ops")
    first = planner.invoke([task])
    assert OFFLINE_LABEL in first.content
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [
        ("http_check", {"url": "http://127.0.0.1:9/health"}),
        ("run_runbook", {"name": "disk-usage"}),
    ]
    results = [
        ToolMessage("GET ... -> 200 OK", tool_call_id="a", name="http_check"),
        ToolMessage("runbook disk-usage.sh exited 0\n/ 42% used", tool_call_id="b", name="run_runbook"),
    ]
    second = planner.invoke([task, first, *results])
    assert second.tool_calls[0]["name"] == "post_message" and second.tool_calls[0]["args"]["channel"] == "#ops"
    posted = ToolMessage("posted to #ops", tool_call_id="c", name="post_message")
    final = planner.invoke([task, first, *results, second, posted])
    assert not final.tool_calls and final.content.startswith(OFFLINE_LABEL) and "42% used" in final.content
    assert "could not map" in planner.invoke([HumanMessage("make me a sandwich")]).content


def test_runbooks_run_only_from_the_folder(runbooks):
    assert resolve_runbook(runbooks.dir.resolve(), "record").name == "record.sh"
    for bad in ("../record", "/bin/sh", ".hidden", "notes.md", "nope"):
        with pytest.raises(ToolFailed):
            resolve_runbook(runbooks.dir.resolve(), bad)
    assert find_runbooks(runbooks.dir, "disk").splitlines()[0].startswith("disk-usage.sh")


def test_args_summary_is_one_readable_line():
    assert summarize_args({"channel": "#ops", "text": "two words", "n": 3}) == 'channel=#ops, text="two words", n=3'
    assert len(summarize_args({"text": "x" * 500}, limit=50)) == 50


async def test_a_thread_lock_admits_one_holder():
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    # A TTL with room for a busy machine: the keeper gives up (LockLost) when it cannot extend within ttl - margin.
    locks = ThreadLocks(redis, ttl_ms=1500)
    async with locks.hold("t1"):
        with pytest.raises(RunBusy):
            async with locks.hold("t1"):
                pass
        await asyncio.sleep(1.6)  # longer than the ttl: the keeper extends it
        assert await locks.is_held("t1")
    assert not await locks.is_held("t1")
    async with locks.hold("t1", wait_s=0.1):
        pass


async def test_the_ledger_claims_each_call_once():
    ledger = RedisLedger(fakeredis.FakeAsyncRedis(decode_responses=True))
    assert await ledger.claim("t:review:c1")
    assert not await ledger.claim("t:review:c1")
    assert await ledger.result("t:review:c1") is None  # started, outcome unknown
    await ledger.record("t:review:c1", True, "done")
    assert await ledger.result("t:review:c1") == (True, "done")


def _review(thread_id: str, asked_at: float, **fields: str) -> PendingReview:
    request = {
        "action_requests": [
            {
                "name": "run_runbook",
                "args": {"name": "record"},
                "description": "run_runbook(name=record)",
                "tool_call_id": "c1",
            }
        ],
        "review_configs": [],
    }
    return PendingReview(thread_id, f"interrupt-{thread_id}", request, created_at=asked_at, **fields)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "fakeredis", "redis"])
async def index(request):
    """The run index in each of its backends; the Redis ones under a prefix of their own."""
    if request.param == "memory":
        yield MemoryRunIndex()
        return
    if request.param == "fakeredis":
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    else:
        redis = Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    try:
        yield RedisRunIndex(redis, Keys(f"test-{uuid.uuid4().hex[:8]}:"), ttl_s=60)
    finally:
        await redis.aclose()


async def test_the_run_index_lists_waiting_reviews_oldest_first_until_each_is_answered(index):
    await index.begin("t1", 100.0)
    await index.begin("t1", 200.0)  # a follow-up task keeps the run's first start
    await index.update("t1", task="restart api", requester="U_ASK", status="running", error=None)
    first = _review("t1", 10.0, task="restart api", requester="U_ASK")
    await index.list_pending(_review("t2", 20.0))
    await index.list_pending(first)
    assert [r.thread_id for r in await index.pending()] == ["t1", "t2"]
    assert (await index.pending())[0] == first
    run = await index.read("t1")
    assert run["status"] == "waiting" and run["task"] == "restart api" and run["requester"] == "U_ASK"
    assert run["error"] == "" and float(run["created_at"]) == 100.0 and float(run["updated_at"]) > 0
    await index.clear_pending("t1")
    assert [r.thread_id for r in await index.pending()] == ["t2"]
    assert "pending" not in await index.read("t1")
    assert await index.read("never-started") == {}


async def test_the_run_index_marks_running_threads_and_carries_a_cancel_request(index):
    await index.mark_running("t2", 2.0)
    await index.mark_running("t1", 1.0)
    assert await index.running() == ["t1", "t2"]
    await index.clear_running("t1")
    assert await index.running() == ["t2"]
    assert await index.cancel_request("t2") is None
    await index.request_cancel("t2", None, ttl_s=60)
    assert await index.cancel_request("t2") == ""  # asked, by nobody named
    await index.request_cancel("t2", "U_BOSS", ttl_s=60)
    assert await index.cancel_request("t2") == "U_BOSS"
    await index.clear_cancel("t2")
    assert await index.cancel_request("t2") is None


async def test_in_redis_an_expired_run_leaves_the_pending_listing(redis_url):
    redis = Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(f"test-{uuid.uuid4().hex[:8]}:")
    index = RedisRunIndex(redis, keys, ttl_s=60)
    try:
        await index.list_pending(_review("t1", 10.0))
        await index.request_cancel("t1", None, ttl_s=90)
        assert 0 < await redis.ttl(keys.run("t1")) <= 60 and 0 < await redis.ttl(keys.cancel("t1")) <= 90
        assert await redis.get(keys.cancel("t1")) == "-"  # the stored form every replica reads
        await redis.delete(keys.run("t1"))  # what the run's TTL does
        assert await index.pending() == []
        assert await redis.zscore(keys.pending, "t1") is None
    finally:
        await redis.aclose()


def test_the_embedded_redis_server_never_sees_the_owners_secrets(monkeypatch, tmp_path):
    """redis-server overwrites its own /proc environ (its process title), so the environment it was given is read
    where it is handed over: the real Popen, watched."""
    import subprocess

    from graphs import embedded_redis

    given: list[dict[str, str]] = []
    real_popen = subprocess.Popen

    def watched(*args, **kwargs):
        given.append(kwargs.get("env"))
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(embedded_redis.subprocess, "Popen", watched)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-never-in-redis")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-in-redis")
    with embedded_redis.EmbeddedRedis(tmp_path / "redis") as server:
        assert server.pid is not None
    (env,) = given
    assert env is not None, "inherits the whole environment"
    assert "SLACK_BOT_TOKEN" not in env and "OPENAI_API_KEY" not in env and "PATH" in env
