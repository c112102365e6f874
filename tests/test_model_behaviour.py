"""What a real small model did to the product, replayed by the scripted server so the fixes stay fixed.

Each scenario is a behaviour seen from Qwen2.5-Coder-1.5B behind llama.cpp (`make real-model-check` runs the real
one): tool calls written as text (fenced JSON, ``<tool_call>`` tags, a bare object), text that looks like a call
and does not parse, the same call proposed turn after turn, plans that never end, invented internal URLs, and the
ways a model server fails (down, wrong URL, 401, unknown model, context overflow, a stream cut mid-way).

Real parts: ChatOpenAI against the scripted OpenAI-compatible server, Redis 8, runbooks run as processes.
"""

from __future__ import annotations

import json

import pytest

from graphs.agent import ALREADY_DONE
from graphs.embedded_redis import free_port
from graphs.policy import Policy
from graphs.runtime import open_runtime
from graphs.textcalls import READ_FROM_TEXT, SERVER_HINT
from graphs.types import Finished, ToolFinished, ToolProposed, approve
from sandbox.openai_server import rule

from .bot_support import APPROVER, OPS, all_text, bot_env, mention
from .conftest import settings_for
from .test_approval_scenarios import Recorder

RECORD_CALL = {"name": "run_runbook", "arguments": {"name": "record"}}


def fenced(call: dict) -> str:
    return f"I will run the runbook.\n```json\n{json.dumps(call)}\n```"


def tool_results_seen_by_model(model, request: int = -1) -> list[dict]:
    return [m for m in model.requests[request]["messages"] if m["role"] == "tool"]


@pytest.fixture
async def auto_runtime(redis_url, model, runbooks, outbox):
    """Runbooks run without review here: what a loop of automatic tools does is the point."""
    settings = settings_for(redis_url, model, runbooks, policy=Policy.from_env({"CHATOPS_TOOL_RUN_RUNBOOK": "auto"}))
    async with open_runtime(settings, post_message=outbox) as rt:
        yield rt


# --- tool calls written as text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        fenced(RECORD_CALL),
        f"<tool_call>\n{json.dumps(RECORD_CALL)}\n</tool_call>",
        json.dumps(RECORD_CALL),
        # OpenAI's own shape, arguments as a JSON string
        fenced({"type": "function", "function": {"name": "run_runbook", "arguments": '{"name": "record"}'}}),
        # Qwen2.5-Coder behind llama.cpp copied its template's doubled braces
        "```json\n" + json.dumps(RECORD_CALL).replace("{", "{{").replace("}", "}}") + "\n```",
    ],
    ids=["fenced-json", "tool_call-tags", "bare-object", "function-object", "doubled-braces"],
)
async def test_a_call_written_as_text_is_proposed_on_a_card_that_says_so(runtime, model, runbooks, thread_id, written):
    model.reset(
        [
            rule({"text": written}, has_tool_results=False),
            rule({"text": "Recorded: the runbook ran."}, has_tool_results=True),
        ]
    )
    events = Recorder()
    paused = await runtime.runs.start(thread_id, "run the record runbook", on_event=events)

    assert paused.status == "waiting", paused
    action = paused.pending.request["action_requests"][0]
    assert (action["name"], action["args"]) == ("run_runbook", {"name": "record"})
    assert action["facts"][0] == READ_FROM_TEXT
    proposed = events.of(ToolProposed)[0]
    assert proposed.said is not None and "{" not in proposed.said  # the progress shows the words, not the JSON
    assert runbooks.executions() == []

    done = await runtime.runs.resume(thread_id, paused.pending.interrupt_id, [approve()])
    assert done.status == "done" and done.report == "Recorded: the runbook ran."
    assert len(runbooks.executions("record")) == 1
    # The model's next turn sees its call answered like any structured one.
    assert "recorded ok" in tool_results_seen_by_model(model)[0]["content"]


async def test_text_that_looks_like_a_call_but_does_not_parse_fails_saying_how_to_fix_the_server(
    runtime, model, runbooks, thread_id
):
    model.reset([rule({"text": 'Running it.\n```json\n{"name": "run_runbook", "arguments": {"name": \n```'})])
    events = Recorder()
    result = await runtime.runs.start(thread_id, "run the record runbook", on_event=events)

    assert result.status == "failed"
    assert "could not be read" in result.error and SERVER_HINT in result.error
    assert "--jinja" in result.error and "--tool-call-parser" in result.error and "ollama" in result.error.lower()
    assert not result.error.startswith("UnreadableToolCall")  # words for a person, not an exception's name
    assert runbooks.executions() == []


async def test_a_text_call_to_a_tool_that_does_not_exist_is_refused_and_the_model_told(runtime, model, thread_id):
    model.reset(
        [
            rule({"text": fenced({"name": "restart_database", "arguments": {"host": "db1"}})}, has_tool_results=False),
            rule({"text": "I cannot restart databases: no tool for that."}, has_tool_results=True),
        ]
    )
    result = await runtime.runs.start(thread_id, "restart the database")

    assert result.status == "done" or result.status == "rejected", result
    told = tool_results_seen_by_model(model)[0]["content"]
    assert "There is no tool named restart_database" in told and "run_runbook" in told


async def test_prose_with_json_that_is_not_a_call_stays_the_answer(runtime, model, thread_id):
    model.reset([rule({"text": 'The config is `{"retries": 3}` and all is fine.'})])
    result = await runtime.runs.start(thread_id, "what is the retry setting?")
    assert result.status == "nothing" and result.report == 'The config is `{"retries": 3}` and all is fine.'


# --- no loops --------------------------------------------------------------------------------------------------


async def test_the_same_call_again_is_not_run_again_and_a_third_time_stops_the_run(
    auto_runtime, model, runbooks, thread_id
):
    """The model proposes run_runbook(record) every turn, ignoring its result: it runs once; the model is told it
    already ran (with the result); proposing it yet again ends the run as stopped, saying why."""
    model.reset([rule({"tool_calls": [{"name": "run_runbook", "args": {"name": "record"}}]})])
    events = Recorder()
    result = await auto_runtime.runs.start(thread_id, "run the record runbook", on_event=events)

    assert result.status == "stopped", result
    assert "again after it was told the call had already run" in result.error
    assert len(runbooks.executions("record")) == 1
    assert len(model.requests) == 3
    second = tool_results_seen_by_model(model, 2)
    assert second[-1]["content"].startswith(ALREADY_DONE) and "recorded ok" in second[-1]["content"]
    assert [e.name for e in events.of(ToolFinished)] == ["run_runbook"]
    assert events.of(Finished)[-1].outcome == "stopped"
    # The thread is left well-formed: a follow-up task starts and ends normally.
    model.reset([rule({"text": "Nothing else to do."}, last_user_contains="thanks")])
    follow_up = await auto_runtime.runs.start(thread_id, "thanks")
    assert follow_up.status == "nothing"


async def test_a_plan_that_never_ends_is_stopped_at_the_turn_budget(redis_url, model, runbooks, thread_id):
    model.reset(
        [rule({"tool_calls": [{"name": "search_runbooks", "args": {"query": f"q{n}"}}]}, times=1) for n in range(10)]
    )
    settings = settings_for(redis_url, model, runbooks, max_planner_turns=3)
    async with open_runtime(settings) as rt:
        result = await rt.runs.start(thread_id, "search the runbooks for everything")
    assert result.status == "stopped"
    assert "3 model turns" in result.error and "CHATOPS_MAX_PLANNER_TURNS" in result.error
    assert len(model.requests) == 3


async def test_calls_over_the_tool_call_budget_do_not_run(redis_url, model, runbooks, thread_id):
    calls = [{"name": "search_runbooks", "args": {"query": f"q{n}"}} for n in range(3)]
    model.reset([rule({"tool_calls": calls})])
    settings = settings_for(redis_url, model, runbooks, max_tool_calls=2)
    async with open_runtime(settings) as rt:
        events = Recorder()
        result = await rt.runs.start(thread_id, "search the runbooks three ways", on_event=events)
    assert result.status == "stopped" and "CHATOPS_MAX_TOOL_CALLS" in result.error
    assert events.of(ToolFinished) == []


async def test_the_model_is_told_what_ran_before_each_turn(auto_runtime, model, thread_id):
    model.reset(
        [
            rule({"tool_calls": [{"name": "run_runbook", "args": {"name": "record"}}]}, has_tool_results=False),
            rule({"text": "Recorded."}, has_tool_results=True),
        ]
    )
    await auto_runtime.runs.start(thread_id, "run the record runbook")
    system = [m["content"] for m in model.requests[-1]["messages"] if m["role"] == "system"]
    assert system[-1].startswith("So far in this task: Ran: run_runbook.")


# --- invented URLs -------------------------------------------------------------------------------------------


async def test_an_invented_internal_url_is_refused_before_anything_is_fetched(runtime, model, thread_id):
    model.reset(
        [
            rule(
                {"tool_calls": [{"name": "http_check", "args": {"url": "http://localhost:5000/health"}}]},
                has_tool_results=False,
            ),
            rule({"text": "The health endpoint could not be checked."}, has_tool_results=True),
        ]
    )
    events = Recorder()
    result = await runtime.runs.start(thread_id, "check the API", on_event=events)
    assert result.status in ("rejected", "done"), result
    assert events.of(ToolFinished) == []  # nothing was fetched
    told = tool_results_seen_by_model(model)[0]["content"]
    assert "internal address" in told


# --- model failures in words ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "names"),
    [
        (
            {
                "fault": {
                    "status": 400,
                    "message": "request (1039 tokens) exceeds the available context size (1024 tokens)",
                }
            },
            ["no longer fits the model's context", "-c 16384", "--max-model-len", "num_ctx"],
        ),
        ({"fault": {"status": 401, "message": "Invalid API Key"}}, ["OPENAI_API_KEY"]),
        ({"fault": {"status": 404, "message": "model 'qwen-9b' not found"}}, ["CHATOPS_MODEL", "/v1/models"]),
        ({"text": "one two three four five six seven", "cut_after_chunks": 2}, ["in the middle of its answer"]),
    ],
    ids=["context-overflow", "401", "unknown-model", "stream-cut"],
)
async def test_a_model_failure_ends_the_run_naming_what_to_fix(runtime, model, runbooks, thread_id, reply, names):
    model.reset([rule(reply)])
    events = Recorder()
    result = await runtime.runs.start(thread_id, "run the record runbook", on_event=events)
    assert result.status == "failed", result
    for name in names:
        assert name in result.error, result.error
    assert "Error:" not in result.error.split(".")[0]  # no exception class leads the message
    assert runbooks.executions() == []


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("http://127.0.0.1:{closed}/v1", ["cannot be reached", "OPENAI_BASE_URL"]),
        ("{model}/../not-the-api", ["HTTP 404", "OPENAI_BASE_URL", "/v1"]),
    ],
    ids=["server-down", "wrong-url"],
)
async def test_a_model_server_that_is_down_or_misaddressed_is_named(redis_url, model, runbooks, thread_id, url, names):
    base = url.format(closed=free_port(), model=model.base_url.removesuffix("/v1"))
    settings = settings_for(redis_url, model, runbooks, openai_base_url=base)
    async with open_runtime(settings) as rt:
        result = await rt.runs.start(thread_id, "run the record runbook")
    assert result.status == "failed"
    for name in names:
        assert name in result.error, result.error


# --- as a person in Slack sees it --------------------------------------------------------------------------------


@pytest.fixture
def env(slack, redis_url, model, runbooks):
    return bot_env(slack, redis_url, model.base_url, runbooks.dir)


async def test_in_slack_a_call_written_as_text_gets_a_card_saying_so_and_the_json_never_shows(
    slack, start, model, runbooks
):
    model.reset(
        [
            # streamed slowly, so the progress message is edited while the model writes its call
            rule(
                {"text": fenced({"name": "run_runbook", "arguments": {"name": "disk-usage"}}), "chunk_delay": 0.25},
                has_tool_results=False,
            ),
            rule({"text": "Disk usage is 42%."}, has_tool_results=True),
        ]
    )
    bot = start()
    thread = await mention(slack, "run the disk-usage runbook")
    card = await thread.wait_card()
    assert "read from the model's text" in all_text(card)
    await slack.click_button(APPROVER, OPS, card["ts"], "approve")
    done = await thread.wait_progress("Done")
    assert "Disk usage is 42%." in all_text(done)
    shown = [all_text(version) for version in slack.edit_history(OPS, done["ts"])]
    assert any("I will run the runbook." in text for text in shown), shown  # the words streamed...
    assert not any('"arguments"' in text for text in shown), shown  # ...the call never, in any version
    assert len(runbooks.executions("disk-usage")) == 1
    # The bot said at start-up that this model server returns structured tool calls (the scripted one does).
    assert "Model check: model scripted at" in bot.log() and "structured tool calls" in bot.log()


async def test_in_slack_a_model_server_that_is_down_is_named_at_start_up_and_in_the_thread(slack, start, runbooks):
    closed = f"http://127.0.0.1:{free_port()}/v1"
    bot = start(OPENAI_BASE_URL=closed)
    thread = await mention(slack, "run the disk-usage runbook")
    failed = await thread.wait_progress("Failed", timeout=40)
    assert "cannot be reached" in all_text(failed) and "OPENAI_BASE_URL" in all_text(failed)
    await slack.wait_for(lambda: "Model check:" in bot.log(), timeout=20, description="the start-up model check")
    assert "cannot be reached" in bot.log() and closed in bot.log()
    assert runbooks.executions() == []
