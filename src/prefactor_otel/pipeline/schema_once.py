"""The schema set once per agent: later registers leave it out, learned, and never at the risk of a rejected run.

Off unless `PREFACTOR_SCHEMA_ONCE` is on: Prefactor's API requires the set on every register today, so trying
would cost every process one refused register and a resend of the rest of that request (docs/wire.md).

Every register item the planner builds carries the agent's schema set (`agent_schema_version`, ~10 KB of JSON, the
same for every run of the process); the spool and the journal keep it so. On the way out (Delivery's encoding),
`SchemaOnce` leaves it out of a register when a register *with* that same set, for the same agent, was delivered
by this process to this server before (the server then knows it as the agent's schema version). When a register
sent without it is refused (any error but "already done", or a whole request refused while one was in it), the
item is sent again with the set, as not processed, and this process stops leaving it out for this server: learned,
counted (`schema_omission_refused`), logged once. Its idempotency key stays the key of the register: the server
remembers successes only, and a register its server took either way and is sent again the other way meets
`idempotency_key_already_used`, which counts as delivered (outcomes.judge). docs/wire.md, "The schema set".

Threads: one `SchemaOnce` per `Delivery`, used on the sending thread only (the exporter's send lock): no lock. It
counts into the delivery's counters (`schema_sets_omitted`, `schema_omission_refused`).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from prefactor_otel._logging import logger
from prefactor_otel.transport.outcomes import ALREADY_DONE_CODES, ItemOutcome
from prefactor_otel.transport.wire import encode_item, encoded_schema

SCHEMA_FIELD = "agent_schema_version"


class SchemaOnce:
    """Which register items may go without their schema set (see the module docstring)."""

    def __init__(self, counters: Counter[str], *, enabled: bool) -> None:
        self.enabled = enabled  # PREFACTOR_SCHEMA_ONCE; turned off for good by a refusal
        self.counters = counters  # the delivery's
        # (agent id or None, the set's JSON) of registers delivered with their set by this process.
        self._known: set[tuple[object, bytes]] = set()

    def encode(self, body: dict[str, Any]) -> tuple[bytes, bool]:
        """A register item's wire form, and whether its set was left out."""
        schema = body.get(SCHEMA_FIELD)
        if not self.enabled or schema is None or (body.get("agent_id"), encoded_schema(schema)) not in self._known:
            return encode_item(body), False
        self.counters["schema_sets_omitted"] += 1
        return encode_item({key: value for key, value in body.items() if key != SCHEMA_FIELD}), True

    def delivered(self, body: dict[str, Any]) -> None:
        """A register sent with its set was delivered: later registers of its agent may leave the set out."""
        schema = body.get(SCHEMA_FIELD)
        if schema is not None:
            self._known.add((body.get("agent_id"), encoded_schema(schema)))

    def judge(self, outcome: ItemOutcome | None, request_refused: bool) -> ItemOutcome | None:
        """The outcome a register sent without its set counts as: the server's, unless it was refused, which
        turns omission off and makes it not processed (sent again, with the set)."""
        if outcome is not None and outcome.status == "error" and outcome.code not in ALREADY_DONE_CODES:
            self.refused(f"{outcome.code}: {outcome.message}")
            return ItemOutcome("not_processed")
        if outcome is None and request_refused:
            self.refused("the request was refused")
        return outcome

    def refused(self, why: str) -> None:
        if not self.enabled:
            return
        self.enabled = False
        self.counters["schema_omission_refused"] += 1
        logger.log(
            logging.INFO,
            "Prefactor: the server refused a run registered without its schema set (%s); sending the set with "
            "every register from now on",
            why[:300],
        )
