"""The account partition of one pipeline: where it comes from, when the server is asked, what a refusal says of it.

Every Prefactor id a pipeline builds is in the account's PFID partition. With an agent id it is the agent id's
(`given`: fixed). Without one it is learnt from the server (`POST /api/v1/pfid/generate`: one id, whose partition
is the account's) and saved beside the spool under a digest of the token (Backlog.save_partition), so that a later
process can plan, and spool, while the API is down. One API URL (one spool directory) may serve several accounts
one after the other -- another token, or the same token on a reset account (a local server started anew, a
restored API) -- so a saved partition is provisional: `resolve` asks the server once at the first drain and plans
in what it answers; while the server cannot be reached it plans in the saved one and asks again with a backoff
(1 s doubling to 30 s). Once the server answered, the backlog knows the partition (`Backlog.partition`): spool files
of another account are set aside rather than sent, and files set aside for this one are put back.

The server may still refuse a run for its partition: it could not be asked before the run was planned (the saved
one was used while the server was unreachable), or the account was reset under a running process.
- While the partition is a saved one the server has not answered (`watch_refusals`), `RefusalWatch` is the
  planner's source: a register refused `invalid_value` (the API's answer to an id outside the account's partition,
  the local server's too) makes it hold every item of that plan the server refused as not processed, and stop the
  drain. The pipeline then asks the server (`recheck`) and, if the partition changed, plans every run it holds
  again in the new one (Pipeline._replan): nothing is lost. If not, it sends again and the refusal stands, counted
  as any other.
- Once the server answered (the usual case) nothing watches the requests (no cost per request): a register refused
  after that is dropped, counted `instance_rejected:register_invalid_value` (`REFUSED_FOR_PARTITION`), and the
  pipeline, seeing that count grow after a drain, asks the server; if the partition changed, what is still held
  is planned again in the new one. At most one such check a minute.

Threads: the sending thread only (the exporter's send-lock holder, the gateway's worker): no lock. `counters` is
written there and copied by the pipeline's `collect` (as `partition:<name>`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from operator import attrgetter

from prefactor_otel._logging import logger
from prefactor_otel.model import ids
from prefactor_otel.model.http import BULK_REGISTER
from prefactor_otel.pipeline.backlog import Backlog
from prefactor_otel.pipeline.delivery import ItemSource
from prefactor_otel.pipeline.items import PlannedItem
from prefactor_otel.transport.client import BulkTransport
from prefactor_otel.transport.outcomes import NOT_PROCESSED, ItemOutcome

CHECK_FIRST_S = 1.0
CHECK_CAP_S = 30.0
RECHECK_AFTER_S = 60.0  # a refused register asks the server again at most this often
PARTITION_REFUSAL = "invalid_value"  # what a register with an id outside the account's partition is answered
REFUSED_FOR_PARTITION = f"instance_rejected:register_{PARTITION_REFUSAL}"  # how the planner counts what it drops so
_STATUS = attrgetter("status")


class AccountPartition:
    def __init__(
        self,
        transport: BulkTransport,
        backlog: Backlog | None,
        token: str,
        *,
        given: int | None,
        saved: int | None,
        learnt: bool,
    ) -> None:
        """`given`: known for sure (an agent id's, a forked child's parent's); `saved`: an earlier process's, to be
        checked; `learnt`: the partition comes from the server (no agent id), so the server may say it is wrong."""
        self._transport = transport
        self._backlog = backlog
        self._token = token  # only ever digested (Backlog.save_partition), never logged nor written
        self.value = given if given is not None else saved
        self.confirmed = given is not None
        self.learnt = learnt
        self._retry_at = 0.0
        self._backoff = CHECK_FIRST_S
        self._checked_at = float("-inf")
        self.counters: Counter[str] = Counter()
        if given is not None and backlog is not None:
            backlog.partition = given

    def resolve(self, deadline: float) -> int | None:
        """The partition to plan in, asking the server when it was never confirmed (and a check is due)."""
        if self.confirmed:
            return self.value
        if self.value is not None and time.monotonic() < self._retry_at:
            return self.value
        learnt = self._ask(deadline)
        if learnt is None:
            if self.value is not None:  # planned in the saved one meanwhile; asked again later
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(CHECK_CAP_S, self._backoff * 2)
            return self.value
        self._take(learnt)
        return self.value

    def watch_refusals(self) -> bool:
        """Hold a refused register until the server is asked: the partition is a saved one it never answered."""
        return self.learnt and not self.confirmed and self.may_recheck()

    def may_recheck(self) -> bool:
        return self.learnt and time.monotonic() - self._checked_at >= RECHECK_AFTER_S

    def recheck(self, deadline: float) -> bool:
        """After a register refused for its partition: ask the server. True when the partition changed."""
        self._checked_at = time.monotonic()  # even if the answer does not come: at most once a minute
        previous = self.value
        learnt = self._ask(deadline)
        if learnt is None:
            return False
        self._take(learnt)
        return learnt != previous

    def _ask(self, deadline: float) -> int | None:
        pfid = self._transport.generate_pfid(deadline)
        if pfid is None or not ids.is_pfid(pfid):
            return None
        return ids.extract_partition(pfid)

    def _take(self, learnt: int) -> None:
        previous = self.value
        self.value, self.confirmed, self._checked_at = learnt, True, time.monotonic()
        backlog = self._backlog
        if backlog is not None:
            if previous != learnt:
                backlog.save_partition(learnt, self._token)
            backlog.partition = learnt
            backlog.put_back(learnt)  # spool files another account's process set aside for this one
        if previous is not None and previous != learnt:
            self.counters["relearnt"] += 1
            logger.warning(
                "Prefactor: the account partition known for this token (%d) is not the account's (%d): another "
                "account, or a reset one, answers at this API URL now; runs are planned in %d from now on",
                previous,
                learnt,
                learnt,
            )


class RefusalWatch:
    """The planner's source (an `ItemSource`) while a refusal may mean the partition is wrong: the first register
    refused `invalid_value` holds the plan's refused items as not processed (`held`: how many) and ends the drain
    (nothing more is planned), for the pipeline to ask the server before anything is dropped."""

    def __init__(self, source: ItemSource) -> None:
        self._source = source
        self._items: list[PlannedItem] = []
        self.held = 0

    def plan(self) -> list[PlannedItem]:
        if self.held:
            return []
        self._items = items = self._source.plan()
        return items

    def apply(self, outcomes: Mapping[str, ItemOutcome]) -> None:
        # The usual answer has no error at all: one scan in C, nothing else.
        if self.held or ("error" in map(_STATUS, outcomes.values()) and self._register_refused(outcomes)):
            held = {key: NOT_PROCESSED for key, outcome in outcomes.items() if outcome.status == "error"}
            self.held += len(held)
            outcomes = {**outcomes, **held}
        self._source.apply(outcomes)

    def _register_refused(self, outcomes: Mapping[str, ItemOutcome]) -> bool:
        registers = {item.key for item in self._items if item.action == BULK_REGISTER}
        return any(
            outcome.status == "error" and outcome.code == PARTITION_REFUSAL and key in registers
            for key, outcome in outcomes.items()
        )

    def too_large(self, key: str, size: int) -> None:
        self._source.too_large(key, size)

    def refused(self, keys: list[str]) -> None:
        self._source.refused(keys)

    def before_send(self) -> None:
        self._source.before_send()
