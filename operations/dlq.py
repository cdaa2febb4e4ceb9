"""Dead letters for the CLI: the logic lives in common.dead_letters, shared with the API's pipeline page."""

from __future__ import annotations

from common.dead_letters import DEAD_FIELD_PREFIX, DeadLetter, counts, entries, find, purge, replay

__all__ = ["DEAD_FIELD_PREFIX", "DeadLetter", "counts", "entries", "find", "purge", "replay"]
