"""The check the codec fuzzer makes, in plain Python: the decoders against `fuzz.reference`.

A case (`Case`) is a stream, the offsets where it is cut into `feed()` calls and which requests
were HEAD; a fuzzer input is the stream followed by those parameters. A `Finding` is any
exception but `ProtocolError`, a byte accepted after the reference rejected the stream, or
messages that differ from the reference's before the decoder stopped (stricter is fine).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from fuzz import reference
from fuzz.reference import END, Event, Interim
from podproxy.errors import ProtocolError
from podproxy.http import stream
from podproxy.http.http1.codec import RequestDecoder, ResponseDecoder

# Longest stream the fuzzer makes (`-max_len`); cut offsets are taken modulo the stream length.
MAX_CUT = 4095
MAX_CUTS = 15
# Bit of the flags byte that asks for small header limits: the 431/502 paths are exercised
# too (a decoder that raises `ProtocolError` there is never a finding).
SMALL_LIMITS = 0x80
SMALL_MAX_HEADERS_BYTES = 200
SMALL_MAX_HEADERS_COUNT = 4
# The other seven bits say which responses answer a HEAD (response i: bit i % 7).
HEAD_BITS = 7


class Finding(Exception):
    """The decoder and the reference disagree; `kind` groups findings of one cause."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class Provider(Protocol):
    """What `Case.decode` needs of atheris' FuzzedDataProvider (or `BytesProvider`)."""

    def ConsumeIntInRange(self, lo: int, hi: int) -> int: ...
    def ConsumeBytes(self, count: int) -> bytes: ...
    def remaining_bytes(self) -> int: ...


class BytesProvider:
    """atheris' FuzzedDataProvider for the two calls used, in plain Python, so that the tests
    read corpus files as the fuzzer did. As in libFuzzer, integers come from the end of the
    input (high byte first) and bytes from the front; `fuzz_codec` checks it against atheris."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._front = 0
        self._back = len(data)

    def ConsumeIntInRange(self, lo: int, hi: int) -> int:
        span = hi - lo
        result = 0
        shift = 0
        while shift < 64 and span >> shift > 0 and self._back > self._front:
            self._back -= 1
            result = (result << 8) | self._data[self._back]
            shift += 8
        if span != (1 << 64) - 1:
            result %= span + 1
        return lo + result

    def ConsumeBytes(self, count: int) -> bytes:
        out = self._data[self._front : min(self._front + count, self._back)]
        self._front += len(out)
        return out

    def remaining_bytes(self) -> int:
        return self._back - self._front


@dataclass(frozen=True, slots=True)
class Case:
    data: bytes
    cuts: tuple[int, ...] = ()  # offsets inside `data` where one feed() ends and one begins
    flags: int = 0

    @classmethod
    def decode(cls, provider: Provider) -> Case:
        flags = provider.ConsumeIntInRange(0, 255)
        count = provider.ConsumeIntInRange(0, MAX_CUTS)
        raw = [provider.ConsumeIntInRange(0, MAX_CUT) for _ in range(count)]
        data = provider.ConsumeBytes(provider.remaining_bytes())
        cuts = sorted({c % len(data) for c in raw if data} - {0})
        return cls(data, tuple(cuts), flags)

    def encode(self) -> bytes:
        """The fuzzer input that decodes to this case (cuts must be below MAX_CUT)."""
        tail = bytearray()
        for cut in reversed(self.cuts):
            tail += bytes((cut & 0xFF, cut >> 8))
        return self.data + bytes(tail) + bytes((len(self.cuts), self.flags))

    def no_body(self) -> list[bool]:
        return [bool(self.flags >> i & 1) for i in range(HEAD_BITS)]

    def limits(self) -> tuple[int, int]:
        if self.flags & SMALL_LIMITS:
            return SMALL_MAX_HEADERS_BYTES, SMALL_MAX_HEADERS_COUNT
        return stream.DEFAULT_MAX_HEADERS_BYTES, stream.DEFAULT_MAX_HEADERS_COUNT


def _chunks(data: bytes, cuts: Sequence[int]) -> Iterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)):
        if start < cut < len(data):
            yield data[start:cut]
            start = cut
    if start < len(data):
        yield data[start:]


def _value(value: bytes) -> bytes:
    """A field value as both sides must agree on it: list elements without OWS (the decoder
    keeps trailing OWS, and rejoins a Connection value it removed tokens from)."""
    return b",".join(part.strip(b" \t") for part in value.split(b","))


def _fields(headers: Sequence[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((name, _value(value)) for name, value in headers)


class _Recorder:
    """A request and response sink (and 1xx callback) that records events as the reference
    spells them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.ends = 0
        self.keep_alive = True  # of the last final response head

    def on_request_head(self, head: stream.RequestHead) -> None:
        self.events.append(
            reference.RequestHead(
                head.method,
                head.target,
                head.version,
                head.host,
                head.keep_alive,
                head.upgrade,
                _fields(head.headers),
            )
        )

    def on_response_head(self, head: stream.ResponseHead) -> None:
        self.keep_alive = head.keep_alive
        self.events.append(
            reference.ResponseHead(
                head.status,
                head.keep_alive,
                head.content_length,
                head.chunked,
                _fields(head.headers),
            )
        )

    def on_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.events.append(Interim(status, _fields(headers)))

    def on_body(self, data: bytes) -> None:
        self.events.append(data)

    on_request_body = on_response_body = on_body

    def on_end(self) -> None:
        self.events.append(END)
        self.ends += 1

    on_request_end = on_response_end = on_end


def _canonical(events: Sequence[Event]) -> list[Event]:
    """Events as compared: consecutive body pieces joined (how bytes were split must not
    matter), field values as `_value` spells them."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, reference.RequestHead | reference.ResponseHead | Interim):
            event = dataclasses.replace(event, fields=_fields(event.fields))
        elif isinstance(event, bytes):
            if not event:
                continue
            if out and isinstance(out[-1], bytes):
                out[-1] += event
                continue
        out.append(event)
    return out


def _name(event: Event, other: Event | None = None) -> str:
    """The kind of an event (with the first field that differs from `other`'s, for heads)."""
    if isinstance(event, bytes):
        return "body"
    name = type(event).__name__.lower()
    if type(other) is type(event) and dataclasses.is_dataclass(event):
        for f in dataclasses.fields(event):
            if getattr(event, f.name) != getattr(other, f.name):
                return f"{name}.{f.name}"
    return name


def compare(events: Sequence[Event], ref: reference.Result, accepted: int, raised: bool) -> None:
    """Raise `Finding` unless the decoder's events (it took the first `accepted` bytes without
    an error, and `raised` or not on the next feed) are the reference's, or a prefix of them
    when it raised (the last body then possibly cut short)."""
    rejection = ref.rejection
    got = _canonical(events)
    want = _canonical(ref.events)
    if ref.judged is not None:
        judged = len(_canonical(ref.events[: ref.judged]))
        del got[judged:], want[judged:]
    for i, event in enumerate(got):
        if i < len(want) and event == want[i]:
            continue
        if raised and i == len(got) - 1 and i < len(want) and _cut_short(event, want[i]):
            break  # the decoder raised inside this body
        if isinstance(event, bytes) and i and isinstance(got[i - 1], Interim):
            kind = "framing:body-of-interim"
        elif i >= len(want) and rejection is not None:
            kind = f"accepted:{rejection.rule}"
        else:
            kind = f"framing:{_name(event, want[i] if i < len(want) else None)}"
        raise Finding(kind, _difference(got, want, i))
    if not raised and len(got) != len(want):
        raise Finding(f"framing:missing-{_name(want[len(got)])}", _difference(got, want, len(got)))
    if rejection is not None and rejection.offset < accepted:
        # After a 1xx, llhttp may have taken what follows as that 1xx's body: group it so.
        interim = bool(got) and isinstance(got[-1], Interim)
        raise Finding(
            "framing:body-of-interim" if interim else f"accepted:{rejection.rule}",
            f"the decoder took byte {rejection.offset} without an error, the reference "
            f"rejected the stream there ({rejection.rule})",
        )


def _cut_short(event: Event, expected: Event) -> bool:
    return isinstance(event, bytes) and isinstance(expected, bytes) and expected.startswith(event)


def _difference(got: Sequence[Event], want: Sequence[Event], i: int) -> str:
    return (
        f"event {i} differs:\n  decoder:   {got[i : i + 3]!r}\n  reference: {want[i : i + 3]!r}\n"
        f"  (before: {got[max(0, i - 2) : i]!r})"
    )


def _exception(exc: Exception) -> Finding:
    return Finding(f"exception:{type(exc).__name__}", repr(exc))


def check_requests(case: Case) -> None:
    """Feed `case` to a RequestDecoder, cut as it says, and compare with the reference."""
    ref = reference.parse_requests(case.data)
    recorder = _Recorder()
    max_bytes, max_count = case.limits()
    decoder = RequestDecoder(recorder, max_bytes, max_count)
    accepted = 0
    raised = False
    for chunk in _chunks(case.data, case.cuts):
        try:
            decoder.feed(chunk)
        except ProtocolError:
            raised = True
            break
        except Exception as exc:
            raise _exception(exc) from exc
        accepted += len(chunk)
    if decoder.stopped:
        # It stopped parsing (after an upgrade, or a connection's last request): it took
        # nothing after that, as good as an error for what follows; its messages up to there
        # are still compared.
        raised, accepted = True, 0
    compare(recorder.events, ref, accepted, raised)


def check_responses(case: Case) -> None:
    """Feed `case` to a ResponseDecoder as a client would: each response is expected (its
    request sent) between two reads once the one before it ended and kept the connection
    alive; EOF closes the stream."""
    no_body = case.no_body()
    ref = reference.parse_responses(case.data, no_body, (*case.cuts, len(case.data)))
    recorder = _Recorder()
    max_bytes, max_count = case.limits()
    decoder = ResponseDecoder(recorder, max_bytes, max_count)
    decoder.on_informational = recorder.on_informational
    decoder.expect_response(no_body[0])
    accepted = 0
    raised = False
    done = 0  # responses that ended
    try:
        for chunk in _chunks(case.data, case.cuts):
            try:
                decoder.feed(chunk)
            except ProtocolError:
                raised = True
                break
            accepted += len(chunk)
            if recorder.ends > done:
                done = recorder.ends
                if recorder.keep_alive:  # else the client closes: no request follows
                    decoder.expect_response(no_body[done % len(no_body)])
        if not raised:
            decoder.eof()
    except Exception as exc:
        raise _exception(exc) from exc
    compare(recorder.events, ref, accepted, raised)


TARGETS = {"request": check_requests, "response": check_responses}


def run(target: str, data: bytes) -> None:
    """Check one fuzzer input (or corpus file) for `target`."""
    TARGETS[target](Case.decode(BytesProvider(data)))
