"""What became of sent items: the value types the transport produces, and the rules that judge them.

`judge` is the one place that decides what an outcome means (delivered, retry as an orphan, rejected, not
processed), for items planned now and items read back from the spool alike. Plain immutable values and pure
functions, safe from any thread; no module state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, NamedTuple

from prefactor_otel.model.http import BULK_CREATE_SPAN, BULK_FINISH_INSTANCE, BULK_FINISH_SPAN, BULK_START

MAX_REASON_CHARS = 2_000  # a reason ends up in logs and exceptions: a hostile answer must not fill them

OutcomeStatus = Literal["success", "error", "not_processed"]


# A NamedTuple: immutable like a frozen dataclass and several times cheaper to build (one per item sent).
class ItemOutcome(NamedTuple):
    status: OutcomeStatus
    code: str | None = None
    message: str | None = None
    # The answer carried `control: {"terminate": true, ...}`: Prefactor terminated the item's run. The reason
    # (None when the answer gave none) is meaningful only when `terminate` is True.
    terminate: bool = False
    terminate_reason: str | None = None


def terminate_reason(answer: object) -> tuple[bool, str | None]:
    """(True, reason) when an answer object carries `control` as an object with a truthy `terminate` (the rule
    Prefactor's SDKs follow); (False, None) otherwise, whatever shape `control` has."""
    if not isinstance(answer, dict):
        return False, None
    control = answer.get("control")
    if not isinstance(control, dict) or not control.get("terminate"):
        return False, None
    reason = control.get("reason")
    return True, None if reason is None else str(reason)[:MAX_REASON_CHARS]


# The two outcomes almost every item gets, shared.
SUCCESS = ItemOutcome("success")
NOT_PROCESSED = ItemOutcome("not_processed")


@dataclass(slots=True)
class BulkResult:
    """What became of one request.

    error: None when the server answered with per-item outputs; otherwise one of
    "auth" (401/403, sending stopped), "proxy" (the environment's proxy cannot be used: nothing sent), "timeout"
    (deadline reached while retrying), "shutdown", "too_large" (413), "rejected" (another 4xx for the whole
    request), "redirect" (3xx), "contract" (unparseable answer, after retries).
    """

    outcomes: dict[str, ItemOutcome] = field(default_factory=dict)
    error: str | None = None
    status_code: int | None = None
    code: str | None = None  # API error code of a rejected request
    message: str | None = None


class Verdict(Enum):
    """What an item's outcome means for the item: the one rule book for live and replayed items."""

    DONE = "done"  # delivered, or the server already had it (our own earlier attempt)
    ORPHAN = "orphan"  # a span create whose parent the server does not know: send it again without the link
    REJECTED = "rejected"  # the server will not take it: drop it, counted with its code
    PENDING = "pending"  # not processed: send it again later


# Error codes meaning "this already happened": a deterministic id or key met its own earlier write.
ALREADY_DONE_CODES = frozenset({"idempotency_key_already_used", "already_exists"})


def judge(action: str, outcome: ItemOutcome, *, can_orphan: bool) -> Verdict:
    """The verdict for one item. `can_orphan`: a span create that still carries its parent link."""
    if outcome.status == "not_processed":
        return Verdict.PENDING
    if outcome.status == "success" or outcome.code in ALREADY_DONE_CODES:
        return Verdict.DONE
    if action in (BULK_START, BULK_FINISH_INSTANCE, BULK_FINISH_SPAN) and outcome.code == "invalid_action":
        return Verdict.DONE  # already started / already finished: a replay of our own earlier action
    if action == BULK_CREATE_SPAN and outcome.code == "not_found" and can_orphan:
        return Verdict.ORPHAN
    return Verdict.REJECTED
