"""pyslirp.tomlsubset: the TOML reader used where neither tomllib nor tomli is installed.

It must read pyslirp.toml, every configuration the tests and the end-to-end harness write, and the TOML in the
tests' own sources exactly as tomllib (or tomli) does; reject what TOML rejects with one line that names the
position; and say plainly what it does not support.  A seeded fuzz run over mutations of pyslirp.toml checks that
only TOMLDecodeError escapes and that whatever it accepts, the reference parser accepts with the same value.
"""

import ast
import glob
import os
import random
import sys

import pytest

from pyslirp import tomlsubset
from pyslirp.tomlsubset import TOMLDecodeError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

try:
    import tomllib as reference  # novermin (3.11+)
except ImportError:
    reference = pytest.importorskip("tomli")


def same(text):
    assert tomlsubset.loads(text) == reference.loads(text)


def test_the_example_file_reads_as_tomllib_reads_it():
    with open(os.path.join(ROOT, "pyslirp.toml"), "rb") as f:
        data = f.read()
    with open(os.path.join(ROOT, "pyslirp.toml"), "rb") as f:
        got = tomlsubset.load(f)
    assert got == reference.loads(data.decode("utf-8"))
    assert got["services"]["22"]["port"] == 22 and got["ppp"]["secrets"] == {}


def _toml_strings_in_tests():
    """String constants in the tests' sources that the reference parser reads as a non-empty document."""
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "test_*.py"))):
        if os.path.basename(path) == "test_tomlsubset.py":
            continue
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            value = getattr(node, "value", None) if type(node).__name__ == "Constant" else getattr(node, "s", None)
            if not isinstance(value, str) or "=" not in value or "\n" not in value:
                continue
            try:
                parsed = reference.loads(value)
            except (reference.TOMLDecodeError, ValueError):
                continue
            if parsed:
                found.append((os.path.basename(path), value))
    return found


UNSUPPORTED = ('"""', "'''", "[[")


def test_every_configuration_in_the_tests_reads_as_tomllib_reads_it():
    corpus = _toml_strings_in_tests()
    assert len(corpus) >= 30, len(corpus)
    compared = 0
    for name, text in corpus:
        if any(u in text for u in UNSUPPORTED):
            with pytest.raises(TOMLDecodeError):
                tomlsubset.loads(text)
            continue
        assert tomlsubset.loads(text) == reference.loads(text), (name, text)
        compared += 1
    assert compared >= 30


def test_the_harness_configurations_read_as_tomllib_reads_them():
    from e2e import uml
    configs = [
        {"services": {"5001": {"host": "127.0.0.1", "port": 40001, "name": "sink"}}, "serial": {"baudrate": 9600}},
        {"ppp": {"require_auth": "pap", "secrets": {"alice": "correct horse", "bob \"b\"": "x\\y"}},
         "limits": {"max_connections": 1064, "max_per_service": 1064}, "logging": {"connection_log": False}},
        {"outbound": {"enabled": True, "allow": ["10.1.0.0/16", "127.0.0.1"], "deny": []},
         "dns": {"upstream": ["127.0.0.1:5353"]}, "tcp": {"rcvbuf": 65536, "keepalive": 0}},
    ]
    for cfg in configs:
        text = uml.toml_dumps(cfg)
        assert tomlsubset.loads(text) == reference.loads(text) == cfg


def test_values():
    text = """
# a comment
top = "t"            # inline comment
[a]
s = "tab\\there \\"q\\" \\\\ \\u00e9 \\U0001F600"
lit = 'C:\\path\\n'
i = [0, +7, -12, 1_000, 0x1F, 0o17, 0b101]
f = [1.5, -0.25, 3e2, 6.02E+23, 1_0.5, inf, -inf]
b = [true, false]
empty = []
nested = [[1, 2], ["x"], [], {k = 1}]
multi = [
    "one",   # first
    "two",
]
t = { x = 1, y.z = "w", "q k" = [1] }
e = {}
dotted.key = 1
dotted.other = 2
"quoted key" = 'v'
'single' = 3
[a.sub]
x = 1
[b."c d".e]
y = 2
"""
    same(text)
    got = tomlsubset.loads(text)
    assert got["a"]["s"] == 'tab\there "q" \\ \u00e9 \U0001F600'
    assert got["a"]["i"] == [0, 7, -12, 1000, 31, 15, 5]
    assert got["b"]["c d"]["e"]["y"] == 2
    nan = tomlsubset.loads("x = nan\ny = -nan\n")
    assert nan["x"] != nan["x"] and nan["y"] != nan["y"]


def test_tables_made_implicitly_may_be_defined_later():
    same("[a.b]\nx = 1\n[a]\ny = 2\n")
    same("[a]\n[a.b]\n[a.c]\n")
    same("x = 1\r\n[t]\r\ny = 2\r\n")


BAD = [
    ("[serial\nport = 1\n", "expected ']' at the end of the table header (at line 1, column 8)"),
    ("[a]\nx = 1\n[a]\n", "table [a] is defined twice (at line 3, column 1)"),
    ("x = 1\nx = 2\n", "key x is defined twice (at line 2, column 1)"),
    ("x = 1\nx.y = 2\n", "x is already defined as a value (at line 2, column 1)"),
    ("a = {b = 1}\n[a]\n", "a is already defined as a value (at line 2, column 1)"),
    ("a = {b = 1}\na.c = 2\n", "a is already defined as a value (at line 2, column 1)"),
    ("[a]\nb.c = 1\n[a.b]\n", "table [a.b] is defined twice (at line 3, column 1)"),
    ("[a.b]\nx = 1\n[a]\nb.y = 2\n", "table [a.b] is defined by a header: a dotted key cannot add to it "
                                     "(at line 4, column 1)"),
    ('x = "abc\n', "unterminated string (at line 1, column 5)"),
    ("x = 'abc\n'\n", "unterminated string (at line 1, column 5)"),
    ("x = 1 2\n", "expected the end of the line, found '2' (at line 1, column 7)"),
    ("x = [1, 2\n", "unterminated array (at line 1, column 5)"),
    ("x = [1 2]\n", "expected ',' or ']' in an array (at line 1, column 8)"),
    ("x = {a = 1,}\n", "expected a key, found '}' (at line 1, column 12)"),
    ("x = {a = 1\n", "expected ',' or '}' in an inline table (which stays on one line) (at line 1, column 11)"),
    ("x = \n", "expected a value (at line 1, column 5)"),
    ("x == 1\n", "invalid value starting with '=' (at line 1, column 4)"),
    ("x = 01\n", "invalid value starting with '0' (at line 1, column 5)"),
    ("x = 1.\n", "invalid value starting with '1' (at line 1, column 5)"),
    ("x = 1__0\n", "invalid value starting with '1' (at line 1, column 5)"),
    ("x = True\n", "invalid value starting with 'T' (at line 1, column 5)"),
    ('x = "a\\qb"\n', "invalid escape sequence \\q in a string (at line 1, column 7)"),
    ('x = "\\uD800"\n', "escape \\uD800 is not a Unicode scalar value (at line 1, column 6)"),
    ('x = "a\x01"\n', "control character in a string (at line 1, column 7)"),
    ("= 1\n", "expected a key, found '=' (at line 1, column 1)"),
    ("x\n", "expected '=' after a key (at line 1, column 2)"),
    ("[[a]]\n", "arrays of tables ([[...]]) are not supported here (at line 1, column 2)"),
    ('x = """a"""\n', "multi-line strings are not supported here (at line 1, column 5)"),
    ("x = '''a'''\n", "multi-line strings are not supported here (at line 1, column 5)"),
    ("x = 1979-05-27\n", "dates and times are not supported here (at line 1, column 5)"),
    ("x = 07:32:00\n", "dates and times are not supported here (at line 1, column 5)"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_errors_are_one_line_with_the_position(text, message):
    with pytest.raises(TOMLDecodeError) as info:
        tomlsubset.loads(text)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    if not any(u in text for u in UNSUPPORTED) and "1979" not in text and "07:32" not in text:
        with pytest.raises(reference.TOMLDecodeError):      # TOML itself rejects it too
            reference.loads(text)


def test_load_wants_a_binary_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("x = 1\n")
    with open(str(path)) as f:
        with pytest.raises(TypeError):
            tomlsubset.load(f)
    with pytest.raises(TypeError):
        tomlsubset.loads(b"x = 1")


def test_fuzz_mutations_of_the_example_only_decode_errors_and_agreement():
    with open(os.path.join(ROOT, "pyslirp.toml")) as f:
        base = f.read()
    rng = random.Random(11)
    alphabet = "[]{}=,.\"'#\n \t\\01xe+-_:abtrufl"
    agreed = rejected = 0
    for _ in range(1500):
        chars = list(base)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.4:
                chars[i] = rng.choice(alphabet)
            elif op < 0.7:
                del chars[i]
            else:
                chars.insert(i, rng.choice(alphabet))
        text = "".join(chars)
        try:
            got = tomlsubset.loads(text)
        except TOMLDecodeError as exc:
            assert "\n" not in str(exc) and "(at line " in str(exc)
            rejected += 1
            continue
        assert got == reference.loads(text), text       # what we accept, TOML reads the same way
        agreed += 1
    assert agreed > 100 and rejected > 100
