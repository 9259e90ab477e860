"""The streaming reader of .json data files (a JSON list, issue 25): every chunk size decodes
what json.loads decodes, invalid files give json.loads' error (line and column of the whole
file), and a bad first record or an overlong one is refused without reading the file."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathunlearn.data import io as data_io
from pathunlearn.data.io import JsonListReader, load_conversations, read_records
from pathunlearn.errors import DataError

CHUNKS = [1, 2, 3, 7, data_io.JSON_CHUNK]
CONV = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def stream(text: str | bytes, chunk: int) -> list:
    data = text.encode() if isinstance(text, str) else text
    return list(JsonListReader(io.BytesIO(data), "f.json", chunk))


def loads_error(text: str) -> str:
    """The error json.loads gives for ``text``, as the reader words it."""
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(text)
    return f"f.json: invalid JSON at line {e.value.lineno} column {e.value.colno}: {e.value.msg}"


VALID = {
    "escapes": r'[{"a": "\u00e9\u4e2d\"\\\/\b\f\n\r\t", "\u006b": "\u0000x"}]',
    "surrogate_pairs": r'[{"e": "\ud83d\ude00\ud834\udd1e"}, "\ud83d\ude00", "x\udbff\udfffy"]',
    "multibyte": '[{"t": "caf\u00e9 \u4e2d\u6587 \U0001f600 \u20ac"}, "\U0001d11e\U0001d11e"]',
    "nested": '[{"a": {"b": [1, {"c": [[], {}, [[null]]]}]}, "d": []}, [[[{"e": {}}]]]]',
    "numbers": "[0, -0, 1.5, -2.25e+10, 3E-7, 12345678901234567890123, 1e400, -1.0e-400]",
    "literals": "[true, false, null, NaN, Infinity, -Infinity, [NaN], {\"x\": -Infinity}]",
    "whitespace": ' \r\n\t[ \n {"a" :\t1 ,  "b":[ 2 , 3 ] } \r\n,\n\n  "s"  ,\t[ ]\n ] \n\t ',
    "compact": '[{"a":1},{"b":"\u00e9"},[1,2],"x",1.25]',
    "empty": "[]",
    "empty_spaced": " [ \n ] ",
    "long_string": json.dumps(["\u00e9\U0001f600" * 3000 + '"\\' * 100, "z" * 5000]),
    "many": json.dumps([{"messages": CONV, "i": i, "f": i / 7} for i in range(300)]),
}


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("name", list(VALID))
def test_every_chunk_size_decodes_what_json_loads_decodes(name, chunk):
    text = VALID[name]
    assert json.dumps(stream(text, chunk)) == json.dumps(json.loads(text))  # NaN == NaN here


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_byte_order_mark_is_dropped_and_a_second_one_refused(chunk):
    bom = b"\xef\xbb\xbf"
    assert stream(bom + b'[{"a": "\xc3\xa9"}]', chunk) == [{"a": "\u00e9"}]
    with pytest.raises(DataError) as e:
        stream(bom + bom + b"[]", chunk)
    assert str(e.value) == loads_error("\ufeff[]")


INVALID = {
    # (text, the record the error is in, or None when between records)
    "trailing_comma": ('[{"a": 1}, {"b": 2},]', 3),
    "trailing_comma_spaced": ('[{"a": 1},\n  \n ]', 2),
    "missing_bracket": ('[{"a": 1}, {"b": 2}', None),
    "missing_bracket_after_comma": ('[{"a": 1},\n', 2),
    "only_bracket": ("[", 1),
    "garbage_after": ('[{"a": 1}] x', None),
    "second_list_after": ("[1]\n[2]", None),
    "missing_comma": ('[{"a": 1}\n {"b": 2}]', None),
    "empty_file": ("", None),
    "spaces_only": (" \n\t ", None),
    "bad_first_record": ('[{"a" 1}, ' + '{"b": 2}, ' * 50 + "{}]", 1),
    "bad_later_record": ('[{"a": 1},\n{"b": 2},\n {"c": tru}, {}]', 3),
    "unterminated_string": ('[{"a": "abc}]', 1),
    "bad_escape": (r'[{"a": "\x"}]', 1),
    "short_unicode_escape": (r'[{"a": "\u12"}]', 1),
    "bad_unicode_escape": (r'[{"a": "\ud83d\uzzzz"}]', 1),
    "control_character": ('[{"a": "x\ty"}]', 1),
    "single_quotes": ("[{'a': 1}]", 1),
    "number_cut": ("[1.]", None),
    "bare_minus": ("[-]", 1),
    "exponent_without_digits": ("[1e+]", None),
    "object_trailing_comma": ('[{"a": 1,}]', 1),
    "not_json": ("hello", None),
}


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_json_is_json_loads_error_with_the_record(name, chunk):
    text, record = INVALID[name]
    with pytest.raises(DataError) as e:
        stream(text, chunk)
    suffix = f" (record {record})" if record else ""
    assert str(e.value) == loads_error(text) + suffix


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("text,got", [('{"messages": []}', "dict"), ('"x"', "str"), ("3", "int"),
                                      ("null", "NoneType"), (' {"a": [1, 2]} \n', "dict")])
def test_a_top_level_value_that_is_not_a_list_is_named(text, got, chunk):
    with pytest.raises(DataError, match=f"^f.json: a .json data file must hold a list of "
                                        f"records, got {got}$"):
        stream(text, chunk)


@pytest.mark.parametrize("chunk", [1, 3, data_io.JSON_CHUNK])
def test_not_utf8_names_the_files_byte(chunk):
    for data in (b'[{"a": "\xc3\x28"}]', b'[{"a": "ok"}, "\xe4\xb8"]', b"\xff[]",
                 b'[{"a": "\xf0\x9f\x98"', b'\xef\xbb\xbf["\xff"]'):  # a BOM counts too
        with pytest.raises(DataError) as e:
            stream(data, chunk)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as u:
            assert str(e.value) == f"f.json: not UTF-8 text (byte {u.start})"


def test_read_text_names_the_files_byte_after_a_byte_order_mark(tmp_path):
    from pathunlearn.data.io import read_text

    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbfname: caf\xe9\n")
    with pytest.raises(DataError, match=r"c.yaml: not UTF-8 text \(byte 12\)$"):
        read_text(path)


# ---- through load_conversations and read_records: the one-line errors a user sees

def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


_RECORD = json.dumps({"messages": CONV})


@pytest.mark.parametrize("text,message", [
    (f"[{_RECORD}, {_RECORD},]", "invalid JSON at line 1 column 179: Expecting value (record 3)"),
    (f"[{_RECORD}", "invalid JSON at line 1 column 89: Expecting ',' delimiter"),
    (f"[{_RECORD}]\n]", "invalid JSON at line 2 column 1: Extra data"),
    (_RECORD, "a .json data file must hold a list of records, got dict"),
    (json.dumps([{"messages": CONV}] * 2 + [{"messages": CONV, "meta": {"n": "a\ud800"}}]),
     "text 'a' is followed by a lone surrogate (\\ud800), not text (record 3)"),
    (json.dumps([{"messages": CONV}, {"messages": CONV, "meta": json.loads("[" * 40 + "]" * 40)}]),
     "nested deeper than 32 levels (record 2)"),
    (f"[{_RECORD}, " + "[" * 100_000 + "]" * 100_000 + "]",
     "nested deeper than 32 levels (record 2)"),
    (json.dumps([{"messages": CONV}, 7]), "record 2: expected an object, got int"),
], ids=["trailing_comma", "missing_bracket", "garbage_after", "not_a_list", "lone_surrogate",
        "deep40", "deep100000", "not_an_object"])
def test_a_bad_json_file_is_one_line_naming_file_and_record(tmp_path, text, message):
    path = _write(tmp_path, "bad.json", text)
    with pytest.raises(DataError) as e:
        load_conversations(path)
    assert str(e.value) == f"{path}: {message}"


def test_read_records_reads_a_list_file_as_json_loads_does(tmp_path, monkeypatch):
    monkeypatch.setattr(data_io, "JSON_CHUNK", 5)
    text = VALID["many"].replace("}, {", "},\n  {")
    assert read_records(_write(tmp_path, "a.json", text)) == json.loads(text)
    assert read_records(_write(tmp_path, "b.json", text), json_lines_ok=True) == json.loads(text)


class _Counting:
    """A file that counts the bytes and the reads asked of it."""
    read_bytes = 0
    reads = 0

    def __init__(self, f):
        self.f = f

    def read(self, size=-1):
        data = self.f.read(size)
        type(self).read_bytes += len(data)
        type(self).reads += 1
        return data

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _counting_opens(monkeypatch):
    _Counting.read_bytes = _Counting.reads = 0
    real = data_io.open_regular
    monkeypatch.setattr(data_io, "open_regular", lambda *a, **k: _Counting(real(*a, **k)))
    return _Counting


def test_a_bad_first_record_is_refused_after_one_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(data_io, "JSON_CHUNK", 4096)
    counted = _counting_opens(monkeypatch)
    bad = {"messages": [{"role": "user", "content": "q"}]}  # no assistant message
    path = _write(tmp_path, "big.json", json.dumps([bad] + [{"messages": CONV}] * 40_000))
    assert path.stat().st_size > 2_000_000
    with pytest.raises(DataError, match=r"record 1: field 'messages': no assistant message"):
        load_conversations(path)
    assert counted.read_bytes <= 2 * 4096


def test_a_record_over_the_limit_is_refused_without_reading_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(data_io, "MAX_LINE_BYTES", 10_000)
    monkeypatch.setattr(data_io, "JSON_CHUNK", 1000)
    counted = _counting_opens(monkeypatch)
    good = {"messages": CONV}
    tail = [good] * 20_000
    for big in ({"messages": CONV, "pad": "x" * 20_000},  # too long in characters
                {"messages": CONV, "pad": "\U0001f600" * 4000}):  # 16,000 bytes, 4,000 chars
        path = _write(tmp_path, "long.json", json.dumps([good, big] + tail, ensure_ascii=False))
        counted.read_bytes = 0
        with pytest.raises(DataError, match=r"^\S+long.json: record 2 is longer than 0 MiB$"):
            read_records(path)
        assert counted.read_bytes < 40_000 < path.stat().st_size


def test_a_long_record_costs_a_few_reads_not_one_per_chunk(tmp_path, monkeypatch):
    # the read size doubles while a record is incomplete: linear time, not quadratic
    monkeypatch.setattr(data_io, "JSON_CHUNK", 1)
    counted = _counting_opens(monkeypatch)
    text = json.dumps([{"messages": CONV, "pad": "y" * 1_000_000}, {"messages": CONV}])
    assert read_records(_write(tmp_path, "one.json", text)) == json.loads(text)
    assert counted.reads < 200


def test_memory_is_bounded_by_a_record_not_the_file():
    text = json.dumps([{"messages": CONV, "i": i, "pad": "z" * 200} for i in range(20_000)])
    data = text.encode()
    assert len(data) > 5_000_000
    tracemalloc.start()
    try:
        count = sum(1 for _ in JsonListReader(io.BytesIO(data), "f.json", 65536))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 1_000_000  # a few chunks, not the 5 MB of text or its 20,000 records


# ---- differential: random lists and random damage, every chunk size

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_scalar = st.none() | st.booleans() | st.integers(-10**30, 10**30) | \
    st.floats(allow_nan=False) | _text
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_text, inner, max_size=4), max_leaves=12)
_separators = st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t"), ("\r\n,  ", ":\n")])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.lists(_json, max_size=6), ascii_only=st.booleans(), separators=_separators,
       indent=st.sampled_from([None, 1, "\t"]), chunk=st.integers(1, 9), edit=st.integers(0),
       damage=st.sampled_from(["", "delete", "insert", "replace"]),
       char=st.sampled_from(list(',:[]{}"\\ 0e.-tnu') + ["\u00e9", "\U0001f600"]))
def test_random_lists_and_damage_read_as_json_loads_reads_them(value, ascii_only, separators,
                                                               indent, chunk, edit, damage,
                                                               char):
    text = json.dumps(value, ensure_ascii=ascii_only, separators=separators, indent=indent)
    if damage:  # one character deleted, inserted or replaced
        at = edit % (len(text) + (damage == "insert"))
        text = text[:at] + (char if damage != "delete" else "") + \
            text[at + (damage != "insert"):]
    try:
        expected = json.loads(text)
    except json.JSONDecodeError:
        with pytest.raises(DataError) as e:
            stream(text, chunk)
        assert str(e.value).startswith(loads_error(text))
        return
    if isinstance(expected, list):
        assert json.dumps(stream(text, chunk)) == json.dumps(expected)
    else:
        with pytest.raises(DataError, match="must hold a list of records"):
            stream(text, chunk)
