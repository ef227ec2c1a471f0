"""What became of sent items: the small value types the transport produces and the planner consumes.

Plain immutable values, safe to share between threads; no module state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

OutcomeStatus = Literal["success", "error", "not_processed"]


# A NamedTuple: immutable like a frozen dataclass and several times cheaper to build (one per item sent).
class ItemOutcome(NamedTuple):
    status: OutcomeStatus
    code: str | None = None
    message: str | None = None


# The two outcomes almost every item gets, shared.
SUCCESS = ItemOutcome("success")
NOT_PROCESSED = ItemOutcome("not_processed")


@dataclass(slots=True)
class BulkResult:
    """What became of one request.

    error: None when the server answered with per-item outputs; otherwise one of
    "auth" (401/403, sending stopped), "timeout" (deadline reached while retrying), "shutdown",
    "too_large" (413), "rejected" (another 4xx for the whole request), "redirect" (3xx), "contract"
    (unparseable answer, after retries).
    """

    outcomes: dict[str, ItemOutcome] = field(default_factory=dict)
    error: str | None = None
    status_code: int | None = None
    code: str | None = None  # API error code of a rejected request
    message: str | None = None
