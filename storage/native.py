"""ClickHouse's Native format at the revision a client announces.

The embedded engine writes Native blocks as for revision 0: ``columns, rows``, then per column ``name, type,
data``. A client that announces ``client_protocol_version`` (clickhouse-go always does, 54460 today) decodes the
layout a server writes for that revision: a BlockInfo before each block (revision > 0) and, from revision 54454
on, one "has custom serialization" byte after each column's type (0 here: columns are written in full). This
module inserts exactly those bytes. Finding where a column's data ends needs its length, so each type's data is
walked (fixed-size types by arithmetic, strings by their length prefixes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MIN_REVISION_WITH_BLOCK_INFO = 51903
MIN_REVISION_WITH_CUSTOM_SERIALIZATION = 54454
# field 1: is_overflows = false; field 2: bucket_num = -1; field 0: end (BlockInfo::write)
BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"

FIXED = {
    "UInt8": 1, "UInt16": 2, "UInt32": 4, "UInt64": 8, "UInt128": 16, "UInt256": 32,
    "Int8": 1, "Int16": 2, "Int32": 4, "Int64": 8, "Int128": 16, "Int256": 32,
    "Float32": 4, "Float64": 8, "BFloat16": 2, "Bool": 1, "Date": 2, "Date32": 4, "DateTime": 4, "DateTime64": 8,
    "UUID": 16, "IPv4": 4, "IPv6": 16, "Enum8": 1, "Enum16": 2, "Decimal32": 4, "Decimal64": 8, "Decimal128": 16,
    "Decimal256": 32, "Time": 4, "Time64": 8, "Nothing": 1,
    **{f"Interval{unit}": 8 for unit in ("Nanosecond", "Microsecond", "Millisecond", "Second", "Minute", "Hour",
                                         "Day", "Week", "Month", "Quarter", "Year")},
}
# Wrappers whose data is the data of their last (or only) type argument.
TRANSPARENT = {"SimpleAggregateFunction"}


class NativeError(ValueError):
    """A block this module cannot re-encode (an unsupported type, or bytes that are not Native)."""


@dataclass(frozen=True)
class Type:
    name: str
    args: tuple[Type, ...] = ()
    text: tuple[str, ...] = ()  # the raw argument texts (Decimal precision, FixedString size, ...)


def parse_type(text: str) -> Type:
    text = text.strip()
    if "(" not in text:
        return Type(text)
    name, rest = text.split("(", 1)
    if not rest.endswith(")"):
        raise NativeError(f"cannot parse type {text!r}")
    parts, depth, quote, cur = [], 0, "", []
    for ch in rest[:-1]:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    name = name.strip()
    if name in ("Tuple", "Nested"):
        # Named elements: "a UInt8" -> UInt8. A name never contains "(" before its type does.
        elems = [_strip_element_name(p) for p in parts]
        return Type("Tuple", tuple(parse_type(p) for p in elems), tuple(parts))
    if name in ("Nullable", "Array", "LowCardinality", "Map"):
        return Type(name, tuple(parse_type(p) for p in parts), tuple(parts))
    if name in TRANSPARENT:
        return Type(name, (parse_type(parts[-1]),), tuple(parts))
    return Type(name, (), tuple(parts))


def _strip_element_name(part: str) -> str:
    head = part.split("(", 1)[0]
    if " " in head.strip():
        return part.strip().split(None, 1)[1]
    return part


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varuint(self) -> int:
        shift = result = 0
        while True:
            if self.pos >= len(self.data):
                raise NativeError("truncated varint")
            b = self.data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise NativeError("truncated column data")
        self.pos += n

    def uint64(self) -> int:
        self.skip(8)
        return int(struct.unpack_from("<Q", self.data, self.pos - 8)[0])

    def string(self) -> bytes:
        n = self.varuint()
        self.skip(n)
        return self.data[self.pos - n:self.pos]


def _fixed_size(t: Type) -> int | None:
    if t.name in FIXED:
        return FIXED[t.name]
    if t.name == "Decimal":
        precision = int(t.text[0])
        return 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32
    if t.name == "FixedString":
        return int(t.text[0])
    return None


def _skip_prefix(t: Type, r: _Reader) -> None:
    """The serialization state prefix Native writes for a column before its data."""
    if t.name == "LowCardinality":
        r.skip(8)  # key serialization version
    elif t.name in ("Nullable", "Array", "Map", "Tuple") or t.name in TRANSPARENT:
        for a in t.args:
            _skip_prefix(a, r)


def _skip_data(t: Type, r: _Reader, rows: int) -> None:
    if rows == 0:
        return
    size = _fixed_size(t)
    if size is not None:
        r.skip(size * rows)
    elif t.name in ("String", "JSONString"):
        for _ in range(rows):
            r.skip(r.varuint())
    elif t.name == "Nullable":
        r.skip(rows)
        _skip_data(t.args[0], r, rows)
    elif t.name in ("Array", "Map"):
        r.skip(8 * (rows - 1))
        total = r.uint64()
        for a in (t.args if t.name == "Map" else t.args[:1]):
            _skip_data(a, r, total)
    elif t.name == "Tuple":
        for a in t.args:
            _skip_data(a, r, rows)
    elif t.name in TRANSPARENT:
        _skip_data(t.args[0], r, rows)
    elif t.name == "LowCardinality":
        inner = t.args[0]
        keys_type = inner.args[0] if inner.name == "Nullable" else inner
        done = 0
        while done < rows:
            flags = r.uint64()
            if flags & (1 << 9):  # has additional keys
                _skip_data(keys_type, r, r.uint64())
            n = r.uint64()
            r.skip(n * (1 << (flags & 0xFF)))
            done += n
    else:
        raise NativeError(f"type {t.name} is not supported in Native output by this endpoint; "
                          "use another FORMAT (e.g. RowBinaryWithNamesAndTypes or JSON)")


def transcode(data: bytes, revision: int) -> bytes:
    """Native bytes written for revision 0, rewritten as a server writes them for ``revision``."""
    if revision < MIN_REVISION_WITH_BLOCK_INFO:
        return data
    custom = revision >= MIN_REVISION_WITH_CUSTOM_SERIALIZATION
    r = _Reader(data)
    out = bytearray()
    types: dict[str, Type] = {}
    while r.pos < len(data):
        out += BLOCK_INFO
        start = r.pos
        cols, rows = r.varuint(), r.varuint()
        out += data[start:r.pos]
        for _ in range(cols):
            start = r.pos
            r.string()
            type_text = r.string().decode()
            out += data[start:r.pos]
            if custom:
                out.append(0)  # no custom serialization: the column is written in full
            t = types.get(type_text) or types.setdefault(type_text, parse_type(type_text))
            start = r.pos
            if rows:
                _skip_prefix(t, r)
                _skip_data(t, r, rows)
            out += data[start:r.pos]
    return bytes(out)
