"""Waiting for a started API to answer, shared by the tests that run processes (the launcher's own wait)."""

from __future__ import annotations

from operations.installation import wait_until_answers

__all__ = ["wait_until_answers"]
