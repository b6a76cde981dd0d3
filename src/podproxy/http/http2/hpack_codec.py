"""HPACK (RFC 7541) for the HTTP/2 codec, in place of the `hpack` package's Encoder and Decoder.

h2 compresses every header block with `hpack`, whose encoder looks each field up in the dynamic
table by a linear scan and whose decoder copies the rest of the block for each literal; with its
debug logging, that was a third of the proxy's time per HTTP/2 exchange. These two classes
keep `hpack`'s interface (h2 swaps them in with `install`) and its static table, Huffman code
and exceptions, so h2 maps errors to COMPRESSION_ERROR as before, and differ in cost only:

- the encoder finds a field in the dynamic table by a dict keyed on (name, value), each entry
  numbered by when it was inserted, so its index is arithmetic;
- both sides keep the Huffman forms of strings they have seen (a proxy sees the same names and
  values over and over), in bounded caches;
- the decoder reads the block in place, and returns the table's own tuples for indexed fields.

What is indexed follows nghttp2's rule (Envoy's codec): every field, except values that change
per request (`:path`, `content-length`, `x-request-id`, ...) and fields larger than 3/4 of the
table; `authorization`, `proxy-authorization` and short cookies are never indexed, as h2 does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable

# RFC 7541 §4.1: an entry's size is its name and value plus 32.
ENTRY_OVERHEAD = 32
DEFAULT_TABLE_SIZE = 4096
# The largest table this encoder uses, whatever the peer allows (nghttp2's default too).
ENCODER_TABLE_LIMIT = 4096
# An HPACK integer longer than this many continuation bytes is an attack, not a header.
MAX_INTEGER_BYTES = 5

STATIC: tuple[HeaderTuple, ...] = tuple(HeaderTuple(n, v) for n, v in HeaderTable.STATIC_TABLE)
STATIC_LEN = len(STATIC)
STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
STATIC_NAME: dict[bytes, int] = {}
for _i, (_n, _v) in enumerate(HeaderTable.STATIC_TABLE, 1):
    STATIC_FULL.setdefault((_n, _v), _i)
    STATIC_NAME.setdefault(_n, _i)

# Never put in the table: their values change per request (nghttp2's list, and Envoy's
# request id), so indexing them would only push out entries that repeat.
UNINDEXED = frozenset(
    {
        b":path",
        b"age",
        b"content-length",
        b"etag",
        b"if-modified-since",
        b"if-none-match",
        b"location",
        b"set-cookie",
        b"x-request-id",
    }
)
# Values unique to one request: sent as they are (not Huffman-coded, so not cached either).
UNIQUE = frozenset({b"x-request-id"})
# Never indexed anywhere along the path (h2's rule for outbound headers).
SENSITIVE = frozenset({b"authorization", b"proxy-authorization"})
SHORT_COOKIE = 20

_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
# Bounded memo tables: cleared whole when full (the working set of a proxy is small).
CACHE_ENTRIES = 4096
CACHE_STRING_MAX = 256
_encoded: dict[bytes, bytes] = {}
_decoded: dict[bytes, bytes] = {}


# The one-octet indexed representations (§6.1), for indexes below 127.
INDEXED = tuple(bytes((0x80 | i,)) for i in range(127))


def encode_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 §5.1, with `first` the representation's pattern bits in the first octet."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_string(raw: bytes) -> bytes:
    """A string literal (§5.2): Huffman-coded when that is shorter, as nghttp2 chooses."""
    cached = _encoded.get(raw)
    if cached is not None:
        return cached
    coded = _huffman.encode(raw)
    if len(coded) < len(raw):
        out = encode_integer(len(coded), 7, 0x80) + coded
    else:
        out = encode_integer(len(raw), 7, 0) + raw
    if len(raw) <= CACHE_STRING_MAX:
        if len(_encoded) >= CACHE_ENTRIES:
            _encoded.clear()
        _encoded[raw] = out
    return out


class Encoder:
    """`hpack.Encoder`'s interface: `encode(headers)` and the `header_table_size` the peer's
    SETTINGS_HEADER_TABLE_SIZE sets."""

    def __init__(self) -> None:
        # Entries oldest first: (name, value, number, size); numbers grow by one per insert.
        self.entries: deque[tuple[bytes, bytes, int, int]] = deque()
        self.inserted = 0  # the next entry's number
        self.size = 0
        self.max_size = DEFAULT_TABLE_SIZE
        self.by_field: dict[tuple[bytes, bytes], int] = {}
        self.by_name: dict[bytes, int] = {}
        # Size updates owed at the start of the next block (§4.2: the smallest, then the last).
        self.pending: list[int] = []

    @property
    def header_table_size(self) -> int:
        return self.max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        size = min(value, ENCODER_TABLE_LIMIT)
        if size == self.max_size and not self.pending:
            return
        self.pending.append(size)
        self.max_size = size
        self._evict(0)

    def _evict(self, room: int) -> None:
        limit = self.max_size - room
        entries = self.entries
        while self.size > limit and entries:
            name, value, number, size = entries.popleft()
            self.size -= size
            if self.by_field.get((name, value)) == number:
                del self.by_field[(name, value)]
            if self.by_name.get(name) == number:
                del self.by_name[name]

    def _index(self, number: int) -> int:
        return STATIC_LEN + self.inserted - number

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        out: list[bytes] = []
        if self.pending:
            low = min(self.pending)
            if low != self.pending[-1]:
                out.append(encode_integer(low, 5, 0x20))
            out.append(encode_integer(self.pending[-1], 5, 0x20))
            self.pending = []
        by_field = self.by_field
        for header in headers:
            name, value = header
            key = (name, value)
            i = STATIC_FULL.get(key)
            if i is not None:
                out.append(INDEXED[i])
                continue
            number = by_field.get(key)
            if number is not None:
                i = STATIC_LEN + self.inserted - number
                out.append(INDEXED[i] if i < 127 else encode_integer(i, 7, 0x80))
                continue
            sensitive = (
                name in SENSITIVE
                or (name == b"cookie" and len(value) < SHORT_COOKIE)
                or not getattr(header, "indexable", True)
            )
            size = len(name) + len(value) + ENTRY_OVERHEAD
            index = not sensitive and name not in UNINDEXED and size <= self.max_size * 3 // 4
            name_index = STATIC_NAME.get(name)
            if name_index is None:
                number = self.by_name.get(name)
                if number is not None:
                    name_index = self._index(number)
            if index:
                first, bits = 0x40, 6
            else:
                first, bits = (0x10 if sensitive else 0x00), 4
            if name_index is None:
                out.append(bytes((first,)))
                out.append(encode_string(name))
            else:
                out.append(encode_integer(name_index, bits, first))
            if name in UNIQUE:
                out.append(encode_integer(len(value), 7, 0) + value)
            else:
                out.append(encode_string(value))
            if index:
                self._evict(size)
                number = self.inserted
                self.inserted += 1
                self.entries.append((name, value, number, size))
                self.size += size
                by_field[key] = number
                self.by_name[name] = number
        return b"".join(out)


class Decoder:
    """`hpack.Decoder`'s interface: `decode(data, raw)`, `max_header_list_size`,
    `max_allowed_table_size` (our acked SETTINGS_HEADER_TABLE_SIZE), `header_table_size`."""

    def __init__(self, max_header_list_size: int = 65536) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE
        self.max_size = DEFAULT_TABLE_SIZE
        # Newest first, so dynamic index i (from 62) is table[i - 62].
        self.table: deque[HeaderTuple] = deque()
        self.size = 0

    @property
    def header_table_size(self) -> int:
        return self.max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.max_size = value
        self._evict(0)

    def _evict(self, room: int) -> None:
        limit = self.max_size - room
        table = self.table
        while self.size > limit and table:
            name, value = table.pop()
            self.size -= len(name) + len(value) + ENTRY_OVERHEAD

    def _entry(self, index: int) -> HeaderTuple:
        if 0 < index <= STATIC_LEN:
            return STATIC[index - 1]
        i = index - STATIC_LEN - 1
        if index <= 0 or i >= len(self.table):
            raise InvalidTableIndex(f"Invalid table index {index}")
        return self.table[i]

    def decode(self, data: bytes, raw: bool = False) -> list[Any]:
        if not isinstance(data, bytes):
            data = bytes(data)
        headers: list[Any] = []
        end = len(data)
        pos = 0
        total = 0
        limit = self.max_header_list_size
        while pos < end:
            b = data[pos]
            if b & 0x80:
                index = b & 0x7F
                if index == 0x7F:
                    index, pos = _integer(data, pos, 7)
                else:
                    pos += 1
                header = STATIC[index - 1] if 0 < index <= STATIC_LEN else self._entry(index)
            elif b & 0x40 or not b & 0x20:
                if b & 0x40:
                    index, pos = _integer(data, pos, 6)
                    cls: type[HeaderTuple] = HeaderTuple
                else:
                    index, pos = _integer(data, pos, 4)
                    cls = NeverIndexedHeaderTuple if b & 0x10 else HeaderTuple
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = _string(data, pos)
                value, pos = _string(data, pos)
                header = cls(name, value)
                if b & 0x40:
                    size = len(name) + len(value) + ENTRY_OVERHEAD
                    self._evict(size)
                    if size <= self.max_size:
                        self.table.appendleft(header)
                        self.size += size
            else:
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size, pos = _integer(data, pos, 5)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                continue
            total += len(header[0]) + len(header[1]) + ENTRY_OVERHEAD
            if total > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
            headers.append(header)
        # Caught when our limit shrank and the peer has not shrunk its table yet.
        if self.max_size > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        if raw:
            return headers
        try:
            return [h.__class__(h[0].decode(), h[1].decode()) for h in headers]
        except UnicodeDecodeError as err:
            raise HPACKDecodingError("Unable to decode headers as UTF-8") from err


def _integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """(value, position after it) of the integer whose prefix is in data[pos] (§5.1)."""
    mask = (1 << prefix_bits) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    end = len(data)
    for _ in range(MAX_INTEGER_BYTES):
        if pos >= end:
            raise HPACKDecodingError("Truncated header block")
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    raise HPACKDecodingError("HPACK integer too long")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    """(octets, position after) of the string literal at data[pos] (§5.2)."""
    if pos >= len(data):
        raise HPACKDecodingError("Truncated header block")
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HPACKDecodingError("Truncated header block")
    raw = data[pos:end]
    if not huffman:
        return raw, end
    text = _decoded.get(raw)
    if text is None:
        text = decode_huffman(raw)
        if length <= CACHE_STRING_MAX:
            if len(_decoded) >= CACHE_ENTRIES:
                _decoded.clear()
            _decoded[raw] = text
    return text, end


def install(connection: Any) -> None:
    """Give an h2 connection these in place of `hpack`'s, before its first header block."""
    max_list = connection.decoder.max_header_list_size
    connection.encoder = Encoder()
    connection.decoder = Decoder(max_list)
