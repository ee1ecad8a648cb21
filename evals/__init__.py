"""Evals: trace replays through the real scheduler and synthetic lab workloads (``evals.cli``), chat
scenarios for the agent (``evals.chat_eval``, with ``scenario_files``, ``scenario_core`` and ``judging``)."""
