"""A small TOML reader for the subset pyslirp's configuration files use.

Theory of operation: :func:`compat.toml_module` hands this module out only when neither ``tomllib`` (Python
3.11+) nor ``tomli`` is there, e.g. on an air-gapped PyPy 3.9 without pip.  It has the same three names
(``loads``, ``load``, ``TOMLDecodeError``) and, for the documents it accepts, the same result as ``tomllib``.

One recursive-descent pass over the text with a cursor: the document is a sequence of lines, each empty, a
comment, a table header ``[a.b."c"]`` or a key/value pair ``key = value`` (dotted keys allowed); values are basic
and literal strings on one line, integers (decimal with ``_``, ``0x``, ``0o``, ``0b``), floats (``inf``, ``nan``),
booleans, arrays (over several lines, comments and a trailing comma allowed) and inline tables.  TOML 1.0's rules
on tables are kept: a key or a table is defined once, an inline table is closed, a table made implicitly by a
header's path may be defined later.

Not supported, with an error that says so: arrays of tables ``[[...]]``, multi-line strings and dates/times.
Every error is a :class:`TOMLDecodeError` (a ``ValueError``, as tomllib's) whose message is one line ending in
``(at line L, column C)``.
"""

import re

__all__ = ["loads", "load", "TOMLDecodeError"]


class TOMLDecodeError(ValueError):
    """The document is not TOML, or not the subset read here; one line, with the position."""


BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_DEC = r"(?:0|[1-9](?:_?[0-9])*)"
_DIGITS = r"[0-9](?:_?[0-9])*"
INTEGER = re.compile(r"[+-]?" + _DEC + r"(?![0-9A-Za-z_.:+-])")
PREFIXED = re.compile(r"0(?:x[0-9A-Fa-f](?:_?[0-9A-Fa-f])*|o[0-7](?:_?[0-7])*|b[01](?:_?[01])*)(?![0-9A-Za-z_])")
FLOAT = re.compile(r"[+-]?" + _DEC + r"(?:\.(?:" + _DIGITS + r")(?:[eE][+-]?" + _DIGITS + r")?|[eE][+-]?"
                   + _DIGITS + r")(?![0-9A-Za-z_.])")
SPECIAL_FLOAT = re.compile(r"[+-]?(?:inf|nan)(?![0-9A-Za-z_])")
DATE_LIKE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{2}:[0-9]{2}")
ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}
WS = " \t"


def loads(text):
    """Parse ``text`` (str) into a dict, as ``tomllib.loads`` does."""
    if not isinstance(text, str):
        raise TypeError("expected str, got %s" % type(text).__name__)
    return _Parser(text).document()


def load(fp):
    """Parse a binary file object, as ``tomllib.load`` does."""
    data = fp.read()
    try:
        text = data.decode("utf-8")
    except AttributeError:
        raise TypeError("file must be opened in binary mode")
    return loads(text)


class _Parser(object):
    def __init__(self, text):
        self.text = text.replace("\r\n", "\n")
        self.pos = 0
        self.root = {}
        self.defined = set()        # ids of tables defined by a header or a dotted key
        self.headers = {}           # id -> path of the tables defined by a header (no dotted key adds to them)
        self.closed = set()         # ids of inline tables and arrays (nothing may add to them)

    # ------------------------------------------------------------------ errors and low-level reading

    def error(self, problem, pos=None):
        pos = self.pos if pos is None else pos
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return TOMLDecodeError("%s (at line %d, column %d)" % (problem, line, col))

    def peek(self):
        return self.text[self.pos:self.pos + 1]

    def skip_ws(self):
        n = len(self.text)
        while self.pos < n and self.text[self.pos] in WS:
            self.pos += 1

    def skip_comment(self):
        if self.peek() == "#":
            end = self.text.find("\n", self.pos)
            end = len(self.text) if end < 0 else end
            for ch in self.text[self.pos + 1:end]:
                if ch != "\t" and (ch < " " or ch == "\x7f"):
                    raise self.error("control character in a comment")
            self.pos = end

    def end_of_line(self):
        """Only whitespace and a comment may follow a header or a value on its line."""
        self.skip_ws()
        self.skip_comment()
        ch = self.peek()
        if ch == "\n":
            self.pos += 1
        elif ch:
            raise self.error("expected the end of the line, found %r" % ch)

    # ------------------------------------------------------------------ the document

    def document(self):
        table = self.root
        while True:
            self.skip_ws()
            self.skip_comment()
            ch = self.peek()
            if not ch:
                return self.root
            if ch == "\n":
                self.pos += 1
            elif ch == "[":
                table = self.header()
            else:
                self.key_value(table)
                self.end_of_line()

    def header(self):
        start = self.pos
        self.pos += 1
        if self.peek() == "[":
            raise self.error("arrays of tables ([[...]]) are not supported here")
        self.skip_ws()
        path = self.key()
        self.skip_ws()
        if self.peek() != "]":
            raise self.error("expected ']' at the end of the table header")
        self.pos += 1
        table = self.root
        for i, name in enumerate(path):
            if name not in table:
                table[name] = {}
            table = table[name]
            if not isinstance(table, dict) or id(table) in self.closed:
                raise self.error("%s is already defined as a value" % _dotted(path[:i + 1]), start)
        if id(table) in self.defined:
            raise self.error("table [%s] is defined twice" % _dotted(path), start)
        self.defined.add(id(table))
        self.headers[id(table)] = path
        self.end_of_line()
        return table

    def key_value(self, table):
        start = self.pos
        path = self.key()
        self.skip_ws()
        if self.peek() != "=":
            raise self.error("expected '=' after a key")
        self.pos += 1
        self.skip_ws()
        value = self.value()
        for i, name in enumerate(path[:-1]):
            if name not in table:
                table[name] = {}
                self.defined.add(id(table[name]))
            table = table[name]
            if not isinstance(table, dict) or id(table) in self.closed:
                raise self.error("%s is already defined as a value" % _dotted(path[:i + 1]), start)
            if id(table) in self.headers:
                raise self.error("table [%s] is defined by a header: a dotted key cannot add to it"
                                 % _dotted(self.headers[id(table)]), start)
        if path[-1] in table:
            raise self.error("key %s is defined twice" % _dotted(path), start)
        table[path[-1]] = value

    def key(self):
        """A dotted key: [part, ...]."""
        parts = [self.simple_key()]
        while True:
            self.skip_ws()
            if self.peek() != ".":
                return parts
            self.pos += 1
            self.skip_ws()
            parts.append(self.simple_key())

    def simple_key(self):
        ch = self.peek()
        if ch == '"':
            return self.basic_string()
        if ch == "'":
            return self.literal_string()
        m = BARE_KEY.match(self.text, self.pos)
        if not m:
            raise self.error("expected a key, found %r" % ch if ch else "expected a key, found the end")
        self.pos = m.end()
        return m.group()

    # ------------------------------------------------------------------ values

    def value(self):
        ch = self.peek()
        if ch == '"':
            return self.basic_string()
        if ch == "'":
            return self.literal_string()
        if ch == "[":
            return self.array()
        if ch == "{":
            return self.inline_table()
        text = self.text
        for word, result in (("true", True), ("false", False)):
            if text.startswith(word, self.pos) and not BARE_KEY.match(text, self.pos + len(word)):
                self.pos += len(word)
                return result
        if DATE_LIKE.match(text, self.pos):
            raise self.error("dates and times are not supported here")
        m = FLOAT.match(text, self.pos)
        if m:
            self.pos = m.end()
            return float(m.group().replace("_", ""))
        m = SPECIAL_FLOAT.match(text, self.pos)
        if m:
            self.pos = m.end()
            return float(m.group())
        m = PREFIXED.match(text, self.pos)
        if m:
            self.pos = m.end()
            return int(m.group()[2:].replace("_", ""), {"x": 16, "o": 8, "b": 2}[m.group()[1]])
        m = INTEGER.match(text, self.pos)
        if m:
            self.pos = m.end()
            return int(m.group().replace("_", ""))
        if not ch or ch == "\n" or ch == "#":
            raise self.error("expected a value")
        raise self.error("invalid value starting with %r" % ch)

    def basic_string(self):
        start = self.pos
        if self.text.startswith('"""', self.pos):
            raise self.error("multi-line strings are not supported here")
        self.pos += 1
        out = []
        text = self.text
        while True:
            ch = text[self.pos:self.pos + 1]
            if not ch or ch == "\n":
                raise self.error("unterminated string", start)
            self.pos += 1
            if ch == '"':
                return "".join(out)
            if ch == "\\":
                esc = text[self.pos:self.pos + 1]
                self.pos += 1
                if esc in ESCAPES:
                    out.append(ESCAPES[esc])
                elif esc in ("u", "U"):
                    n = 4 if esc == "u" else 8
                    digits = text[self.pos:self.pos + n]
                    if len(digits) != n or not re.match(r"[0-9A-Fa-f]+$", digits):
                        raise self.error("invalid \\%s escape" % esc, self.pos - 2)
                    code = int(digits, 16)
                    if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                        raise self.error("escape \\%s%s is not a Unicode scalar value" % (esc, digits),
                                         self.pos - 2)
                    out.append(chr(code))
                    self.pos += n
                else:
                    raise self.error("invalid escape sequence \\%s in a string" % esc, self.pos - 2)
            elif ch != "\t" and (ch < " " or ch == "\x7f"):
                raise self.error("control character in a string", self.pos - 1)
            else:
                out.append(ch)

    def literal_string(self):
        start = self.pos
        if self.text.startswith("'''", self.pos):
            raise self.error("multi-line strings are not supported here")
        end = self.text.find("'", self.pos + 1)
        newline = self.text.find("\n", self.pos + 1)
        if end < 0 or 0 <= newline < end:
            raise self.error("unterminated string", start)
        body = self.text[self.pos + 1:end]
        for ch in body:
            if ch != "\t" and (ch < " " or ch == "\x7f"):
                raise self.error("control character in a string", start)
        self.pos = end + 1
        return body

    def skip_array_space(self):
        """Whitespace, newlines and comments between an array's values."""
        while True:
            self.skip_ws()
            self.skip_comment()
            if self.peek() != "\n":
                return
            self.pos += 1

    def array(self):
        start = self.pos
        self.pos += 1
        items = []
        while True:
            self.skip_array_space()
            ch = self.peek()
            if ch == "]":
                self.pos += 1
                break
            if not ch:
                raise self.error("unterminated array", start)
            items.append(self.value())
            self.skip_array_space()
            ch = self.peek()
            if not ch:
                raise self.error("unterminated array", start)
            if ch == ",":
                self.pos += 1
            elif ch == "]":
                self.pos += 1
                break
            else:
                raise self.error("expected ',' or ']' in an array")
        self.closed.add(id(items))
        return items

    def inline_table(self):
        self.pos += 1
        table = {}
        self.skip_ws()
        if self.peek() == "}":
            self.pos += 1
        else:
            while True:
                self.skip_ws()
                self.key_value(table)
                self.skip_ws()
                ch = self.peek()
                if ch == ",":
                    self.pos += 1
                elif ch == "}":
                    self.pos += 1
                    break
                else:
                    raise self.error("expected ',' or '}' in an inline table (which stays on one line)")
        self._close(table)
        return table

    def _close(self, table):
        self.closed.add(id(table))
        for v in table.values():
            if isinstance(v, dict):
                self._close(v)


def _dotted(path):
    return ".".join(p if BARE_KEY.fullmatch(p) else '"%s"' % p for p in path)
