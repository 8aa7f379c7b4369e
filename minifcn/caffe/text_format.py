"""Protocol buffers' text format (a .prototxt), read by hand into a tree of Messages.

    msg = parse_file("train.prototxt", "NetParameter")
    for layer in msg.all("layer"):
        layer.get("name"), layer.get("convolution_param").get("num_output", 0)

What is read: fields as `name: value`, messages as `name { ... }` (or `name: { }`, `name < >`),
repeated fields by repetition or as a list `name: [1, 2]`; values are quoted strings (single or
double quotes, C escapes, adjacent strings joined), numbers (decimal, hex, octal, floats with an
exponent or an `f`, inf and nan), enum names and true/false; `#` starts a comment; `,` or `;`
may end a field. Every field is checked against caffe.proto's table (schema.py): an unknown
field, a value of the wrong kind, an enum value the enum lacks or a second value for a field
that is not repeated is refused with file:line:column, as Caffe's own parser would refuse it.

A Message remembers which fields its reader asked for: ``unread()`` lists the others, so a
reader (net.py) can refuse a field it does not implement instead of silently ignoring it.
"""
from __future__ import annotations

import math
import re

from . import schema


class PrototxtError(ValueError):
    """A malformed or unsupported prototxt; the message starts with file:line:column."""


class Field:
    __slots__ = ("name", "value", "line", "col")

    def __init__(self, name, value, line, col):
        self.name, self.value, self.line, self.col = name, value, line, col


class Message:
    """One parsed message: its type name, its fields in file order, where it started."""

    def __init__(self, type_name, path, line, col):
        self.type, self.path, self.line, self.col = type_name, path, line, col
        self.fields: list[Field] = []
        self._read: set[str] = set()

    def where(self, name=None):
        """file:line of a field (the first one of that name) or of the message."""
        f = next((f for f in self.fields if f.name == name), None) if name else None
        line = f.line if f else self.line
        return f"{self.path}:{line}"

    def has(self, name):
        return any(f.name == name for f in self.fields)

    def all(self, name):
        """Every value of a (repeated) field, in file order."""
        self._check(name)
        self._read.add(name)
        return [f.value for f in self.fields if f.name == name]

    def get(self, name, default=None):
        """The value of a field, or default if the file does not set it."""
        values = self.all(name)
        return values[-1] if values else default

    def unread(self):
        """Names of the fields present that nobody asked for."""
        return [f.name for f in self.fields if f.name not in self._read]

    def _check(self, name):
        if schema.field(self.type, name) is None:
            raise KeyError(f"{self.type} has no field {name!r} in the schema")

    def to_dict(self):
        """{field: [values]} with messages as dicts: for comparing two parsers."""
        out = {}
        for f in self.fields:
            v = f.value.to_dict() if isinstance(f.value, Message) else f.value
            out.setdefault(f.name, []).append(v)
        return out

    def __repr__(self):
        return f"Message({self.type}, {len(self.fields)} fields, {self.path}:{self.line})"


# ----------------------------------------------------------------------------- tokens
_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)(?![\w.]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}<>:\[\],;\-])
""", re.X)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "\\": "\\", "'": "'", '"': '"', "?": "?"}


def _tokens(text, path):
    """[(kind, text, line, col)], comments and blanks dropped."""
    out, pos, line, line_start = [], 0, 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            what = "an unterminated string" if ch in "'\"" else f"character {ch!r}"
            raise PrototxtError(f"{path}:{line}:{pos - line_start + 1}: unexpected {what}")
        kind = m.lastgroup
        if kind == "newline":
            line, line_start = line + 1, m.end()
        elif kind not in ("space", "comment"):
            out.append((kind, m.group(), line, pos - line_start + 1))
        pos = m.end()
    out.append(("end", "", line, pos - line_start + 1))
    return out


def _unquote(tok, where):
    body, out, i = tok[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            if not m:
                raise PrototxtError(f"{where}: \\x needs hex digits")
            out.append(chr(int(m.group(), 16)))
            i += 2 + len(m.group())
        elif e in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            out.append(chr(int(m.group(), 8)))
            i += 1 + len(m.group())
        else:
            raise PrototxtError(f"{where}: unknown escape \\{e} in a string")
    return "".join(out)


# ----------------------------------------------------------------------------- values
_BOOLS = {"true": True, "True": True, "t": True, "1": True,
          "false": False, "False": False, "f": False, "0": False}
_INT_RANGE = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1), "uint32": (0, 2**32 - 1)}


def _scalar(typ, sign, kind, text, where):
    """Convert one value token to the field's type."""
    if typ == "string":
        raise PrototxtError(f"{where}: expected a quoted string, got {text!r}")
    if typ == "bool":
        if sign or text not in _BOOLS:
            raise PrototxtError(f"{where}: expected true or false, got {sign}{text}")
        return _BOOLS[text]
    if typ in ("float", "double"):
        low = text.lower()
        if kind == "ident" and low in ("inf", "infinity", "nan"):
            v = math.nan if low == "nan" else math.inf
        elif kind == "number":
            v = float(int(text, 16)) if low.startswith("0x") else float(text.rstrip("fF"))
        else:
            raise PrototxtError(f"{where}: expected a number, got {text!r}")
        return -v if sign else v
    if typ in _INT_RANGE:
        if kind != "number" or re.search(r"[.eEfF]", text) and not text.lower().startswith("0x"):
            raise PrototxtError(f"{where}: expected an integer, got {sign}{text}")
        v = int(text, 16) if text.lower().startswith("0x") else (
            int(text, 8) if len(text) > 1 and text[0] == "0" else int(text))
        v = -v if sign else v
        lo, hi = _INT_RANGE[typ]
        if not lo <= v <= hi:
            raise PrototxtError(f"{where}: {v} is out of range for {typ}")
        return v
    values = schema.ENUMS[typ]                              # an enum
    if kind == "ident" and not sign and text in values:
        return text
    if kind == "number" and text.isdigit() and int(text) in values.values():
        return next(k for k, n in values.items() if n == int(text))
    raise PrototxtError(f"{where}: {sign}{text} is not a value of enum {typ} "
                        f"({', '.join(values)})")


# ----------------------------------------------------------------------------- the parser
class _Parser:
    def __init__(self, text, path):
        self.path, self.toks, self.i = path, _tokens(text, path), 0

    def peek(self):
        return self.toks[self.i]

    def take(self):
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def at(self, tok):
        return f"{self.path}:{tok[2]}:{tok[3]}"

    def expect(self, text):
        tok = self.take()
        if tok[1] != text or tok[0] in ("string", "end"):
            got = "the end of the file" if tok[0] == "end" else repr(tok[1])
            raise PrototxtError(f"{self.at(tok)}: expected {text!r}, got {got}")
        return tok

    def message(self, type_name, close, line, col):
        msg = Message(type_name, self.path, line, col)
        while True:
            tok = self.peek()
            if tok[0] == "end" and close is None or tok[1] == close and tok[0] == "punct":
                self.take()
                return msg
            if tok[0] != "ident":
                got = "the end of the file" if tok[0] == "end" else repr(tok[1])
                raise PrototxtError(f"{self.at(tok)}: expected a field name in {type_name}, "
                                    f"got {got}")
            self.field(msg)

    def field(self, msg):
        name_tok = self.take()
        name, where = name_tok[1], self.at(name_tok)
        spec = schema.field(msg.type, name)
        if spec is None:
            if name in schema.OTHER_FIELDS.get(msg.type, ()):
                raise PrototxtError(f"{where}: field {name!r} of {msg.type} is not supported "
                                    f"by minifcn")
            raise PrototxtError(f"{where}: {msg.type} has no field named {name!r} "
                                f"(caffe.proto)")
        _, typ, repeated = spec
        colon = self.peek()[1] == ":" and self.peek()[0] == "punct"
        if colon:
            self.take()
        if typ in schema.MESSAGES:
            tok = self.take()
            if tok[1] not in ("{", "<") or tok[0] != "punct":
                raise PrototxtError(f"{self.at(tok)}: field {name!r} is a {typ}: expected "
                                    f"'{{', got {tok[1]!r}")
            values = [self.message(typ, "}" if tok[1] == "{" else ">", tok[2], tok[3])]
        elif not colon:
            raise PrototxtError(f"{self.at(self.peek())}: expected ':' after {name!r}")
        elif self.peek()[1] == "[" and self.peek()[0] == "punct":
            if not repeated:
                raise PrototxtError(f"{where}: {name!r} is not repeated: a list is not allowed")
            self.take()
            values = []
            while not (self.peek()[1] == "]" and self.peek()[0] == "punct"):
                values.append(self.value(typ))
                if self.peek()[1] == "," and self.peek()[0] == "punct":
                    self.take()
            self.take()
        else:
            values = [self.value(typ)]
        if not repeated and (msg.has(name) or len(values) > 1):
            raise PrototxtError(f"{where}: {msg.type}.{name} is not repeated but is given "
                                f"twice (first at line {msg.where(name).rsplit(':', 1)[1]})")
        for v in values:
            msg.fields.append(Field(name, v, name_tok[2], name_tok[3]))
        if self.peek()[1] in (",", ";") and self.peek()[0] == "punct":
            self.take()

    def value(self, typ):
        tok = self.take()
        where = self.at(tok)
        if typ == "string":
            if tok[0] != "string":
                raise PrototxtError(f"{where}: expected a quoted string, got {tok[1]!r}")
            parts = [_unquote(tok[1], where)]
            while self.peek()[0] == "string":             # "a" "b" is "ab"
                parts.append(_unquote(self.take()[1], where))
            return "".join(parts)
        sign = ""
        if tok[1] == "-" and tok[0] == "punct":
            sign, tok = "-", self.take()
        if tok[0] not in ("number", "ident"):
            got = "the end of the file" if tok[0] == "end" else repr(tok[1])
            raise PrototxtError(f"{where}: expected a value, got {got}")
        return _scalar(typ, sign, tok[0], tok[1], where)


def parse(text, type_name="NetParameter", path="<string>"):
    """Parse prototxt text as a message of caffe.proto type `type_name`."""
    if type_name not in schema.MESSAGES:
        raise ValueError(f"unknown message type {type_name!r}")
    return _Parser(text, path).message(type_name, None, 1, 1)


def parse_file(path, type_name="NetParameter"):
    """Parse a .prototxt file; a file that is not UTF-8 text is refused by name."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise PrototxtError(f"{path}: is a directory, not a prototxt file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrototxtError(f"{path}: not a text file (byte {e.start} is not UTF-8); a "
                            f"binary .caffemodel is read with minifcn.caffe.read_weights") \
            from None
    return parse(text, type_name, str(path))
