"""``herd attach``: watch a running job's tmux window, read-only."""

from __future__ import annotations

COMMANDS = ()
