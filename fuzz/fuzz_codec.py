"""atheris entry point for the HTTP/1.1 decoders: `python -m fuzz.fuzz_codec TARGET [libFuzzer
arguments and corpus directories]`, TARGET being `request` or `response` (see `make fuzz`).

Each input is decoded into a case (`fuzz.harness.Case`: stream, feed cuts, HEAD flags) and
checked by `fuzz.harness`; a `Finding` or any other exception is a crash for libFuzzer.
`FUZZ_SKIP=kind,kind` ignores findings of kinds already reported, to look past them.
"""

from __future__ import annotations

import os
import random
import sys

import atheris

with atheris.instrument_imports():
    from fuzz import harness, reference
    from podproxy.http.http1 import codec

# Both are imported for their instrumentation: coverage of the reference's branches steers the
# fuzzer towards kinds of streams, the codec's towards the decoders' own paths.
assert reference and codec


def _check_provider() -> None:
    """`harness.BytesProvider` (what the tests read corpus files with) must decode inputs
    exactly as atheris does, or the corpus would test other cases than the fuzzer found."""
    rng = random.Random(0)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 64))
        theirs = harness.Case.decode(atheris.FuzzedDataProvider(data))
        ours = harness.Case.decode(harness.BytesProvider(data))
        if theirs != ours:
            raise SystemExit(f"BytesProvider decodes {data!r} as {ours}, atheris as {theirs}")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in harness.TARGETS:
        raise SystemExit(f"usage: {sys.argv[0]} {'|'.join(harness.TARGETS)} [libFuzzer args]")
    check = harness.TARGETS[sys.argv.pop(1)]
    skip = frozenset(filter(None, os.environ.get("FUZZ_SKIP", "").split(",")))
    _check_provider()

    def test_one_input(data: bytes) -> None:
        case = harness.Case.decode(atheris.FuzzedDataProvider(data))
        try:
            check(case)
        except harness.Finding as finding:
            if finding.kind not in skip:
                raise

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
