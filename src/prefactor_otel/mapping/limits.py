"""UTF-8-safe truncation of long strings in inputs and outputs. Pure functions.

Limits count UTF-8 bytes (what goes over the wire). A truncated string keeps its first `limit` bytes, cut on a
character boundary, followed by a visible marker; the original size is recorded in `metadata` with the path.
"""

from __future__ import annotations

from typing import Any

MAX_BYTES_PER_CHAR = 4  # UTF-8: no character takes more, so len(text) * 4 <= limit needs no encoding at all


def marker(original_bytes: int) -> str:
    return f"…[truncated: {original_bytes} bytes]"


def truncate_text(text: str, limit: int) -> tuple[str, int] | None:
    """`(truncated text, original byte size)`, or None when `text` fits in `limit` UTF-8 bytes."""
    if len(text) * MAX_BYTES_PER_CHAR <= limit:
        return None
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return None
    # A cut inside a multi-byte character leaves an incomplete sequence at the end: "ignore" drops it.
    kept = data[:limit].decode("utf-8", "ignore")
    return kept + marker(len(data)), len(data)


def truncate_tree(value: Any, limit: int, path: str, log: list[dict[str, Any]], depth: int = 0) -> Any:
    """A copy of a JSON value, every string longer than `limit` bytes truncated; records `{path, original_bytes}`."""
    if isinstance(value, str):
        result = truncate_text(value, limit)
        if result is None:
            return value
        log.append({"path": path, "original_bytes": result[1]})
        return result[0]
    if depth > 64:
        return value
    if isinstance(value, dict):
        return {k: truncate_tree(v, limit, f"{path}.{k}", log, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [truncate_tree(v, limit, f"{path}[{i}]", log, depth + 1) for i, v in enumerate(value)]
    return value
