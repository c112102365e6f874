"""Scenarios of the core graph: a task is planned as tool calls, a human reviews them, approved work runs.

Everything is real: ChatOpenAI against the scripted OpenAI-compatible server, Redis 8 with Search/JSON,
runbook scripts executed as processes.
"""

from __future__ import annotations

import pytest

from graphs.errors import InvalidArguments, InvalidDecision, NotPending, RunPaused
from graphs.runtime import open_runtime
from graphs.types import (
    Finished,
    ReviewRequested,
    RunEvent,
    Token,
    ToolFinished,
    ToolProposed,
    ToolStarted,
    approve,
    edit,
    reject,
)
from sandbox.openai_server import rule

from .conftest import settings_for

TASK = "check the API, run the disk-usage runbook and post a summary to #ops"


def script_ops_task(model, health_url: str, *, extra_calls: list | None = None) -> None:
    calls = [
        {"name": "http_check", "args": {"url": f"{health_url}/health"}},
        {"name": "run_runbook", "args": {"name": "disk-usage"}},
        {"name": "post_message", "args": {"channel": "#ops", "text": "API up, disk 42%"}},
        *(extra_calls or []),
    ]
    model.reset(
        [
            rule(
                {"text": "I'll check the API, run the runbook and post.", "tool_calls": calls},
                last_user_contains="disk-usage runbook",
                has_tool_results=False,
            ),
            rule({"text": "All done: API healthy, disk at 42%, summary posted."}, has_tool_results=True),
        ]
    )


@pytest.fixture
async def runtime(redis_url, model, runbooks, outbox, health_url):
    """The shared runtime, with the local health service (on 127.0.0.1, so internal) in CHATOPS_HTTP_ALLOW:
    these scenarios check it as a trusted endpoint, which only an allowlist entry permits."""
    settings = settings_for(redis_url, model, runbooks, http_allow=f"{health_url}/")
    async with open_runtime(settings, post_message=outbox) as rt:
        yield rt


class Recorder:
    def __init__(self) -> None:
        self.events: list[RunEvent] = []

    async def __call__(self, event: RunEvent) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def tool_messages_seen_by_model(model) -> list[dict]:
    last = model.requests[-1]["messages"]
    return [m for m in last if m["role"] == "tool"]


async def test_auto_tools_run_at_once_and_side_effects_wait_for_review(runtime, model, health_url, runbooks, thread_id):
    script_ops_task(model, health_url)
    events = Recorder()

    result = await runtime.runs.start(thread_id, TASK, requester="U_ASK", on_event=events)

    assert result.status == "waiting"
    # The read-only health check already ran; the runbook and the post wait for a human.
    started = [e.name for e in events.of(ToolStarted)]
    assert started == ["http_check"]
    assert "200 OK" in events.of(ToolFinished)[0].output
    actions = result.pending.request["action_requests"]
    assert [(a["name"], a["args"]) for a in actions] == [
        ("run_runbook", {"name": "disk-usage"}),
        ("post_message", {"channel": "#ops", "text": "API up, disk 42%"}),
    ]
    assert all(
        c["allowed_decisions"] == ["approve", "edit", "reject"] for c in result.pending.request["review_configs"]
    )
    assert runbooks.executions() == []
    # Progress was streamed: model tokens, the proposal with each call's policy, then the review request.
    assert "".join(e.text for e in events.of(Token)).startswith("I'll check the API")
    assert [c["mode"] for c in events.of(ToolProposed)[0].calls] == ["auto", "ask", "ask"]
    assert events.of(ReviewRequested)[0].interrupt_id == result.pending.interrupt_id


async def test_approve_one_edit_one_reject_one(runtime, model, health_url, runbooks, outbox, thread_id):
    """A plan whose side effects get all three decisions: only approved and edited calls run."""
    script_ops_task(model, health_url, extra_calls=[{"name": "run_runbook", "args": {"name": "record"}}])
    paused = await runtime.runs.start(thread_id, TASK, requester="U_ASK")
    assert [a["name"] for a in paused.pending.request["action_requests"]] == [
        "run_runbook",
        "post_message",
        "run_runbook",
    ]

    events = Recorder()
    done = await runtime.runs.resume(
        thread_id,
        paused.pending.interrupt_id,
        [
            approve(),
            edit("post_message", {"channel": "#ops-alerts", "text": "edited summary"}),
            reject("not during business hours"),
        ],
        decided_by="U_APPROVER",
        on_event=events,
    )

    assert done.status == "done"
    assert done.report == "All done: API healthy, disk at 42%, summary posted."
    assert len(runbooks.executions("disk-usage")) == 1
    assert runbooks.executions("record") == []
    assert outbox.posts == [("#ops-alerts", "edited summary")]
    assert [e.name for e in events.of(ToolStarted)] == ["run_runbook", "post_message"]
    # The model saw every outcome, including the rejection and its reason.
    seen = tool_messages_seen_by_model(model)
    rejected = [m for m in seen if "not during business hours" in m["content"]]
    assert len(rejected) == 1 and "did not run" in rejected[0]["content"] and "U_APPROVER" in rejected[0]["content"]
    assert any("posted to #ops-alerts" in m["content"] for m in seen)
    # ...and its history shows the edited args it ran with.
    assistant = [m for m in model.requests[-1]["messages"] if m["role"] == "assistant"][-1]
    post_call = next(c for c in assistant["tool_calls"] if c["function"]["name"] == "post_message")
    assert "#ops-alerts" in post_call["function"]["arguments"]
    assert isinstance(events.events[-1], Finished)


async def test_reject_everything_lets_the_model_adapt(runtime, model, health_url, runbooks, outbox, thread_id):
    script_ops_task(model, health_url)
    paused = await runtime.runs.start(thread_id, TASK)
    done = await runtime.runs.resume(thread_id, paused.pending.interrupt_id, [reject("wrong runbook"), reject()])
    assert done.status == "done"
    assert runbooks.executions() == [] and outbox.posts == []
    contents = [m["content"] for m in tool_messages_seen_by_model(model)]
    assert any("wrong runbook" in c for c in contents)
    assert any("No reason was given" in c for c in contents)


async def test_a_bad_edit_is_refused_and_nothing_runs(runtime, model, health_url, runbooks, outbox, thread_id):
    script_ops_task(model, health_url)
    paused = await runtime.runs.start(thread_id, TASK)
    iid = paused.pending.interrupt_id

    with pytest.raises(InvalidArguments) as refused:
        await runtime.runs.resume(thread_id, iid, [approve(), edit("post_message", {"channel": 42, "text": "x"})])
    assert refused.value.errors.keys() == {"channel"}
    assert "channel" in str(refused.value) and "string" in str(refused.value)
    with pytest.raises(InvalidArguments, match="unexpected argument"):
        await runtime.runs.resume(
            thread_id, iid, [approve(), edit("post_message", {"channel": "#x", "text": "y", "shell": "rm"})]
        )
    with pytest.raises(InvalidDecision, match="expected 2 decisions"):
        await runtime.runs.resume(thread_id, iid, [approve()])
    with pytest.raises(InvalidDecision, match="approve, edit or reject"):
        await runtime.runs.resume(thread_id, iid, [approve(), {"type": "maybe"}])

    assert runbooks.executions() == [] and outbox.posts == []
    still = await runtime.runs.pending_review(thread_id)
    assert still is not None and still.interrupt_id == iid
    done = await runtime.runs.resume(thread_id, iid, [approve(), approve()])
    assert done.status == "done" and len(runbooks.executions("disk-usage")) == 1


async def test_a_second_resume_of_the_same_review_is_refused(runtime, model, health_url, runbooks, thread_id):
    script_ops_task(model, health_url)
    paused = await runtime.runs.start(thread_id, TASK)
    await runtime.runs.resume(thread_id, paused.pending.interrupt_id, [approve(), reject()])
    with pytest.raises(NotPending):
        await runtime.runs.resume(thread_id, paused.pending.interrupt_id, [approve(), reject()])
    assert len(runbooks.executions("disk-usage")) == 1


async def test_a_new_task_on_a_paused_thread_is_refused(runtime, model, health_url, thread_id):
    script_ops_task(model, health_url)
    await runtime.runs.start(thread_id, TASK)
    with pytest.raises(RunPaused):
        await runtime.runs.start(thread_id, "something else")


async def test_denied_tools_never_run(redis_url, model, health_url, runbooks, outbox, thread_id):
    from graphs.policy import Policy

    script_ops_task(model, health_url)
    policy = Policy().with_rules(run_runbook="deny")
    async with open_runtime(settings_for(redis_url, model, runbooks), post_message=outbox, policy=policy) as rt:
        paused = await rt.runs.start(thread_id, TASK)
        assert [a["name"] for a in paused.pending.request["action_requests"]] == ["post_message"]
        done = await rt.runs.resume(thread_id, paused.pending.interrupt_id, [approve()])
    assert done.status == "done"
    assert runbooks.executions() == []
    assert any("Policy forbids run_runbook" in m["content"] for m in tool_messages_seen_by_model(model))


async def test_a_tool_that_times_out_is_reported(redis_url, model, runbooks, thread_id):
    model.reset(
        [
            rule({"tool_calls": [{"name": "run_runbook", "args": {"name": "sleepy"}}]}, has_tool_results=False),
            rule({"text": "The runbook timed out; nothing else to do."}, last_tool_contains="timed out"),
        ]
    )
    events = Recorder()
    async with open_runtime(settings_for(redis_url, model, runbooks, runbook_timeout_s=1.0)) as rt:
        paused = await rt.runs.start(thread_id, "run the sleepy runbook")
        done = await rt.runs.resume(thread_id, paused.pending.interrupt_id, [approve()], on_event=events)
    assert done.status == "failed" and done.error == "run_runbook: runbook sleepy.sh timed out after 1s and was stopped"
    assert done.report == "The runbook timed out; nothing else to do."  # the model's answer is still shown
    finished = events.of(ToolFinished)[0]
    assert not finished.ok and "timed out after 1s" in finished.output
    assert finished.duration_s < 5


async def test_failing_tools_are_reported_to_the_model(runtime, model, health_url, thread_id):
    model.reset(
        [
            rule(
                {
                    "tool_calls": [
                        {"name": "http_check", "args": {"url": f"{health_url}/down"}},
                        {"name": "run_runbook", "args": {"name": "failing"}},
                        {"name": "run_runbook", "args": {"name": "../../bin/sh"}},
                    ]
                },
                has_tool_results=False,
            ),
            rule({"text": "Both failed."}, has_tool_results=True),
        ]
    )
    events = Recorder()
    paused = await runtime.runs.start(thread_id, "check and fix", on_event=events)
    done = await runtime.runs.resume(thread_id, paused.pending.interrupt_id, [approve(), approve()], on_event=events)
    assert done.status == "failed"
    assert [part.split(":")[0] for part in done.error.split("; ")] == ["http_check", "run_runbook", "run_runbook"]
    outputs = {e.tool_call_id: e for e in events.of(ToolFinished)}
    texts = [e.output for e in outputs.values()]
    assert all(not e.ok for e in outputs.values())
    assert any("503" in t for t in texts)
    assert any("exited with code 3" in t and "database unreachable" in t for t in texts)
    assert any("not a runbook name" in t for t in texts)


async def test_history_lists_the_checkpoints_newest_first(runtime, model, health_url, thread_id):
    script_ops_task(model, health_url)
    paused = await runtime.runs.start(thread_id, TASK)
    await runtime.runs.resume(thread_id, paused.pending.interrupt_id, [approve(), reject("no")], decided_by="U_BOSS")

    history = await runtime.runs.history(thread_id)

    steps = [c.step for c in history]
    assert steps == sorted(steps, reverse=True) and steps[-1] == -1
    summaries = [c.summary for c in history]
    assert summaries[0].startswith("ended, done: All done")
    assert any(s.startswith("the model proposed http_check") for s in summaries)
    # The read-only check ran before the pause; the human decided the rest.
    assert "decided: http_check approved" in summaries
    decided = next(c for c in history if c.summary == "decided: run_runbook approved, post_message rejected")
    assert decided.decided_by == ("U_BOSS",) and decided.stage == "running the allowed calls"
    assert "read-only calls finished (http_check ok); still to review: run_runbook, post_message" in summaries
    waiting = next(c for c in history if c.summary.startswith("read-only calls finished"))
    assert waiting.stage == "waiting for approval"
    assert "calls finished: http_check ok, post_message rejected, run_runbook ok" in summaries, summaries
    assert all("\n" not in c.summary and "__" not in c.stage for c in history)
    assert len({c.checkpoint_id for c in history}) == len(history)


async def test_rewind_to_the_review_checkpoint_asks_again(runtime, model, health_url, runbooks, thread_id):
    script_ops_task(model, health_url)
    first = await runtime.runs.start(thread_id, TASK)
    await runtime.runs.resume(thread_id, first.pending.interrupt_id, [approve(), reject()])
    assert len(runbooks.executions("disk-usage")) == 1

    events = Recorder()
    rewound = await runtime.runs.rewind(thread_id, by="U_ADMIN", on_event=events)

    assert rewound.status == "waiting"
    assert rewound.pending.interrupt_id != first.pending.interrupt_id
    assert [a["name"] for a in rewound.pending.request["action_requests"]] == ["run_runbook", "post_message"]
    assert len(runbooks.executions("disk-usage")) == 1  # nothing re-ran without a fresh approval
    with pytest.raises(NotPending):
        await runtime.runs.resume(thread_id, first.pending.interrupt_id, [approve(), approve()])
    done = await runtime.runs.resume(thread_id, rewound.pending.interrupt_id, [approve(), reject()])
    assert done.status == "done"
    assert len(runbooks.executions("disk-usage")) == 2
    info = await runtime.runs.info(thread_id)
    assert info["rewound_by"] == "U_ADMIN"


async def test_rewind_to_a_post_review_checkpoint_asks_again_instead_of_replaying(
    runtime, model, health_url, runbooks, thread_id
):
    script_ops_task(model, health_url)
    first = await runtime.runs.start(thread_id, TASK)
    await runtime.runs.resume(thread_id, first.pending.interrupt_id, [approve(), reject()])
    decided = next(c for c in await runtime.runs.history(thread_id) if c.next == ("execute",))
    rewound = await runtime.runs.rewind(thread_id, decided.checkpoint_id[-8:])
    assert rewound.status == "waiting"
    assert len(runbooks.executions("disk-usage")) == 1


async def test_cancel_a_paused_run(runtime, model, health_url, runbooks, thread_id):
    script_ops_task(model, health_url)
    paused = await runtime.runs.start(thread_id, TASK)
    assert thread_id in [p.thread_id for p in await runtime.runs.pending()]
    await runtime.runs.cancel(thread_id, by="U_ADMIN")
    assert thread_id not in [p.thread_id for p in await runtime.runs.pending()]
    assert await runtime.runs.pending_review(thread_id) is None
    with pytest.raises(NotPending):
        await runtime.runs.resume(thread_id, paused.pending.interrupt_id, [approve(), approve()])
    info = await runtime.runs.info(thread_id)
    assert info["status"] == "cancelled" and info["cancelled_by"] == "U_ADMIN"
    assert runbooks.executions() == []
    # The thread stays usable: a follow-up task starts a fresh turn.
    follow_up = await runtime.runs.start(thread_id, TASK)
    assert follow_up.status == "waiting"


async def test_cancel_a_running_run_stops_its_tool(redis_url, model, runbooks, thread_id):
    import asyncio

    model.reset([rule({"tool_calls": [{"name": "run_runbook", "args": {"name": "sleepy"}}]}, has_tool_results=False)])
    async with open_runtime(settings_for(redis_url, model, runbooks, runbook_timeout_s=30.0)) as rt:
        paused = await rt.runs.start(thread_id, "run the sleepy runbook")
        events = Recorder()
        running = asyncio.create_task(
            rt.runs.resume(thread_id, paused.pending.interrupt_id, [approve()], on_event=events)
        )
        for _ in range(200):
            if events.of(ToolStarted):
                break
            await asyncio.sleep(0.025)
        assert events.of(ToolStarted), "the runbook never started"
        await rt.runs.cancel(thread_id, by="U_ADMIN", wait_s=10)
        result = await asyncio.wait_for(running, 10)
    assert result.status == "cancelled"
    assert events.events[-1].__class__.__name__ == "Cancelled"


async def test_more_calls_than_one_card_can_show_are_refused_and_the_model_is_told(runtime, model, outbox, thread_id):
    calls = [{"name": "post_message", "args": {"channel": "#ops", "text": f"note {n}"}} for n in range(23)]
    model.reset(
        [
            rule({"tool_calls": calls}, has_tool_results=False),
            rule({"text": "Posted what was allowed."}, has_tool_results=True),
        ]
    )
    paused = await runtime.runs.start(thread_id, "post 23 notes")
    assert paused.pending is not None
    asked = [a["args"]["text"] for a in paused.pending.request["action_requests"]]
    assert asked == [f"note {n}" for n in range(20)]  # every call a card can show whole, and no more
    done = await runtime.runs.resume(thread_id, paused.pending.interrupt_id, [approve()] * 20)
    assert done.status == "done" and [text for _, text in outbox.posts] == asked
    told = [m["content"] for m in model.requests[-1]["messages"] if m["role"] == "tool"]
    assert sum("at most 20 calls can be reviewed at a time" in t for t in told) == 3


async def test_a_model_that_never_stops_calling_tools_is_stopped_and_the_thread_takes_a_new_task(
    runtime, model, health_url, thread_id
):
    from graphs.runs import Runs

    model.reset(
        [
            rule({"text": "All good."}, last_user_contains="anything else"),
            rule({"tool_calls": [{"name": "http_check", "args": {"url": f"{health_url}/health"}}]}),
        ]
    )
    limited = Runs(
        runtime.runs.graph,
        runtime.runs.registry,
        runtime.runs.policy,
        runtime.redis,
        prefix=runtime.settings.key_prefix,
        recursion_limit=7,
    )
    events = Recorder()
    result = await limited.start(thread_id, "check the API until it is perfect", on_event=events)
    assert result.status == "stopped"
    assert "the model kept calling tools without finishing" in result.error
    finished = events.of(Finished)[-1]
    assert finished.outcome == "stopped" and "narrower task" in finished.detail
    assert (await limited.info(thread_id))["status"] == "stopped"
    # The turn is closed: a follow-up task in the same thread runs, with a well-formed conversation.
    again = await limited.start(thread_id, "anything else?")
    assert again.status == "nothing" and again.report == "All good."


async def test_outcomes_say_what_really_happened(runtime, model, health_url, thread_id):
    model.reset([rule({"text": "No tool restarts services."})])
    nothing = await runtime.runs.start(thread_id, "restart the web service")
    assert nothing.status == "nothing" and nothing.error.startswith("What I can do: ")
    assert "http_check (Check" in nothing.error and "run_runbook (" in nothing.error

    model.reset(
        [
            rule(
                {"tool_calls": [{"name": "http_check", "args": {"url": f"{health_url}/missing"}}]},
                has_tool_results=False,
            ),
            rule({"text": "It is down."}, has_tool_results=True),
        ]
    )
    failed = await runtime.runs.start(f"{thread_id}-2", "check the API")
    assert failed.status == "failed" and failed.error.startswith("http_check: ") and "503" in failed.error
    assert "http_check failed" not in failed.error

    script_ops_task(model, health_url)
    paused = await runtime.runs.start(f"{thread_id}-3", TASK)
    ended = await runtime.runs.resume(f"{thread_id}-3", paused.pending.interrupt_id, [reject("no"), reject()], end=True)
    # The health check ran (read-only) while the card waited; everything asked about was rejected and the run
    # ended there: rejected, without asking the model again.
    assert ended.status == "rejected" and ended.report == ""
    assert ended.error == "run_runbook: rejected; post_message: rejected"
