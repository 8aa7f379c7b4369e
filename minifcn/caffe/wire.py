"""Protocol buffers' binary wire format, the little of it a .caffemodel needs.

A message is a run of fields; each starts with a key, the varint (number << 3 | wire type):
    0 VARINT   a base-128 integer, 7 bits a byte, low bits first, high bit = "more follows"
    1 I64      8 bytes (double)            5 I32   4 bytes (float), little-endian
    2 LEN      a varint length, then that many bytes: a string, a nested message, or a
               *packed* repeated field (all the values back to back, no keys)
(3 and 4, groups, are an old encoding caffe.proto never uses, and are refused.) A repeated
float may also come unpacked, one I32 field per value; both spellings are read. A reader skips
the fields it does not know, so a .caffemodel's other fields (layer settings) cost nothing.

Every problem raises WireError with the byte offset where it was found.
"""
from __future__ import annotations

import numpy as np

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_NAMES = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "group start", 4: "group end",
          5: "32-bit"}


class WireError(ValueError):
    """A malformed or truncated message; .offset is the byte where it was found."""

    def __init__(self, message, offset):
        super().__init__(message)
        self.offset = offset


# ----------------------------------------------------------------------------- decoding
def read_varint(buf, pos, end):
    """(value, next position) of the varint at pos."""
    start, result, shift = pos, 0, 0
    while True:
        if pos >= end:
            raise WireError("truncated: the file ends inside a varint", start)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("malformed varint (longer than 10 bytes)", start)


def next_field(buf, pos, end):
    """(number, wire type, value, offset, next position) of the field at pos: value is the
    integer of a varint, else the (begin, end) span of the field's bytes."""
    offset = pos
    key, pos = read_varint(buf, pos, end)
    number, wt = key >> 3, key & 7
    if number == 0:
        raise WireError("malformed: field number 0", offset)
    if wt == VARINT:
        value, pos = read_varint(buf, pos, end)
    elif wt in (I64, I32):
        value = (pos, pos + (8 if wt == I64 else 4))
        pos = value[1]
    elif wt == LEN:
        n, pos = read_varint(buf, pos, end)
        value = (pos, pos + n)
        pos += n
    else:
        raise WireError(f"field {number}: wire type {wt} ({_NAMES.get(wt, 'invalid')}) is "
                        f"not used by caffe.proto", offset)
    if pos > end:
        raise WireError(f"truncated: field {number} needs {pos - end} more bytes than the "
                        f"message holds", offset)
    return number, wt, value, offset, pos


def fields(buf, start, end):
    """Yield (number, wire type, value, offset) for each field of buf[start:end]."""
    pos = start
    while pos < end:
        number, wt, value, offset, pos = next_field(buf, pos, end)
        yield number, wt, value, offset


def expect(number, wt, wanted, name, offset):
    if wt not in wanted:
        raise WireError(f"field {name} ({number}) has wire type {_NAMES.get(wt, wt)}, expected "
                        f"{' or '.join(_NAMES[w] for w in wanted)}", offset)


def string(buf, span, offset):
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("a string field is not UTF-8", offset) from None


def packed(buf, span, dtype, offset):
    """The values of a packed repeated float / double field (a copy)."""
    dt = np.dtype(dtype).newbyteorder("<")
    n = span[1] - span[0]
    if n % dt.itemsize:
        raise WireError(f"a packed field of {n} bytes is not a whole number of "
                        f"{dt.itemsize}-byte values", offset)
    return np.frombuffer(buf, dt, n // dt.itemsize, span[0]).astype(dt.newbyteorder("="))


def unpacked_run(buf, pos, end, tag, dtype):
    """Unpacked repeated values: the longest run of (tag byte, value) records at pos, read
    at once with numpy. Returns (values, next position)."""
    dt = np.dtype(dtype).newbyteorder("<")
    rec = np.dtype([("tag", "u1"), ("v", dt)])
    k = (end - pos) // rec.itemsize
    recs = np.frombuffer(buf, rec, k, pos)
    bad = np.flatnonzero(recs["tag"] != tag)
    run = int(bad[0]) if bad.size else k
    return recs["v"][:run].astype(dt.newbyteorder("=")), pos + run * rec.itemsize


def varints(buf, span, offset):
    """A packed repeated varint field (BlobShape.dim)."""
    out, pos = [], span[0]
    while pos < span[1]:
        v, pos = read_varint(buf, pos, span[1])
        out.append(v)
    return out


def signed64(v):
    """A varint read as int64 (negative numbers are 10-byte two's complement)."""
    return v - (1 << 64) if v >= 1 << 63 else v


# ----------------------------------------------------------------------------- encoding
def varint(n):
    n = int(n)
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(number, wt):
    return varint(number << 3 | wt)


def len_prefix(number, length):
    """The key and length of a LEN field whose payload (of `length` bytes) follows."""
    return key(number, LEN) + varint(length)


def string_field(number, s):
    data = s.encode("utf-8")
    return len_prefix(number, len(data)) + data


def packed_varints(number, values):
    data = b"".join(varint(v) for v in values)
    return len_prefix(number, len(data)) + data
