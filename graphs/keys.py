"""Every key the bot keeps in Redis: its name, type, lifetime and writer, in one place.

One ``Keys`` object per deployment (``CHATOPS_KEY_PREFIX``, default ``chatops:``) names them all; no other
module spells a key. Two deployments sharing one Redis need different prefixes.

========================================  =======  ===============  =================================================
key                                       type     kept             written by — what it holds
========================================  =======  ===============  =================================================
``{p}run:{thread}``                       hash     TTL              graphs.run_index — a run: task, requester,
                                                                    status, times, report, error, who rewound or
                                                                    cancelled it, the pending review (JSON)
``{p}pending``                            zset     —                graphs.run_index — threads waiting for a review,
                                                                    by when it was asked; an entry whose run expired
                                                                    is dropped when listed
``{p}running``                            zset     —                graphs.run_index — threads being driven, by
                                                                    when; one whose lock is free was cut off
                                                                    (recovered)
``{p}cancel:{thread}``                    string   ≥ 60 s           graphs.run_index — "stop this run", by whom
                                                                    (``-``: nobody named)
``{p}lock:{thread}``                      string   15 s, extended   graphs.locks — who drives the thread now
``{p}exec:{thread}:{review}:{call}``      string   TTL              graphs.ledger — a call started / its result
                                                                    (``{review}``: the review step's task id)
``{p}history:{thread}``                   hash     TTL              graphs.history — per checkpoint id, its history
                                                                    line (a CheckpointInfo as JSON), written when a
                                                                    run stops; pruned with the checkpoints
``{p}slack:thread:{channel}:{ts}``        string   TTL              bot.store — the run a Slack thread belongs to
``{p}slack:run:{run}``                    hash     TTL              bot.store — the Slack side of a run (RunRecord)
``{p}slack:turn:{run}``                   string   120 s            bot.store — who is starting a task in the thread
``{p}slack:event:{event id}``             string   1 h              bot.store — an event already handled (retries)
``{p}slack:view:{view id}``               string   1 h              bot.store — a dialog the bot opened, for whom
``{p}slack:approvals:{run}:{i}:proposal`` string   TTL              bot.store — a multi-approver card's proposal
                                                                    (``{i}``: the review's interrupt id)
``{p}slack:approvals:{run}:{i}:by``       zset     TTL              bot.store — who approved that proposal, by when
``{p}slack:queue``                         stream   until started    bot.queue — runs waiting for a worker (consumer
                                                                    group ``workers``; an entry is deleted once its
                                                                    run started or was refused)
``{p}slack:started:{run}:{token}``        string   TTL              bot.queue — that queued task was started once
``{p}slack:active:{user}``                zset     TTL              bot.queue — a person's queued and working runs,
                                                                    scored by when the entry lapses
``{p}audit``, ``{p}audit:run:{run}``      stream   —                bot.audit — every decision, edit, rewind, cancel
``{p}budget:chat.update``                 zset     60 s window      bot.updates — chat.update calls of all replicas
``{p}budget:chat.update:blocked``         string   Retry-After      bot.updates — Slack asked every replica to wait
``checkpoint*``, ``write_keys_zset:*``    json…    TTL              langgraph-checkpoint-redis — the checkpoints,
                                                                    their writes and latest pointers, by thread id;
                                                                    **not** under the prefix
``checkpoint_values:{thread}``            hash     TTL              graphs.checkpoints — the values checkpoints
                                                                    refer to (messages, reviews), each stored once;
                                                                    refreshed with every checkpoint of the thread
========================================  =======  ===============  =================================================

TTL is ``CHATOPS_TTL_MINUTES`` (``DEFAULT_TTL_S``, 7 days), refreshed when written. The audit streams are kept
until an operator trims them (export first: ``python -m bot.audit``).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "chatops:"
DEFAULT_TTL_S = 7 * 24 * 3600  # how long runs, checkpoints and approvals are kept


@dataclass(frozen=True)
class Keys:
    """The names of every key of one deployment (see the table above)."""

    prefix: str = DEFAULT_PREFIX

    # --- runs (graphs) ---------------------------------------------------------------------------
    def run(self, thread_id: str) -> str:
        return f"{self.prefix}run:{thread_id}"

    @property
    def pending(self) -> str:
        return f"{self.prefix}pending"

    @property
    def running(self) -> str:
        return f"{self.prefix}running"

    def cancel(self, thread_id: str) -> str:
        return f"{self.prefix}cancel:{thread_id}"

    @property
    def lock_prefix(self) -> str:
        return f"{self.prefix}lock:"

    @property
    def ledger_prefix(self) -> str:
        return f"{self.prefix}exec:"

    def history(self, thread_id: str) -> str:
        return f"{self.prefix}history:{thread_id}"

    # --- the Slack side (bot) ---------------------------------------------------------------------
    def slack_thread(self, channel: str, thread_ts: str) -> str:
        return f"{self.prefix}slack:thread:{channel}:{thread_ts}"

    def slack_run(self, run_id: str) -> str:
        return f"{self.prefix}slack:run:{run_id}"

    def turn(self, run_id: str) -> str:
        return f"{self.prefix}slack:turn:{run_id}"

    def event(self, event_id: str) -> str:
        return f"{self.prefix}slack:event:{event_id}"

    def view(self, view_id: str) -> str:
        return f"{self.prefix}slack:view:{view_id}"

    def proposal(self, run_id: str, interrupt_id: str) -> str:
        return f"{self.prefix}slack:approvals:{run_id}:{interrupt_id}:proposal"

    def approved_by(self, run_id: str, interrupt_id: str) -> str:
        return f"{self.prefix}slack:approvals:{run_id}:{interrupt_id}:by"

    @property
    def run_queue(self) -> str:
        return f"{self.prefix}slack:queue"

    def queued_start(self, run_id: str, token: str) -> str:
        return f"{self.prefix}slack:started:{run_id}:{token}"

    def active_runs(self, user: str) -> str:
        return f"{self.prefix}slack:active:{user}"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit"

    def run_audit(self, run_id: str) -> str:
        return f"{self.prefix}audit:run:{run_id}"

    def budget(self, method: str) -> str:
        return f"{self.prefix}budget:{method}"
