"""Benchmark: HPKE encryption of a 256 KiB package, against bare AES-GCM.

Run: ``.venv/bin/python bench/bench_hpke.py``. It prints the median time
of ``journey.package.seal`` per suite and its ratio to AES-128-GCM encryption
of the same bytes, measured in the same run. The goal is at most 1 ms for the
default suite (X25519).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from journey.package import SuiteName, decode_public_key, generate_key_pair, seal

PACKAGE_BYTES = 256 * 1024
ROUNDS = 7
CALLS_PER_ROUND = 50


def median_seconds(work: Callable[[], object]) -> float:
    """Return the median over ``ROUNDS`` of the mean time of one call."""
    work()
    timings = []
    for _round in range(ROUNDS):
        started = time.perf_counter()
        for _call in range(CALLS_PER_ROUND):
            work()
        timings.append((time.perf_counter() - started) / CALLS_PER_ROUND)
    return statistics.median(timings)


def main() -> None:
    """Measure and print the table."""
    plaintext = os.urandom(PACKAGE_BYTES)
    aead = AESGCM(AESGCM.generate_key(bit_length=128))
    nonce = os.urandom(12)
    baseline = median_seconds(lambda: aead.encrypt(nonce, plaintext, None))
    print(f"AES-128-GCM, 256 KiB (baseline): {baseline * 1e3:.3f} ms")
    for suite in SuiteName:
        pair = generate_key_pair(suite)
        public_key = decode_public_key(pair.public_key, suite)
        elapsed = median_seconds(
            lambda suite=suite, public_key=public_key: seal(
                plaintext,
                public_key=public_key,
                suite=suite,
                key_id="bench",
                case_ref="GV-0000000000",
                municipality_code="GM0193",
            )
        )
        print(
            f"seal {suite.value}, 256 KiB: {elapsed * 1e3:.3f} ms, "
            f"ratio to baseline {elapsed / baseline:.2f}"
        )


if __name__ == "__main__":
    main()
