"""The codec fuzzer's corpus and hand-picked smuggling inputs, checked without atheris.

Each input goes through `fuzz.harness` (the decoder against `fuzz/reference.py`), as under
`make fuzz`; the hand-picked ones also with one feed cut at every byte. The inputs that showed
a decoder bug (FOUND, with what each did in FOUND_BUGS) are regressions that must pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `fuzz` is a top-level directory, not an installed package

from fuzz import harness  # noqa: E402
from fuzz.harness import BytesProvider, Case, Finding  # noqa: E402

CORPUS = ROOT / "fuzz" / "corpus"
# Cutting at every byte is quadratic: only streams up to this long.
EVERY_CUT_MAX = 400

# What each input of FOUND below showed before it was fixed (the fuzzer, or writing the
# reference, found it): name -> what the decoder did.
FOUND_BUGS: dict[str, str] = {
    "h2c-transfer-encoding-gzip": "h2c upgrade with a non-chunked Transfer-Encoding: an "
    "httptools.HttpParserError escaped RequestDecoder.feed",
    "obs-fold-rfind": "after an obs-fold the head was re-parsed from the last request line in "
    "the read: one inside a later header value or body became the request (Host: evil), an "
    "earlier pipelined request with the same line vanished",
    "h2c-body-after-close": "h2c upgrade with a body on a connection not kept alive: the "
    "re-framing parser forgot it, and the next request was parsed",
    "http10-transfer-encoding-keep-alive": "HTTP/1.0 with Transfer-Encoding was kept alive "
    "(RFC 9112 §6.1: close after it)",
    "http10-keep-alive-and-close": "HTTP/1.0 with both keep-alive and close was kept alive "
    "(llhttp lets keep-alive win for 1.0; RFC 9112 §9.3: close wins)",
    "request-transfer-encoding-gzip": "a request whose final coding is not chunked reached "
    "the sink before the 400",
    "request-transfer-coding-unsupported": "Transfer-Encoding: gzip, chunked was accepted and "
    "the body went upstream still gzip-coded without its coding (Envoy answers 501)",
    "duplicate-host": "two Host lines were accepted (RFC 9112 §3.2: 400)",
    "fold-head-begun-earlier": "a read that started inside a header value with what looked "
    "like the request line, then an obs-fold: the head was re-parsed from that read, its "
    "fields from the earlier read moved after the new ones (found by make fuzz)",
    "host-trailing-ows": "RequestHead.host kept the trailing OWS llhttp leaves on values, so "
    "it matched no domain",
    "absolute-form-ipv6": "an IPv6 literal authority lost its brackets: host b'::1:8080'",
    "interim-with-body": "a 1xx with a length got a body (llhttp): the final response's bytes "
    "reached on_response_body before any head",
    "status-below-100": "status 000-099 was a 1xx to the decoder and a final response to "
    "llhttp: its body reached the sink with no head",
    "transfer-encoding-xchunked": "Transfer-Encoding: xchunked set ResponseHead.chunked, so "
    "eof() did not end the close-delimited body",
    "transfer-encoding-trailing-htab": "Transfer-Encoding: chunked<HTAB>: llhttp read the body "
    "to EOF while ResponseHead.chunked was True",
    "head-response-keep-alive": "a response to HEAD without Content-Length was reported "
    "keep_alive=False: the connection was not reused",
    "chunked-twice": "a response chunked twice was accepted (RFC 9112 §7.1: at most once)",
    "connection-trailer-revives": "a Connection: keep-alive trailer after an HTTP/1.0 "
    "request made llhttp parse what followed it, though the request had closed the connection",
    "userinfo-and-status-600": "(not bugs: podproxy follows Envoy, see reference.LENIENCIES)",
}

# Hand-picked inputs: (name, target, stream, flags). Flags as in `Case`: 0x01 = the first
# response answers a HEAD.
H = b"Host: x\r\n"
TE = b"Transfer-Encoding: chunked\r\n"
H2C = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
)
NEXT = b"GET /next HTTP/1.1\r\n" + H + b"\r\n"
INLINE: list[tuple[str, str, bytes, int]] = [
    (
        "http10-chunked-response-kept-alive",
        "response",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n" + TE + b"\r\n1\r\nx\r\n0\r\n\r\n",
        0,
    ),
    # request smuggling: both framings, or an ambiguous one
    (
        "cl-te",
        "request",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 6\r\n" + TE + b"\r\n0\r\n\r\nG",
        0,
    ),
    (
        "te-cl",
        "request",
        b"POST / HTTP/1.1\r\n" + H + TE + b"Content-Length: 3\r\n\r\n0\r\n\r\n",
        0,
    ),
    (
        "cl-cl-same",
        "request",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        0,
    ),
    (
        "cl-cl-differ",
        "request",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
        0,
    ),
    ("cl-list", "request", b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\nx" + NEXT, 0),
    ("cl-plus", "request", b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx" + NEXT, 0),
    ("cl-space-inside", "request", b"POST / HTTP/1.1\r\nContent-Length: 1 0\r\n\r\nx", 0),
    (
        "te-space-colon",
        "request",
        b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        0,
    ),
    (
        "te-case-ows",
        "request",
        b"POST / HTTP/1.1\r\nTransfer-Encoding:  CHUNKED \r\n\r\n0\r\n\r\n" + NEXT,
        0,
    ),
    (
        "te-empty-element",
        "request",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: , chunked\r\n\r\n0\r\n\r\n",
        0,
    ),
    ("te-chunked-twice", "request", b"POST / HTTP/1.1\r\n" + TE + TE + b"\r\n0\r\n\r\n" + NEXT, 0),
    (
        "te-vertical-tab",
        "request",
        b"POST / HTTP/1.1\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
        0,
    ),
    (
        "te-obs-fold",
        "request",
        b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        0,
    ),
    # chunk framing
    ("chunk-size-junk", "request", b"POST / HTTP/1.1\r\n" + TE + b"\r\nZZ\r\nabc\r\n0\r\n\r\n", 0),
    ("chunk-size-0x", "request", b"POST / HTTP/1.1\r\n" + TE + b"\r\n0x3\r\nabc\r\n0\r\n\r\n", 0),
    ("chunk-size-space", "request", b"POST / HTTP/1.1\r\n" + TE + b"\r\n3 \r\nabc\r\n0\r\n\r\n", 0),
    (
        "chunk-size-overflow",
        "request",
        b"POST / HTTP/1.1\r\n" + TE + b"\r\n1" + b"0" * 16 + b"\r\nab",
        0,
    ),
    (
        "chunk-size-leading-zeros",
        "request",
        b"POST / HTTP/1.1\r\n" + TE + b"\r\n0003\r\nabc\r\n0\r\n\r\n" + NEXT,
        0,
    ),
    (
        "chunk-ext-quoted-crlf",
        "request",
        b"POST / HTTP/1.1\r\n" + TE + b'\r\n3;a="\r\n"\r\nabc\r\n0\r\n\r\n',
        0,
    ),
    (
        "chunk-ext-ctl",
        "request",
        b"POST / HTTP/1.1\r\n" + TE + b"\r\n3;a=\x01\r\nabc\r\n0\r\n\r\n",
        0,
    ),
    ("chunk-ext-lf", "request", b"POST / HTTP/1.1\r\n" + TE + b"\r\n3;a\nabc\r\n0\r\n\r\n", 0),
    (
        "chunk-data-too-long",
        "request",
        b"POST / HTTP/1.1\r\n" + TE + b"\r\n3\r\nabcd\r\n0\r\n\r\n",
        0,
    ),
    ("chunk-data-lf", "request", b"POST / HTTP/1.1\r\n" + TE + b"\r\n3\r\nabc\n0\r\n\r\n", 0),
    (
        "chunk-trailers",
        "request",
        b"POST / HTTP/1.1\r\n"
        + TE
        + b"\r\n3\r\nabc\r\n0\r\nHost: evil\r\nContent-Length: 5\r\n\r\n"
        + NEXT,
        0,
    ),
    (
        "chunk-trailer-bad",
        "request",
        b"POST / HTTP/1.1\r\n" + TE + b"\r\n0\r\nA b\r\n\r\n" + NEXT,
        0,
    ),
    ("chunk-last-lf", "request", b"POST / HTTP/1.1\r\n" + TE + b"\r\n0\r\n\n" + NEXT, 0),
    # line endings and field syntax
    ("bare-lf-request-line", "request", b"GET / HTTP/1.1\n" + H + b"\r\n", 0),
    ("bare-lf-field", "request", b"GET / HTTP/1.1\r\nA: b\n" + H + b"\r\n", 0),
    ("bare-lf-end-of-head", "request", b"GET / HTTP/1.1\r\n" + H + b"\n" + NEXT, 0),
    ("bare-cr-field", "request", b"GET / HTTP/1.1\r\nA: b\rContent-Length: 3\r\n\r\nabc", 0),
    ("space-before-colon", "request", b"GET / HTTP/1.1\r\nContent-Length : 3\r\n\r\nabc", 0),
    ("space-before-first-field", "request", b"GET / HTTP/1.1\r\n Content-Length: 3\r\n\r\nabc", 0),
    ("nul-in-value", "request", b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n", 0),
    ("obs-fold-first-head", "request", b"GET / HTTP/1.1\r\n" + H + b"A: b\r\n c\r\n\r\n" + NEXT, 0),
    ("obs-fold-second-head", "request", NEXT + b"GET / HTTP/1.1\r\nA: b\r\n\tc\r\n\r\n", 0),
    (
        "obs-fold-body-after-split-head",
        "request",
        b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nab\r\n cd\r\n\r\n" + NEXT,
        0,
    ),
    ("obs-fold-host", "request", b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", 0),
    ("leading-empty-lines", "request", b"\r\n\r\n\n\r" + NEXT + b"\r\n" + NEXT, 0),
    ("http10-close", "request", b"GET / HTTP/1.0\r\n\r\n" + NEXT, 0),
    (
        "connection-close",
        "request",
        b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n\r\n" + NEXT,
        0,
    ),
    ("http09", "request", b"GET /\r\n\r\n" + NEXT, 0),
    ("version-1-2", "request", b"GET / HTTP/1.2\r\n\r\n", 0),
    ("http2-preface", "request", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", 0),
    (
        "absolute-form",
        "request",
        b"GET http://svc:080/a?b HTTP/1.1\r\nHost: other\r\n\r\n" + NEXT,
        0,
    ),
    # upgrades: h2c is answered on HTTP/1.1, anything else ends HTTP parsing
    (
        "h2c-content-length",
        "request",
        b"POST /u HTTP/1.1\r\n" + H + H2C + b"Content-Length: 5\r\n\r\nhello" + NEXT,
        0,
    ),
    (
        "h2c-chunked",
        "request",
        b"POST /u HTTP/1.1\r\n" + H + H2C + TE + b"\r\n5\r\nhello\r\n0\r\nT: 1\r\n\r\n" + NEXT,
        0,
    ),
    (
        "h2c-zero-length",
        "request",
        b"POST /u HTTP/1.1\r\n" + H + H2C + b"Content-Length: 00\r\n\r\n" + NEXT,
        0,
    ),
    (
        "h2c-cl-te",
        "request",
        b"POST /u HTTP/1.1\r\n" + H + H2C + TE + b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        0,
    ),
    (
        "h2c-folded",
        "request",
        b"POST /u HTTP/1.1\r\n" + H2C + b"A: b\r\n c\r\nContent-Length: 1\r\n\r\nx" + NEXT,
        0,
    ),
    (
        "websocket-body",
        "request",
        b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 3\r\n\r\nabc" + NEXT,
        0,
    ),
    (
        "proxy-connection-upgrade",
        "request",
        b"GET / HTTP/1.1\r\nProxy-Connection: upgrade\r\nUpgrade: websocket\r\n\r\n" + NEXT,
        0,
    ),
    ("connect", "request", b"CONNECT svc:443 HTTP/1.1\r\n" + H + b"\r\n" + NEXT, 0),
    # responses
    (
        "interim-100-103",
        "response",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n",
        0,
    ),
    (
        "interim-100-content-length",
        "response",
        b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\n"
        b"Content-Length: 2\r\n\r\nok",
        0,
    ),
    (
        "switching-protocols",
        "response",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00",
        0,
    ),
    ("head-content-length", "response", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", 0x01),
    ("head-bytes-after", "response", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0x01),
    (
        "no-content-with-length",
        "response",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok",
        0,
    ),
    ("not-modified-chunked", "response", b"HTTP/1.1 304 Not Modified\r\n" + TE + b"\r\n", 0),
    (
        "response-cl-te",
        "response",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + TE + b"\r\n0\r\n\r\n",
        0,
    ),
    (
        "response-gzip-close",
        "response",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\nrest",
        0,
    ),
    (
        "response-chunked-trailers",
        "response",
        b"HTTP/1.1 200 OK\r\n" + TE + b"\r\n2\r\nok\r\n0\r\nX: 1\r\n\r\n",
        0,
    ),
    ("response-close-delimited", "response", b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 0),
    (
        "response-after-close",
        "response",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"
        b"xHTTP/1.1 200 OK\r\n\r\n",
        0,
    ),
    (
        "response-unsolicited",
        "response",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n"
        b"Content-Length: 0\r\n\r\n",
        0,
    ),
    ("response-no-reason", "response", b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx", 0),
    (
        "response-obs-fold",
        "response",
        b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\nContent-Length: 1\r\n\r\nx",
        0,
    ),
]
# Inputs that showed a bug, each now a must-pass regression: name -> FOUND_BUGS entry.
FOUND: list[tuple[str, str, bytes, tuple[int, ...], int, str]] = [
    (
        "keep-alive-trailer",
        "request",
        b"POST / HTTP/1.0\r\n" + TE + b"\r\n0\r\nConnection: keep-alive\r\n\r\nPOST /x\r\n\r\n",
        (),
        0,
        "connection-trailer-revives",
    ),
    (
        "http20-close-then-keep-alive",
        "request",
        b"GET / HTTP/2.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n" + NEXT,
        (),
        0,
        "http10-keep-alive-and-close",
    ),
    (
        "h2c-gzip",
        "request",
        b"POST / HTTP/1.1\r\n" + H2C + b"Transfer-Encoding: gzip\r\n\r\n",
        (),
        0,
        "h2c-transfer-encoding-gzip",
    ),
    (
        "fold-then-value",
        "request",
        b"POST /h HTTP/1.1\r\nHost: good\r\nA: b\r\n c\r\nX: POST /h HTTP/1.1\r\n\r\n",
        (),
        0,
        "obs-fold-rfind",
    ),
    (
        "fold-in-a-head-begun-in-an-earlier-read",
        "request",
        b"POST /u HTTP/1.1\r\nHost: a\r\nX: a=POST /u HTTP/1.1\r\nY: b\r\n c\r\n"
        b"Content-Length: 1\r\n\r\nz",
        (33,),
        0,
        "fold-head-begun-earlier",
    ),
    (
        "fold-then-body",
        "request",
        b"POST / HTTP/1.1\r\nA: b\r\n c\r\nContent-Length: 33\r\n\r\nPOST / HTTP/1.1\r\n"
        b"Host: evil\r\n\r\n",
        (),
        0,
        "obs-fold-rfind",
    ),
    (
        "fold-then-pipelined",
        "request",
        b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        (),
        0,
        "obs-fold-rfind",
    ),
    (
        "h2c-http10-body",
        "request",
        b"POST / HTTP/1.0\r\n" + H2C + b"Content-Length: 1\r\n\r\nx" + NEXT,
        (),
        0,
        "h2c-body-after-close",
    ),
    (
        "h2c-close-body",
        "request",
        b"POST / HTTP/1.1\r\nConnection: close, upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 1\r\n\r\nx" + NEXT,
        (),
        0,
        "h2c-body-after-close",
    ),
    (
        "http10-te-keep-alive",
        "request",
        b"POST / HTTP/1.0\r\nConnection: keep-alive\r\n" + TE + b"\r\n0\r\n\r\n" + NEXT,
        (),
        0,
        "http10-transfer-encoding-keep-alive",
    ),
    (
        "http10-keep-alive-close",
        "request",
        b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n" + NEXT,
        (),
        0,
        "http10-keep-alive-and-close",
    ),
    (
        "te-gzip",
        "request",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        (),
        0,
        "request-transfer-encoding-gzip",
    ),
    (
        "te-gzip-chunked",
        "request",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        (),
        0,
        "request-transfer-coding-unsupported",
    ),
    (
        "host-twice",
        "request",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        (),
        0,
        "duplicate-host",
    ),
    (
        "host-trailing-space",
        "request",
        b"GET / HTTP/1.1\r\nHost: x \r\n\r\n",
        (),
        0,
        "host-trailing-ows",
    ),
    (
        "userinfo",
        "request",
        b"GET http://evil@good/ HTTP/1.1\r\n\r\n",
        (),
        0,
        "userinfo-and-status-600",
    ),
    ("ipv6", "request", b"GET http://[::1]:8080/ HTTP/1.1\r\n\r\n", (), 0, "absolute-form-ipv6"),
    (
        "interim-150-length",
        "response",
        b"HTTP/1.1 150 X\r\nContent-Length: 19\r\n\r\nHTTP/1.1 204 No\r\n\r\n",
        (),
        0,
        "interim-with-body",
    ),
    ("status-099", "response", b"HTTP/1.1 099 X\r\n\r\nok", (), 0, "status-below-100"),
    (
        "status-600",
        "response",
        b"HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n",
        (),
        0,
        "userinfo-and-status-600",
    ),
    (
        "xchunked",
        "response",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nabc",
        (),
        0,
        "transfer-encoding-xchunked",
    ),
    (
        "chunked-htab",
        "response",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        (),
        0,
        "transfer-encoding-trailing-htab",
    ),
    (
        "head-no-length",
        "response",
        b"HTTP/1.1 200 OK\r\n\r\n",
        (),
        0x01,
        "head-response-keep-alive",
    ),
    (
        "chunked-chunked",
        "response",
        b"HTTP/1.1 200 OK\r\n" + TE + TE + b"\r\n0\r\n\r\n",
        (),
        0,
        "chunked-twice",
    ),
]


def _check(target: str, case: Case) -> None:
    harness.TARGETS[target](case)


def _every_cut(target: str, data: bytes, flags: int) -> None:
    _check(target, Case(data, (), flags))
    if len(data) <= EVERY_CUT_MAX:
        for cut in range(1, len(data)):
            _check(target, Case(data, (cut,), flags))


@pytest.mark.parametrize(
    "path", [pytest.param(p, id=f"{p.parent.name}/{p.name}") for p in sorted(CORPUS.glob("*/*"))]
)
def test_corpus_file(path: Path) -> None:
    _check(path.parent.name, Case.decode(BytesProvider(path.read_bytes())))


@pytest.mark.parametrize(("target", "data", "flags"), [pytest.param(*t, id=n) for n, *t in INLINE])
def test_hand_picked_input_at_every_cut(target: str, data: bytes, flags: int) -> None:
    _every_cut(target, data, flags)


@pytest.mark.parametrize(
    ("target", "data", "cuts", "flags", "bug"), [pytest.param(*t, id=n) for n, *t in FOUND]
)
def test_found_by_fuzzing(
    target: str, data: bytes, cuts: tuple[int, ...], flags: int, bug: str
) -> None:
    assert bug in FOUND_BUGS
    _every_cut(target, data, flags)
    if cuts:
        _check(target, Case(data, cuts, flags))


def test_corpus_has_every_target() -> None:
    assert {p.parent.name for p in CORPUS.glob("*/*")} == set(harness.TARGETS)


def test_bytes_provider_reads_an_encoded_case_back() -> None:
    case = Case(b"GET / HTTP/1.1\r\n\r\n", (3, 17), 0x81)
    assert Case.decode(BytesProvider(case.encode())) == case
    # Too short for its parameters: integers fall back to their minimum, as in libFuzzer.
    assert Case.decode(BytesProvider(b"")) == Case(b"", (), 0)


def test_the_check_can_fail() -> None:
    # A decoder that framed these differently from the reference would be reported: the
    # comparison itself is checked on a doctored reference answer.
    data = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    with pytest.raises(Finding, match="framing:body"):
        harness.compare(
            [*harness.reference.parse_requests(data).events[:1], b"abd", harness.reference.END],
            harness.reference.parse_requests(data),
            len(data),
            raised=False,
        )
