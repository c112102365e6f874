"""Pure pieces in isolation: argument validation, review answers, policy, settings, the offline
planner, and the plain-Redis lock and ledger (on fakeredis)."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from graphs.builtin_tools import ToolFailed, _resolve_runbook, _search, build_registry
from graphs.errors import ConfigError, InvalidArguments, InvalidDecision, RunBusy
from graphs.ledger import RedisLedger
from graphs.locks import ThreadLocks
from graphs.planner import OFFLINE_LABEL, OfflinePlanner, make_model
from graphs.policy import Policy
from graphs.review import build_request, check_response
from graphs.settings import CoreSettings
from graphs.tools import summarize_args
from graphs.types import approve, edit, reject


@pytest.fixture
def registry(runbooks):
    return build_registry(runbooks.dir)


def test_edited_args_are_checked_against_the_tool_schema(registry):
    assert registry.validate_args("post_message", {"channel": "#ops", "text": "hi"}) == {"channel": "#ops", "text": "hi"}
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
    ok = check_response(request, {"decisions": [approve(), edit("post_message", {"channel": "#a", "text": "y"})]}, registry)
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
    results = [ToolMessage("GET ... -> 200 OK", tool_call_id="a", name="http_check"),
               ToolMessage("runbook disk-usage.sh exited 0\n/ 42% used", tool_call_id="b", name="run_runbook")]
    second = planner.invoke([task, first, *results])
    assert second.tool_calls[0]["name"] == "post_message" and second.tool_calls[0]["args"]["channel"] == "#ops"
    posted = ToolMessage("posted to #ops", tool_call_id="c", name="post_message")
    final = planner.invoke([task, first, *results, second, posted])
    assert not final.tool_calls and final.content.startswith(OFFLINE_LABEL) and "42% used" in final.content
    assert "could not map" in planner.invoke([HumanMessage("make me a sandwich")]).content


def test_runbooks_run_only_from_the_folder(runbooks):
    assert _resolve_runbook(runbooks.dir.resolve(), "record").name == "record.sh"
    for bad in ("../record", "/bin/sh", ".hidden", "notes.md", "nope"):
        with pytest.raises(ToolFailed):
            _resolve_runbook(runbooks.dir.resolve(), bad)
    assert _search(runbooks.dir, "disk").splitlines()[0].startswith("disk-usage.sh")


def test_args_summary_is_one_readable_line():
    assert summarize_args({"channel": "#ops", "text": "two words", "n": 3}) == 'channel=#ops, text="two words", n=3'
    assert len(summarize_args({"text": "x" * 500}, limit=50)) == 50


async def test_a_thread_lock_admits_one_holder():
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    locks = ThreadLocks(redis, ttl_ms=300)
    async with locks.hold("t1"):
        with pytest.raises(RunBusy):
            async with locks.hold("t1"):
                pass
        await asyncio.sleep(0.4)  # longer than the ttl: the keeper extends it
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
