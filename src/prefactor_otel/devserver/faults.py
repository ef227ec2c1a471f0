"""Fault injection for the dev server: make chosen requests slow, fail, vanish, redirect or answer with hostility.

A `Fault` is plain data so that a test can inject it into a server running in another process
(`POST /_dev/faults` with `Fault.to_dict()` as the body).
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class Fault:
    """What to do to the next `times` requests whose path starts with `path` and whose method is `method`.

    - `delay_s`: sleep before handling (combines with everything below).
    - `status`: answer this status WITHOUT processing (`body` raw, else a JSON error), plus `Retry-After`.
    - `drop_connection`: close the socket without any response, WITHOUT processing.
    - `commit_then_fail`: process and commit fully, then answer `status` (default 500) instead of the real
      response -- or, together with `drop_connection`, commit and then drop the connection.
    - `redirect_to`: answer a redirect (`status`, default 307) to this `Location`, without processing.

    Hostile answers (for testing a client's wall-clock and size bounds; each lasts until the client hangs up or
    the server stops, and the bytes they write are counted in `DevServer.fault_bytes_sent`):

    - `trickle_bytes_per_s`: write the whole answer -- status line and headers included -- at this rate.
      With `status` the injected answer is trickled, else the real one (processed and committed).
      `trickle_headers=False` sends the status line and headers at once and trickles only the body.
    - `endless_body`: answer `status` (default 200) with a chunked body that never ends, WITHOUT processing.
    - `body_bytes`: answer `status` (default 200) with a body of this many filler bytes, WITHOUT processing.
    - `black_hole`: read the request line and headers, then neither read the body nor answer, WITHOUT
      processing (matched before the body is read; `delay_s` and the answer fields do not apply).

    `times=-1` keeps the fault forever; `method="*"` matches any method. `probability` < 1 makes the fault
    hit only that share of matching requests (one draw per request across all faults, so the shares of
    several faults on one path add up, as in a chaos mix of "20% 5xx, 10% 429, ..."). Faults act after authentication
    (a request with a bad token gets its 401) and never on `/_dev/...`, so a test can always clear them.
    """

    path: str = "/api/v1/bulk"
    method: str = "POST"
    times: int = 1
    status: int | None = None
    retry_after: str | None = None
    body: str | None = None
    delay_s: float = 0.0
    drop_connection: bool = False
    commit_then_fail: bool = False
    redirect_to: str | None = None
    probability: float = 1.0
    trickle_bytes_per_s: float | None = None
    trickle_headers: bool = True
    endless_body: bool = False
    body_bytes: int | None = None
    black_hole: bool = False

    def __post_init__(self) -> None:
        # Validate eagerly: a fault posted over HTTP must fail at injection time, not mid-test.
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValueError("Fault.path must be a string starting with '/'")
        if not isinstance(self.method, str) or not self.method:
            raise ValueError("Fault.method must be a non-empty string")
        self.method = self.method.upper()
        if isinstance(self.times, bool) or not isinstance(self.times, int) or (self.times < 1 and self.times != -1):
            raise ValueError("Fault.times must be >= 1, or -1 for forever")
        if self.status is not None and (
            isinstance(self.status, bool) or not isinstance(self.status, int) or not 100 <= self.status <= 599
        ):
            raise ValueError("Fault.status must be an HTTP status code (100-599)")
        for name in ("retry_after", "body", "redirect_to"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"Fault.{name} must be a string or null")
        if isinstance(self.delay_s, bool) or not isinstance(self.delay_s, (int, float)) or self.delay_s < 0:
            raise ValueError("Fault.delay_s must be a number >= 0")
        self.delay_s = float(self.delay_s)
        for name in ("drop_connection", "commit_then_fail", "endless_body", "black_hole", "trickle_headers"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Fault.{name} must be a boolean")
        if (
            isinstance(self.probability, bool)
            or not isinstance(self.probability, (int, float))
            or not 0.0 < self.probability <= 1.0
        ):
            raise ValueError("Fault.probability must be in (0, 1]")
        self.probability = float(self.probability)
        if self.redirect_to is not None and (self.drop_connection or self.commit_then_fail):
            raise ValueError("Fault.redirect_to cannot be combined with drop_connection or commit_then_fail")
        if self.redirect_to is not None and self.status is not None and not 300 <= self.status <= 399:
            raise ValueError("Fault.redirect_to needs a 3xx status (or none for 307)")
        self._validate_hostile()

    def _validate_hostile(self) -> None:
        rate = self.trickle_bytes_per_s
        if rate is not None:
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
                raise ValueError("Fault.trickle_bytes_per_s must be a number > 0 or null")
            self.trickle_bytes_per_s = float(rate)
        size = self.body_bytes
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ValueError("Fault.body_bytes must be an integer >= 0 or null")
        modes = [self.endless_body, self.body_bytes is not None, self.black_hole, self.redirect_to is not None]
        if sum(modes) > 1:
            raise ValueError("Fault: choose one of endless_body, body_bytes, black_hole and redirect_to")
        if any(modes[:3]) and (self.drop_connection or self.commit_then_fail):
            raise ValueError("Fault: a hostile answer cannot be combined with drop_connection or commit_then_fail")
        if self.black_hole and (self.trickle_bytes_per_s is not None or self.status is not None):
            raise ValueError("Fault.black_hole never answers: no status or trickle_bytes_per_s")

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or self.method == method.upper()) and path.startswith(self.path)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: object) -> Fault:
        if not isinstance(data, dict):
            raise ValueError("a Fault is a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Fault field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Fault:
        return cls.from_dict(json.loads(text))


class FaultSet:
    """The active faults of one server; `take` consumes one use of the first matching fault."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._rng = random.Random(seed)

    def seed(self, seed: int) -> None:
        with self._lock:
            self._rng.seed(seed)

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[Fault]:
        with self._lock:
            return [dataclasses.replace(f) for f in self._faults]

    def take(self, method: str, path: str, *, before_body: bool = False) -> Fault | None:
        """A black hole is taken before the request body is read (`before_body=True`), every other fault after."""
        with self._lock:
            if before_body and not any(fault.black_hole for fault in self._faults):
                return None  # no draw: seeded chaos mixes without black holes keep their sequence
            draw = self._rng.random()
            share = 0.0
            for index, fault in enumerate(self._faults):
                if fault.black_hole != before_body or not fault.matches(method, path):
                    continue
                share += fault.probability
                if draw >= share:
                    continue
                if fault.times > 0:
                    fault.times -= 1
                    if fault.times == 0:
                        del self._faults[index]
                return fault
            return None
