#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (small valid files) and the malformed-file corpus with its
table of expected errors. Standard library only; the outputs are checked in, so this script is
only needed to change them:  python3 tests/fuzz/make_corpus.py"""
import json
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")
MALFORMED = os.path.join(ROOT, "..", "data", "malformed")


def npy(descr, shape, payload, version=(1, 0), fortran=False, header=None):
    """A .npy file as bytes; `header` overrides the dict text."""
    dims = ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "")
    text = header if header is not None else (
        "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (descr, fortran, dims))
    length_size = 2 if version[0] == 1 else 4
    unpadded = 6 + 2 + length_size + len(text) + 1
    text += " " * ((64 - unpadded % 64) % 64) + "\n"
    length = struct.pack("<H" if length_size == 2 else "<I", len(text))
    return b"\x93NUMPY" + bytes(version) + length + text.encode("latin-1") + payload


def safetensors(tensors, metadata=None, raw_header=None, data=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    header, blob = {}, b""
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(blob), len(blob) + len(payload)]}
        blob += payload
    if metadata is not None:
        header["__metadata__"] = metadata
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + (blob if data is None else data)


def floats(n, start=0.5):
    return struct.pack("<%df" % n, *[start + 0.25 * i for i in range(n)])


def manifest(sources, width=4, **extra):
    body = {"format": "crosscoder-activations-1", "width": width, "sources": sources}
    body.update(extra)
    return json.dumps(body).encode()


def shard(path, rows, tensor=None):
    entry = {"path": path, "rows": rows}
    if tensor:
        entry["tensor"] = tensor
    return entry


def write(directory, name, content):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(content)


def seeds():
    d = os.path.join(CORPUS, "npy")
    write(d, "f4_2d_v1.npy", npy("<f4", (3, 4), floats(12)))
    write(d, "f4_3d_v2.npy", npy("<f4", (2, 2, 2), floats(8), version=(2, 0)))
    write(d, "f2_1d_v3.npy", npy("<f2", (4,), struct.pack("<4e", 1.0, -2.0, 0.5, 65504.0), version=(3, 0)))
    write(d, "u2_bf16.npy", npy("<u2", (2, 2), struct.pack("<4H", 0x3F80, 0xC000, 0x7F80, 0x0001)))
    write(d, "i4_labels.npy", npy("<i4", (5,), struct.pack("<5i", 0, 1, -1, 1, 0)))
    write(d, "i1_scalar.npy", npy("|i1", (), b"\x07"))
    d = os.path.join(CORPUS, "safetensors")
    write(d, "f32_pair.safetensors", safetensors(
        [("base", "F32", [2, 3], floats(6)), ("tuned", "F32", [2, 3], floats(6, 9.0))],
        {"sources": '["base", "tuned"]'}))
    write(d, "half_types.safetensors", safetensors(
        [("h", "F16", [2], struct.pack("<2e", 1.5, -3.0)), ("b", "BF16", [2], struct.pack("<2H", 0x3F80, 0x4000)),
         ("labels", "I8", [2], b"\x01\x00"), ("ids", "I64", [1], struct.pack("<q", 42))]))
    write(d, "empty_tensor.safetensors", safetensors([("e", "F32", [0, 4], b"")], {}))
    d = os.path.join(CORPUS, "manifest")
    write(d, "two_sources.json", manifest(
        [{"name": "base", "dtype": "bf16", "shards": [shard("b-0.npy", 10), shard("b-1.npy", 3)]},
         {"name": "tuned", "dtype": "f16", "shards": [shard("t.safetensors", 10, "x0"), shard("t.safetensors", 3, "x1")]}],
        labels={"dtype": "int8", "shards": [shard("l-0.npy", 10), shard("l-1.npy", 3)]},
        token_ids={"dtype": "int32", "shards": [shard("/abs/tok.npy", 10), shard("tok-1.npy", 3)]}))
    write(d, "one_source.json", manifest([{"name": "only", "dtype": "f32", "shards": [shard("a.npy", 1)]}], width=1))


def malformed():
    rows = []  # (file, parser, expected substring)

    def add(name, parser, expected, content):
        write(MALFORMED, name, content)
        rows.append((name, parser, expected))

    good = npy("<f4", (2, 2), floats(4))
    add("npy_truncated_data.npy", "npy", "need 16 data bytes but the file has 13", good[:-3])
    add("npy_wrong_magic.npy", "npy", "magic", b"\x93NUMPZ" + good[6:])
    add("npy_truncated_header.npy", "npy", "truncated", good[:20])
    add("npy_header_not_dict.npy", "npy", "expected the header dict", npy("<f4", (2, 2), floats(4), header="['descr', '<f4']"))
    add("npy_bad_descr.npy", "npy", "unsupported dtype '<c8'", npy("<c8", (2,), b"\x00" * 16))
    add("npy_big_endian.npy", "npy", "big-endian", npy(">f4", (2,), floats(2)))
    add("npy_fortran.npy", "npy", "Fortran", npy("<f4", (2, 2), floats(4), fortran=True))
    add("npy_negative_shape.npy", "npy", "non-negative integers", npy("<f4", (2,), floats(2), header="{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }"))
    add("npy_overflowing_shape.npy", "npy", "too large", npy("<f4", (2,), floats(2), header="{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }"))
    add("npy_bad_version.npy", "npy", "version", npy("<f4", (2,), floats(2), version=(9, 0)))

    tensor = [("t", "F32", [2, 2], floats(4))]
    good = safetensors(tensor)
    add("st_header_past_end.safetensors", "safetensors", "header", struct.pack("<Q", 4096) + good[8:])
    add("st_header_too_large.safetensors", "safetensors", "exceeds the 100000000 byte limit", struct.pack("<Q", 200_000_000) + good[8:])
    add("st_header_not_object.safetensors", "safetensors", "object", safetensors([], raw_header=b"[1, 2, 3]"))
    add("st_unknown_dtype.safetensors", "safetensors", "unsupported dtype 'Q7'", safetensors([("t", "Q7", [2], floats(2))]))
    add("st_shape_mismatch.safetensors", "safetensors", "needs 24", safetensors([("t", "F32", [3, 2], floats(4))], data=floats(4)))
    overlapping = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    add("st_overlapping_offsets.safetensors", "safetensors", "previous tensor ends at 8", safetensors([], raw_header=json.dumps(overlapping).encode(), data=floats(3)))
    gap = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}
    add("st_gap_between_offsets.safetensors", "safetensors", "previous tensor ends at 4", safetensors([], raw_header=json.dumps(gap).encode(), data=floats(3)))
    past = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    add("st_offsets_past_end.safetensors", "safetensors", "offsets", safetensors([], raw_header=json.dumps(past).encode(), data=floats(2)))
    header = good[8:8 + struct.unpack("<Q", good[:8])[0]].rstrip(b" ")
    duplicate = b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' + header[1:]
    add("st_duplicate_name.safetensors", "safetensors", "appears twice", safetensors([], raw_header=duplicate, data=floats(1) + floats(4)))
    add("st_metadata_not_strings.safetensors", "safetensors", "__metadata__", safetensors(tensor, {"k": 5}))

    def manifest_case(name, expected, content):
        add(name, "manifest", expected, content)

    one = [{"name": "a", "dtype": "f32", "shards": [shard("a.npy", 2)]}]
    manifest_case("manifest_invalid_json.json", "not valid JSON", b'{"format": ')
    manifest_case("manifest_wrong_format.json", "format", manifest(one).replace(b"activations-1", b"activations-9"))
    manifest_case("manifest_missing_width.json", "width is missing", json.dumps({"format": "crosscoder-activations-1", "sources": one}).encode())
    manifest_case("manifest_mismatched_rows.json", "sources[1].shards[0].rows is 3", manifest(
        one + [{"name": "b", "dtype": "f32", "shards": [shard("b.npy", 3)]}]))
    manifest_case("manifest_bad_dtype.json", "unknown dtype", manifest([{"name": "a", "dtype": "float32", "shards": [shard("a.npy", 2)]}]))
    manifest_case("manifest_negative_rows.json", "rows is -5", manifest([{"name": "a", "dtype": "f32", "shards": [shard("a.npy", -5)]}]))
    # Opened as a dataset: the shard file is missing (the parser alone accepts this manifest).
    add("dataset_missing_shard.json", "dataset", "no-such-shard.npy",
        manifest([{"name": "a", "dtype": "f32", "shards": [shard("no-such-shard.npy", 2)]}]))
    write(MALFORMED, "EXPECTED.tsv", ("# file\tparser\texpected substring of the error\n" +
                                      "".join("%s\t%s\t%s\n" % row for row in rows)).encode())


if __name__ == "__main__":
    seeds()
    malformed()
