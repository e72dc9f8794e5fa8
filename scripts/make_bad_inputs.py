"""Write the fixed corpus of malformed inputs files, tests/data/bad/, and its manifest.

Each file is one bad (or merely unusual) inputs file for a model taking inputs of shape
``[3]`` (float32 unless the manifest says int64); ``expected.json`` says what reading it
must give: an error whose one line names the file and holds ``message``, or ``rows``
inputs read correctly. tests/test_hostile.py reads every file through
``causalmad.inputs.read_inputs`` and (float32 ones) through ``causalmad score``.

To add a case, add it to CASES below and run::

    python scripts/make_bad_inputs.py
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "bad"


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def pt(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class Marker:
    """Unpickled without restrictions, this would create the folder ``causalmad-marker``."""

    def __reduce__(self):
        import os

        return (os.makedirs, ("causalmad-marker",))


GOOD = b"[1.0, 2.0, 0.0]\n"
GOOD_NPY = npy(np.array([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]], dtype=np.float32))
GOOD_PT = pt(torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]]))
RANDOM = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
ZIP = io.BytesIO()
with zipfile.ZipFile(ZIP, "w") as z:
    z.writestr("a.npy", GOOD_NPY)

# (file name, class, contents, dtype, expected: error message part, or the number of rows read)
CASES: list[tuple[str, str, bytes, str, str | int]] = [
    # JSON lines: encoding and framing
    (
        "binary_ff.jsonl",
        "JSON lines: bytes",
        b"\xff\xfe[1, 2, 0]\n",
        "float32",
        "line 1: not UTF-8 text (byte 0xff",
    ),
    (
        "latin1_id.jsonl",
        "JSON lines: bytes",
        b'{"input": [1, 2, 0], "id": "caf\xe9"}\n',
        "float32",
        "line 1: not UTF-8 text (byte 0xe9",
    ),
    ("random_bytes.jsonl", "JSON lines: bytes", RANDOM, "float32", "line 1: not UTF-8 text"),
    ("utf16.jsonl", "JSON lines: bytes", "[1, 2, 0]\n".encode("utf-16"), "float32", "line 1: not UTF-8 text"),
    (
        "gzip.jsonl",
        "JSON lines: bytes",
        gzip.compress(GOOD * 3, mtime=0),
        "float32",
        "line 1: not UTF-8 text",
    ),
    ("nul_byte.jsonl", "JSON lines: bytes", b"[1, 2, 0]\x00\n", "float32", "line 1: not valid JSON"),
    (
        "second_line_binary.jsonl",
        "JSON lines: bytes",
        GOOD + b"[1, \x80, 0]\n",
        "float32",
        "line 2: not UTF-8 text (byte 0x80 at column 5)",
    ),
    (
        "truncated_array.jsonl",
        "JSON lines: truncated",
        GOOD + b"[1.0, 2",
        "float32",
        "line 2: not valid JSON",
    ),
    (
        "truncated_string.jsonl",
        "JSON lines: truncated",
        b'{"input": [1, 2, 0], "id": "ab',
        "float32",
        "line 1: not valid JSON",
    ),
    (
        "truncated_object.jsonl",
        "JSON lines: truncated",
        b'{"input": [1, 2, 0]',
        "float32",
        "line 1: not valid JSON",
    ),
    (
        "cr_only_newlines.jsonl",
        "JSON lines: framing",
        b"[1, 2, 0]\r[1, 2, 0]\r",
        "float32",
        "line 1: not valid JSON (Extra data",
    ),
    (
        "whole_array.json",
        "JSON lines: framing",
        b"[\n [1, 2, 0],\n [3, 4, 0]\n]\n",
        "float32",
        "line 1: not valid JSON",
    ),
    ("trailing_comma.jsonl", "JSON lines: framing", b"[1, 2, 0,]\n", "float32", "line 1: not valid JSON"),
    (
        "single_quotes.jsonl",
        "JSON lines: framing",
        b"{'input': [1, 2, 0]}\n",
        "float32",
        "line 1: not valid JSON",
    ),
    ("comment.jsonl", "JSON lines: framing", b"# my inputs\n" + GOOD, "float32", "line 1: not valid JSON"),
    ("empty.jsonl", "JSON lines: framing", b"", "float32", "no inputs in the file"),
    ("blank_lines.jsonl", "JSON lines: framing", b"\n  \n\t\n", "float32", "no inputs in the file"),
    # JSON lines: nesting and shape
    (
        "nested_2000.jsonl",
        "JSON lines: nesting",
        b"[" * 2000 + b"]" * 2000 + b"\n",
        "float32",
        "line 1: nested too deeply",
    ),
    (
        "nested_20000.jsonl",
        "JSON lines: nesting",
        b"[" * 20000 + b"]" * 20000 + b"\n",
        "float32",
        "line 1: nested too deeply",
    ),
    (
        "nested_in_object.jsonl",
        "JSON lines: nesting",
        b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}\n",
        "float32",
        "line 1: nested too deeply",
    ),
    (
        "nested_40.jsonl",
        "JSON lines: nesting",
        b"[" * 40 + b"1" + b"]" * 40 + b"\n",
        "float32",
        "line 1: bad input: it is nested more than 32 lists deep",
    ),
    ("nested_4.jsonl", "JSON lines: shape", b"[[[[1]]]]\n", "float32", "it has shape (1, 1, 1, 1)"),
    (
        "ragged.jsonl",
        "JSON lines: shape",
        b"[[1], [2, 3], 0]\n",
        "float32",
        "its rows have different lengths",
    ),
    ("too_short.jsonl", "JSON lines: shape", b"[1, 2]\n", "float32", "it has shape (2,)"),
    ("too_long.jsonl", "JSON lines: shape", b"[1, 2, 0, 4]\n", "float32", "it has shape (4,)"),
    ("empty_array.jsonl", "JSON lines: shape", b"[]\n", "float32", "it has shape (0,)"),
    ("scalar_line.jsonl", "JSON lines: shape", b"5\n", "float32", "expected a JSON array or an object"),
    ("string_line.jsonl", "JSON lines: shape", b'"hello"\n', "float32", "expected a JSON array or an object"),
    ("null_line.jsonl", "JSON lines: shape", b"null\n", "float32", "expected a JSON array or an object"),
    # JSON lines: numbers
    (
        "int_overflow.jsonl",
        "JSON lines: numbers",
        b"[99999999999999999999999, 1, 0]\n",
        "int64",
        "beyond int64's range",
    ),
    (
        "int_overflow_negative.jsonl",
        "JSON lines: numbers",
        b"[1, -99999999999999999999999, 0]\n",
        "int64",
        "beyond int64's range",
    ),
    (
        "int_2_pow_63.jsonl",
        "JSON lines: numbers",
        b"[9223372036854775808, 1, 0]\n",
        "int64",
        "beyond int64's range",
    ),
    (
        "int_5000_digits.jsonl",
        "JSON lines: numbers",
        b"[" + b"7" * 5000 + b", 1, 0]\n",
        "float32",
        "line 1: not valid JSON (Exceeds the limit",
    ),
    (
        "float_beyond_float32.jsonl",
        "JSON lines: numbers",
        b"[1e39, 1, 0]\n",
        "float32",
        "beyond float32's range",
    ),
    (
        "int_beyond_float32.jsonl",
        "JSON lines: numbers",
        b"[1" + b"0" * 40 + b", 1, 0]\n",
        "float32",
        "beyond float32's range",
    ),
    ("float_1e400.jsonl", "JSON lines: numbers", b"[1e400, 1, 0]\n", "float32", "it holds inf"),
    ("nan.jsonl", "JSON lines: numbers", b"[NaN, 1, 0]\n", "float32", "it holds nan"),
    ("minus_infinity.jsonl", "JSON lines: numbers", b"[-Infinity, 1, 0]\n", "float32", "it holds -inf"),
    ("float_token.jsonl", "JSON lines: numbers", b"[1.5, 2, 0]\n", "int64", "this model takes integers"),
    ("bool_value.jsonl", "JSON lines: numbers", b"[true, 1, 0]\n", "float32", "it holds true, not a number"),
    ("null_value.jsonl", "JSON lines: numbers", b"[null, 1, 0]\n", "float32", "it holds null, not a number"),
    ("string_value.jsonl", "JSON lines: numbers", b'["1", 2, 0]\n', "float32", 'it holds "1", not a number'),
    ("object_value.jsonl", "JSON lines: numbers", b'[{"a": 1}, 2, 0]\n', "float32", "not a number"),
    # JSON lines: fields and ids
    ("no_input_field.jsonl", "JSON lines: fields and ids", b'{"id": 4}\n', "float32", "has no 'input' field"),
    (
        "misspelt_field.jsonl",
        "JSON lines: fields and ids",
        b'{"inputs": [1, 2, 0]}\n',
        "float32",
        "unknown field(s) ['inputs']",
    ),
    (
        "id_list.jsonl",
        "JSON lines: fields and ids",
        b'{"input": [1, 2, 0], "id": [1]}\n',
        "float32",
        "'id' must be a string or a number",
    ),
    (
        "id_bool.jsonl",
        "JSON lines: fields and ids",
        b'{"input": [1, 2, 0], "id": true}\n',
        "float32",
        "'id' must be a string or a number",
    ),
    (
        "id_nan.jsonl",
        "JSON lines: fields and ids",
        b'{"input": [1, 2, 0], "id": NaN}\n',
        "float32",
        "'id' is nan; an id must be a string or a finite number",
    ),
    (
        "id_infinity.jsonl",
        "JSON lines: fields and ids",
        b'{"input": [1, 2, 0], "id": 1e999}\n',
        "float32",
        "'id' is inf",
    ),
    (
        "id_lone_surrogate.jsonl",
        "JSON lines: fields and ids",
        b'{"input": [1, 2, 0], "id": "\\ud800"}\n',
        "float32",
        "'id' holds a lone surrogate",
    ),
    # JSON lines read correctly
    ("ok_byte_order_mark.jsonl", "JSON lines: unusual but valid", b"\xef\xbb\xbf" + GOOD, "float32", 1),
    ("ok_crlf.jsonl", "JSON lines: unusual but valid", b"[1, 2, 0]\r\n[3, 4, 0]\r\n", "float32", 2),
    ("ok_blank_lines_between.jsonl", "JSON lines: unusual but valid", GOOD + b"\n\n" + GOOD, "float32", 2),
    (
        "ok_big_integer_id.jsonl",
        "JSON lines: unusual but valid",
        b'{"input": [1, 2, 0], "id": 123456789012345678901234567890}\n',
        "float32",
        1,
    ),
    (
        "ok_unicode_id.jsonl",
        "JSON lines: unusual but valid",
        '{"input": [1, 2, 0], "id": "caf\u00e9 \u65e5\u672c"}\n'.encode(),
        "float32",
        1,
    ),
    ("ok_integers_for_floats.jsonl", "JSON lines: unusual but valid", b"[1, 2, 0]\n", "float32", 1),
    ("ok_no_final_newline.jsonl", "JSON lines: unusual but valid", GOOD + b"[3, 4, 0]", "float32", 2),
    # .npy
    ("truncated_data.npy", ".npy", GOOD_NPY[:-5], "float32", "not a NumPy array file, or a damaged one"),
    ("truncated_header.npy", ".npy", GOOD_NPY[:40], "float32", "not a NumPy array file, or a damaged one"),
    ("empty.npy", ".npy", b"", "float32", "not a NumPy array file, or a damaged one"),
    ("text.npy", ".npy", b"hello world\n", "float32", "not a NumPy array file, or a damaged one"),
    (
        "header_corrupt.npy",
        ".npy",
        GOOD_NPY.replace(b"'shape': (2, 3)", b"'shape': (2, 3"),
        "float32",
        "not a NumPy array file, or a damaged one",
    ),
    (
        "object.npy",
        ".npy",
        npy(np.array([[1, None, 2]], dtype=object)),
        "float32",
        "not a NumPy array file, or a damaged one (Object arrays cannot be loaded",
    ),
    ("npz_archive.npy", ".npy", ZIP.getvalue(), "float32", "a NumPy archive of arrays (.npz)"),
    ("complex.npy", ".npy", npy(np.zeros((2, 3), np.complex64)), "float32", "holds complex64 values"),
    ("bool.npy", ".npy", npy(np.ones((2, 3), bool)), "float32", "holds bool values"),
    ("strings.npy", ".npy", npy(np.array([["a", "b", "c"]])), "float32", "holds <U1 values"),
    (
        "structured.npy",
        ".npy",
        npy(np.zeros(2, dtype=[("a", "f4"), ("b", "f4"), ("c", "f4")])),
        "float32",
        "values; this model takes real numbers",
    ),
    ("scalar.npy", ".npy", npy(np.float32(3)), "float32", "holds a single value"),
    ("one_dim.npy", ".npy", npy(np.zeros(3, np.float32)), "float32", "inputs have shape () each"),
    ("wrong_shape.npy", ".npy", npy(np.zeros((2, 4), np.float32)), "float32", "inputs have shape (4,) each"),
    ("zero_rows.npy", ".npy", npy(np.zeros((0, 3), np.float32)), "float32", "no inputs in the file"),
    (
        "nan.npy",
        ".npy",
        npy(np.array([[1, 2, 0], [1, np.nan, 0]], np.float32)),
        "float32",
        "row 1: it holds nan",
    ),
    ("inf.npy", ".npy", npy(np.array([[1, 2, np.inf]], np.float32)), "float32", "row 0: it holds inf"),
    (
        "beyond_float32.npy",
        ".npy",
        npy(np.array([[1, 2, 0], [1e300, 2, 0]])),
        "float32",
        "row 1: it holds 1e+300, beyond float32's range",
    ),
    (
        "uint64_max.npy",
        ".npy",
        npy(np.full((2, 3), 2**64 - 1, np.uint64)),
        "int64",
        "row 0: it holds 18446744073709551615, beyond int64's range",
    ),
    ("floats_for_tokens.npy", ".npy", npy(np.zeros((2, 3), np.float32)), "int64", "holds float32 values"),
    (
        "ok_fortran_order.npy",
        ".npy: unusual but valid",
        npy(np.asfortranarray(np.ones((2, 3), np.float32))),
        "float32",
        2,
    ),
    ("ok_big_endian.npy", ".npy: unusual but valid", npy(np.ones((2, 3), ">f4")), "float32", 2),
    ("ok_int16.npy", ".npy: unusual but valid", npy(np.ones((2, 3), np.int16)), "float32", 2),
    ("ok_uint8_tokens.npy", ".npy: unusual but valid", npy(np.ones((2, 3), np.uint8)), "int64", 2),
    # .pt
    (
        "truncated.pt",
        ".pt",
        GOOD_PT[: len(GOOD_PT) // 2],
        "float32",
        "not a PyTorch tensor file, or a damaged one",
    ),
    ("empty.pt", ".pt", b"", "float32", "not a PyTorch tensor file, or a damaged one"),
    ("text.pt", ".pt", b"hello world\n", "float32", "not a PyTorch tensor file, or a damaged one"),
    (
        "flipped_bytes.pt",
        ".pt",
        GOOD_PT[:60] + bytes(b ^ 0xFF for b in GOOD_PT[60:200]) + GOOD_PT[200:],
        "float32",
        "not a PyTorch tensor file, or a damaged one",
    ),
    (
        "plain_pickle.pt",
        ".pt",
        pickle.dumps([[1.0, 2.0, 0.0]]),
        "float32",
        "not a PyTorch tensor file, or a damaged one",
    ),
    ("code_in_pickle.pt", ".pt", pt([Marker()]), "float32", "not a PyTorch tensor file, or a damaged one"),
    ("dict.pt", ".pt", pt({"inputs": torch.zeros(2, 3)}), "float32", "holds a dict, not one tensor"),
    ("list.pt", ".pt", pt([torch.zeros(3), torch.zeros(3)]), "float32", "holds a list, not one tensor"),
    ("complex.pt", ".pt", pt(torch.zeros(2, 3, dtype=torch.complex64)), "float32", "holds complex64 values"),
    ("bool.pt", ".pt", pt(torch.ones(2, 3, dtype=torch.bool)), "float32", "holds bool values"),
    ("scalar.pt", ".pt", pt(torch.tensor(3.0)), "float32", "holds a single value"),
    ("wrong_shape.pt", ".pt", pt(torch.zeros(2, 5)), "float32", "inputs have shape (5,) each"),
    ("zero_rows.pt", ".pt", pt(torch.zeros(0, 3)), "float32", "no inputs in the file"),
    ("nan.pt", ".pt", pt(torch.tensor([[1.0, float("nan"), 0.0]])), "float32", "row 0: it holds nan"),
    (
        "beyond_float32.pt",
        ".pt",
        pt(torch.tensor([[1.0, 2.0, 0.0], [1e300, 0, 0]], dtype=torch.float64)),
        "float32",
        "row 1: it holds 1e+300, beyond float32's range",
    ),
    ("floats_for_tokens.pt", ".pt", pt(torch.zeros(2, 3)), "int64", "holds float32 values"),
    ("ok_bfloat16.pt", ".pt: unusual but valid", pt(torch.ones(2, 3, dtype=torch.bfloat16)), "float32", 2),
    ("ok_int8_tokens.pt", ".pt: unusual but valid", pt(torch.ones(2, 3, dtype=torch.int8)), "int64", 2),
    ("ok_float64.pt", ".pt: unusual but valid", pt(torch.ones(2, 3, dtype=torch.float64)), "float32", 2),
    # not an inputs file at all
    ("inputs.csv", "file type", b"1,2,0\n", "float32", "unknown inputs format '.csv'"),
    ("no_suffix", "file type", GOOD, "float32", "unknown inputs format ''"),
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        if old.name != "README.md":
            old.unlink()
    manifest = []
    for name, kind, data, dtype, expect in CASES:
        (OUT / name).write_bytes(data)
        entry: dict[str, Any] = {"file": name, "class": kind, "dtype": dtype, "shape": [3]}
        entry["rows" if isinstance(expect, int) else "message"] = expect
        manifest.append(entry)
    (OUT / "expected.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(CASES)} files and expected.json to {OUT}")


if __name__ == "__main__":
    main()
