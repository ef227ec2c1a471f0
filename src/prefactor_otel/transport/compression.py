"""Request body compression: which `Content-Encoding` to send, compressing a body, and learning what a server refuses.

`BodyCompression` is a part `BulkTransport` (client.py) holds. It starts from the configured preference
(`PREFACTOR_COMPRESSION`: `zstd`, `gzip`, `none`, or unset = automatic: zstd when a zstd codec is importable, else
gzip) and walks down the fallback ladder zstd -> gzip -> none when a server refuses an encoding: a 415, or a 400
that the same request sent uncompressed does not get (the transport finds that out by sending it once more,
uncompressed; idempotency keys make the resend harmless). Each refusal is counted (`compression_refused:<encoding>`
in the transport's counters) and logged once per encoding; what is learned lasts for the process. Spooled bodies
and the journal never see any of this: bodies are compressed on the way out only. docs/wire.md has the figures
behind the levels and the default.

Bodies under `MIN_COMPRESS_BYTES` go as they are: a few hundred bytes save next to nothing and still cost a
compressor call.

zstd comes from `compression.zstd` (Python 3.14+) or the `zstandard` package, whichever imports; without either,
`zstd` is not offered (asked for explicitly, it is replaced by gzip with one warning). gzip is the stdlib's zlib.

Threads: `compress`, `refuse` and `encoding` run on the sending thread only (the exporter's send lock serializes
sends), so the learned state and the zstd compressor object (not thread-safe) need no lock. `reset_after_fork`
rebuilds the compressor in a forked child; what was learned stays.
"""

from __future__ import annotations

import importlib
import logging
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any

from prefactor_otel._logging import logger

GZIP, ZSTD, IDENTITY = "gzip", "zstd", "identity"
# The ladder, best first: a refused encoding moves the transport one step down.
LADDER = (ZSTD, GZIP, IDENTITY)
# Measured (benchmarks/wire_cost.py, docs/wire.md): the cheapest level of each codec that keeps the bytes under half
# of OTLP's uncompressed protobuf on both benchmark workloads. zstd -5 (a "fast" level) costs 17-33 % less CPU than
# zstd 1 for 0.28x / 0.39x OTLP's bytes (zstd 1: 0.23x / 0.27x); past -5 the bytes grow faster than the CPU falls
# (-10 is 0.49x OTLP on the small workload for 1 % less CPU). gzip 1 costs ~5x zstd -5 for 0.39x OTLP's bytes, gzip 6
# twice gzip 1.
ZSTD_LEVEL = -5
GZIP_LEVEL = 1
MIN_COMPRESS_BYTES = 1024

Compress = Callable[[bytes], bytes]


def zstd_compressor(level: int = ZSTD_LEVEL) -> Compress | None:
    """A function compressing one body as a zstd frame (content size in the header), or None without a codec."""
    try:
        stdlib: Any = importlib.import_module("compression.zstd")  # Python 3.14+
    except ImportError:
        pass
    else:
        options = {stdlib.CompressionParameter.compression_level: level}
        return lambda data: bytes(stdlib.compress(data, options=options))
    try:
        zstandard: Any = importlib.import_module("zstandard")
    except ImportError:
        return None
    compressor = zstandard.ZstdCompressor(level=level)
    return lambda data: bytes(compressor.compress(data))


def zstd_available() -> bool:
    return zstd_compressor() is not None


def gzip_compress(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    # zlib.compress with wbits=31 writes a gzip member (header and CRC) in one C call, as gzip.compress does
    # without building a GzipFile.
    return zlib.compress(data, level, wbits=31)


class BodyCompression:
    """What encoding the next request body goes in, and the encodings this process learned a server refuses."""

    def __init__(self, setting: str | None, counters: Counter[str]) -> None:
        self.counters = counters  # the transport's
        self._zstd = zstd_compressor()
        if setting == ZSTD and self._zstd is None:
            logger.warning(
                "Prefactor: PREFACTOR_COMPRESSION=zstd but no zstd codec is installed (pip install zstandard); "
                "sending gzip"
            )
        start = {ZSTD: 0, GZIP: 1, "none": 2, IDENTITY: 2}.get(setting or ZSTD, 0)
        self._order = [
            encoding for encoding in LADDER[start:] if encoding != ZSTD or self._zstd is not None
        ]  # never empty: identity is always last
        self.refused: set[str] = set()

    def reset_after_fork(self, counters: Counter[str]) -> None:
        self.counters = counters
        self._zstd = zstd_compressor()

    @property
    def encoding(self) -> str:
        """The encoding the next body goes in: the best one not refused."""
        for encoding in self._order:
            if encoding not in self.refused:
                return encoding
        return IDENTITY

    def compress(self, body: bytes) -> tuple[str, bytes]:
        """`body` in the current encoding, with that encoding (identity for a small body)."""
        encoding = self.encoding
        if encoding == IDENTITY or len(body) < MIN_COMPRESS_BYTES:
            return IDENTITY, body
        if encoding == ZSTD and self._zstd is not None:
            return ZSTD, self._zstd(body)
        return GZIP, gzip_compress(body)

    def refuse(self, encoding: str, why: str) -> None:
        """The server refused bodies in `encoding`: send the next ones one step down the ladder (counted, logged
        once per encoding)."""
        if encoding == IDENTITY or encoding in self.refused:
            return
        self.refused.add(encoding)
        self.counters[f"compression_refused:{encoding}"] += 1
        logger.log(
            logging.WARNING if self.encoding == IDENTITY else logging.INFO,
            "Prefactor: the server refuses %s request bodies (%s); sending %s from now on",
            encoding,
            why,
            self.encoding if self.encoding != IDENTITY else "them uncompressed",
        )
