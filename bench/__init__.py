"""The bot's benchmark: ack latency, click-to-card latency, approval cycles per second, the chat.update budget
and the bare-LangGraph floor, measured against the local Slack, the scripted model and a real Redis 8.

Run it with ``python -m bench`` (``--quick`` for a short run, ``--json PATH`` to also save the numbers).
It prints tables and asserts nothing about speed.
"""
