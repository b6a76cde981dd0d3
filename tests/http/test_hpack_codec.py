"""podproxy's HPACK encoder and decoder and its received-block checks, each against the
library it stands in for: `hpack` (RFC 7541, the reference h2 itself uses) and h2's own
normalization and validation. Same bytes in, same headers or the same kind of error out."""

from __future__ import annotations

import hpack
import pytest
from h2.exceptions import ProtocolError
from h2.utilities import HeaderValidationFlags, normalize_inbound_headers, validate_headers
from hpack.exceptions import (
    HPACKDecodingError,
    HPACKError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.struct import NeverIndexedHeaderTuple
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podproxy.http.http2 import fields
from podproxy.http.http2.hpack_codec import Decoder, Encoder

NAMES = [
    b":method", b":path", b":authority", b":scheme", b":status", b"content-type",
    b"user-agent", b"x-request-id", b"cookie", b"authorization", b"grpc-status",
    b"x-custom", b"content-length", b"date", b"te",
]  # fmt: skip
VALUES = [b"", b"GET", b"POST", b"/", b"/a/b?c=d", b"200", b"application/grpc", b"gzip",
          b"a" * 40, b"\xff\x00binary", b"x" * 300, b"trailers"]  # fmt: skip

fields_ = st.tuples(
    st.one_of(st.sampled_from(NAMES), st.binary(min_size=1, max_size=12)),
    st.one_of(st.sampled_from(VALUES), st.binary(max_size=40)),
)
blocks = st.lists(fields_, max_size=12)


def _plain(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in headers]


@settings(max_examples=300, deadline=None)
@given(st.lists(blocks, min_size=1, max_size=8), st.lists(st.sampled_from([0, 64, 256, 4096])))
def test_our_encoder_is_read_by_hpack(
    seq: list[list[tuple[bytes, bytes]]], sizes: list[int]
) -> None:
    """Whatever we encode, hpack's decoder reads back, table sizes changing between blocks."""
    ours, theirs = Encoder(), hpack.Decoder(max_header_list_size=1 << 20)
    for i, block in enumerate(seq):
        if i < len(sizes):
            ours.header_table_size = sizes[i]
        assert _plain(theirs.decode(ours.encode(block), raw=True)) == block
        assert theirs.header_table_size == ours.header_table_size


@settings(max_examples=300, deadline=None)
@given(st.lists(blocks, min_size=1, max_size=8), st.sampled_from([0, 100, 256, 4096]))
def test_hpack_encoder_is_read_by_ours(seq: list[list[tuple[bytes, bytes]]], size: int) -> None:
    """What hpack encodes (Huffman or not, any table size) we decode, to the same table."""
    theirs, ours, ref = hpack.Encoder(), Decoder(1 << 20), hpack.Decoder(1 << 20)
    theirs.header_table_size = size
    for i, block in enumerate(seq):
        data = theirs.encode(block, huffman=i % 2 == 0)
        assert _plain(ours.decode(data, raw=True)) == block
        ref.decode(data, raw=True)
        assert list(ours.table) == list(ref.header_table.dynamic_entries)
        assert ours.size == ref.header_table._current_size


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(blocks, max_size=3), st.binary(max_size=64))
def test_decoder_matches_hpack_on_any_bytes(
    prefix: list[list[tuple[bytes, bytes]]], junk: bytes
) -> None:
    """Arbitrary bytes after a valid history: the same headers, or an error for both."""
    enc = hpack.Encoder()
    ours, ref = Decoder(8192), hpack.Decoder(8192)
    for block in prefix:
        data = enc.encode(block)
        ours.decode(data, raw=True)
        ref.decode(data, raw=True)
    try:
        expected = ref.decode(junk, raw=True)
    except (HPACKError, IndexError, TypeError, UnicodeDecodeError):
        with pytest.raises(HPACKError):
            ours.decode(junk, raw=True)
        return
    try:
        got = ours.decode(junk, raw=True)
    except HPACKDecodingError as exc:
        # The one rule of ours hpack lacks: an integer of more than five continuation octets.
        assert "too long" in str(exc)
        return
    assert [(type(h), *h) for h in got] == [(type(h), *h) for h in expected]


def test_what_is_indexed() -> None:
    enc, dec = Encoder(), hpack.Decoder()
    block = [(b"user-agent", b"grpc"), (b"x-request-id", b"abc"), (b":path", b"/x"),
             (b"authorization", b"secret"), (b"cookie", b"a=1")]  # fmt: skip
    first = enc.encode(block)
    dec.decode(first, raw=True)
    # Only user-agent went into the table: request ids and paths change, secrets never go.
    assert [n for n, _ in dec.header_table.dynamic_entries] == [b"user-agent"]
    decoded = hpack.Decoder().decode(first, raw=True)
    assert isinstance(decoded[3], NeverIndexedHeaderTuple)
    assert isinstance(decoded[4], NeverIndexedHeaderTuple)
    # A field seen before is one octet: 0x80 | 62.
    again = enc.encode([(b"user-agent", b"grpc")])
    assert again == bytes([0x80 | 62])
    # A field hpack marks never-indexed stays never-indexed.
    nid = enc.encode([NeverIndexedHeaderTuple(b"x-custom", b"v")])
    assert nid[0] & 0xF0 == 0x10


def test_table_size_updates_and_eviction() -> None:
    enc, dec = Encoder(), Decoder()
    for i in range(200):
        dec.decode(enc.encode([(b"x-custom", b"%d" % i)]), raw=True)
    assert enc.size == dec.size <= 4096
    assert [tuple(h) for h in dec.table][:2] == [(b"x-custom", b"199"), (b"x-custom", b"198")]
    # The peer shrinks, then grows, its table before our next block: both updates are sent
    # (the smallest, then the last), and the table empties at 0.
    enc.header_table_size = 0
    enc.header_table_size = 100000  # more than we use: 4096
    data = enc.encode([(b"x-custom", b"z")])
    assert data[:1] == bytes([0x20])
    dec.decode(data, raw=True)
    assert [tuple(h) for h in dec.table] == [(b"x-custom", b"z")]
    assert dec.header_table_size == enc.header_table_size == 4096


def test_decoder_errors() -> None:
    dec = Decoder(max_header_list_size=100)
    with pytest.raises(HPACKDecodingError):  # index 0
        dec.decode(b"\x80", raw=True)
    with pytest.raises(InvalidTableIndex):  # the dynamic table is empty
        dec.decode(bytes([0x80 | 62]), raw=True)
    with pytest.raises(InvalidTableSizeError):  # above what we allowed
        dec.decode(b"\x3f\xe2\x1f", raw=True)
    with pytest.raises(HPACKDecodingError, match="start of the block"):
        dec.decode(b"\x82\x20", raw=True)
    with pytest.raises(HPACKDecodingError, match="Truncated"):
        dec.decode(b"\x40\x05ab", raw=True)
    with pytest.raises(HPACKDecodingError, match="too long"):
        dec.decode(b"\xff\xff\xff\xff\xff\xff\xff\x01", raw=True)
    with pytest.raises(OversizedHeaderListError):
        dec.decode(hpack.Encoder().encode([(b"x-custom", b"v" * 80)]), raw=True)
    # Our limit shrank (SETTINGS acked) but the peer's table did not: an error at block end.
    dec.max_allowed_table_size = 0
    with pytest.raises(InvalidTableSizeError):
        dec.decode(b"\x82", raw=True)


# fields.check_block against h2's pipeline -------------------------------------------------

FIELD_NAMES = [b":method", b":scheme", b":path", b":authority", b":status", b":protocol",
               b":custom", b"host", b"cookie", b"te", b"connection", b"upgrade", b"x-a",
               b"X-Upper", b"bad name", b"", b"a:b", b"content-length"]  # fmt: skip
FIELD_VALUES = [
    b"GET", b"CONNECT", b"POST", b"http", b"/", b"", b"example.com", b"200",
    b"trailers", b"gzip", b" lead", b"trail\t", b"nul\x00", b"cr\r", b"a=1",
]  # fmt: skip
check_fields = st.tuples(st.sampled_from(FIELD_NAMES), st.sampled_from(FIELD_VALUES))
REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
           (b":authority", b"example.com")]  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.lists(check_fields, max_size=8),
        st.lists(check_fields, max_size=4).map(lambda extra: REQUEST + extra),
        st.lists(check_fields, max_size=4).map(lambda extra: [(b":status", b"200"), *extra]),
    ),
    st.sampled_from(["request", "response", "trailer"]),
)
def test_check_block_agrees_with_h2(headers: list[tuple[bytes, bytes]], kind: str) -> None:
    flags = HeaderValidationFlags(
        is_client=kind != "request",
        is_trailer=kind == "trailer",
        is_response_header=kind == "response",
        is_push_promise=False,
    )
    try:
        expected = list(validate_headers(normalize_inbound_headers(headers, flags), flags))
    except ProtocolError:
        with pytest.raises(fields.FieldError):
            fields.check_block(headers, kind == "response", kind == "trailer")
        return
    got = fields.check_block(headers, kind == "response", kind == "trailer")
    assert [(type(h), *h) for h in got] == [(type(h), *h) for h in expected]
