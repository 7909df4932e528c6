#!/usr/bin/env python3
"""Writes the corpus of hand-made malformed files in this directory and EXPECTED.tsv, the table
the MalformedFiles test reads: file, parser (npy, safetensors, manifest or dataset) and a
substring the parser's error message must contain (besides the file's name). Standard library
only; the outputs are checked in, so this is needed only to change them:
    python3 tests/data/malformed/make_malformed.py
The npy() and safetensors() helpers are shared with tests/fuzz/make_corpus.py (the seeds)."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def npy(descr, shape, payload, version=(1, 0), fortran=False, header=None):
    """A .npy file as bytes, laid out as numpy.save does; `header` overrides the dict text."""
    dims = ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "")
    text = header if header is not None else (
        "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (descr, fortran, dims))
    length_size = 2 if version[0] == 1 else 4
    unpadded = 6 + 2 + length_size + len(text) + 1
    text += " " * ((64 - unpadded % 64) % 64) + "\n"
    length = struct.pack("<H" if length_size == 2 else "<I", len(text))
    return b"\x93NUMPY" + bytes(version) + length + text.encode("utf-8") + payload


def npy_dict(shape_text, descr="<f4"):
    return "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape_text)


def safetensors(tensors, metadata=None, raw_header=None, data=None):
    """tensors: list of (name, dtype, shape, bytes), laid out back to back; `raw_header` and
    `data` override the header JSON and the data section."""
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


def source(name, shards, dtype="f32"):
    return {"name": name, "dtype": dtype, "shards": shards}


def write(directory, name, content):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(content)


def malformed():
    rows = []  # (file, parser, expected substring)

    def add(name, parser, expected, content):
        write(HERE, name, content)
        rows.append((name, parser, expected))

    # --- .npy --------------------------------------------------------------------------------
    good = npy("<f4", (2, 2), floats(4))
    add("npy_truncated_data.npy", "npy", "need 16 data bytes but the file has 13", good[:-3])
    add("npy_wrong_magic.npy", "npy", "magic", b"\x93NUMPZ" + good[6:])
    add("npy_truncated_header.npy", "npy", "runs past the end of the file", good[:20])
    add("npy_too_short.npy", "npy", "truncated", good[:9])
    add("npy_header_length_past_end.npy", "npy", "header length 65535 runs past the end",
        good[:8] + struct.pack("<H", 0xFFFF) + good[10:])
    add("npy_header_not_dict.npy", "npy", "expected the header dict",
        npy("<f4", (2, 2), floats(4), header="['descr', '<f4']"))
    add("npy_missing_shape.npy", "npy", "lacks the field 'shape'",
        npy("<f4", (2,), floats(2), header="{'descr': '<f4', 'fortran_order': False}"))
    add("npy_duplicate_key.npy", "npy", "the key appears twice",
        npy("<f4", (2,), floats(2), header="{'descr': '<f4', 'descr': '<f4'}"))
    add("npy_text_after_dict.npy", "npy", "unexpected text after the header dict",
        npy("<f4", (2,), floats(2), header=npy_dict("(2,)") + " x"))
    add("npy_bad_descr.npy", "npy", "unsupported dtype '<c8'", npy("<c8", (2,), b"\x00" * 16))
    add("npy_big_endian.npy", "npy", "big-endian", npy(">f4", (2,), floats(2)))
    add("npy_fortran.npy", "npy", "Fortran", npy("<f4", (2, 2), floats(4), fortran=True))
    add("npy_negative_shape.npy", "npy", "non-negative integers",
        npy("<f4", (2,), floats(2), header=npy_dict("(-2,)")))
    add("npy_shape_entry_overflows.npy", "npy", "shape entry overflows",
        npy("<f4", (2,), floats(2), header=npy_dict("(99999999999999999999999,)")))
    add("npy_overflowing_shape.npy", "npy", "too large",
        npy("<f4", (2,), floats(2), header=npy_dict("(4294967296, 4294967296, 4294967296)")))
    # Found by fuzz_npy: with a zero extent the byte count is 0, but the other extents must
    # not overflow either (row_width() wrapped around before the fix).
    add("npy_empty_overflowing_shape.npy", "npy", "too large",
        npy("<f4", (0,), b"", header=npy_dict("(0, 4294967296, 4294967296)")))
    add("npy_bad_version.npy", "npy", "version", npy("<f4", (2,), floats(2), version=(9, 0)))

    # --- safetensors -------------------------------------------------------------------------
    tensor = [("t", "F32", [2, 2], floats(4))]
    good = safetensors(tensor)
    add("st_too_short.safetensors", "safetensors", "too short for the 8-byte header length",
        good[:5])
    add("st_header_past_end.safetensors", "safetensors", "runs past the end of the file",
        struct.pack("<Q", 4096) + good[8:])
    add("st_header_too_large.safetensors", "safetensors", "exceeds the 100000000 byte limit",
        struct.pack("<Q", 200_000_000) + good[8:])
    add("st_header_not_object.safetensors", "safetensors", "object",
        safetensors([], raw_header=b"[1, 2, 3]"))
    add("st_header_invalid_json.safetensors", "safetensors", "not valid JSON",
        safetensors([], raw_header=b'{"t": {"dtype": "F32",'))
    add("st_unknown_dtype.safetensors", "safetensors", "unsupported dtype 'Q7'",
        safetensors([("t", "Q7", [2], floats(2))]))
    add("st_shape_mismatch.safetensors", "safetensors", "needs 24",
        safetensors([("t", "F32", [3, 2], floats(4))], data=floats(4)))
    add("st_negative_shape.safetensors", "safetensors", "must hold non-negative integers",
        safetensors([], raw_header=b'{"t": {"dtype": "F32", "shape": [-1], '
                                  b'"data_offsets": [0, 0]}}'))
    # Found by fuzz_safetensors: an empty tensor whose other extents overflow int64 made
    # TensorInfo::elements() overflow (undefined behaviour) before the fix.
    add("st_empty_overflowing_shape.safetensors", "safetensors", "is too large",
        safetensors([], raw_header=json.dumps(
            {"t": {"dtype": "U8", "shape": [2 ** 62, 3, 0], "data_offsets": [0, 0]}}).encode(),
            data=b""))
    # Found by fuzz_safetensors: tens of thousands of nested '[' overflowed the stack, first in
    # the error message's recursive dump(), then (under AddressSanitizer) when nlohmann's ordered
    # object copied the nested value as it grew; such nesting is now refused while parsing.
    depth = 50000
    add("st_deeply_nested_shape.safetensors", "safetensors", "more than 64 levels deep",
        safetensors([], raw_header=b'{"t": {"dtype": "F32", "shape": [' + b"[" * depth +
                    b"]" * depth + b'], "data_offsets": [0, 0]}}', data=b""))
    add("st_reversed_offsets.safetensors", "safetensors", "reversed",
        safetensors([], raw_header=b'{"t": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}',
                    data=floats(2)))
    overlapping = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    add("st_overlapping_offsets.safetensors", "safetensors", "previous tensor ends at 8",
        safetensors([], raw_header=json.dumps(overlapping).encode(), data=floats(3)))
    gap = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}
    add("st_gap_between_offsets.safetensors", "safetensors", "previous tensor ends at 4",
        safetensors([], raw_header=json.dumps(gap).encode(), data=floats(3)))
    past = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    add("st_offsets_past_end.safetensors", "safetensors", "data section has only 8 bytes",
        safetensors([], raw_header=json.dumps(past).encode(), data=floats(2)))
    add("st_trailing_bytes.safetensors", "safetensors", "trailing bytes",
        safetensors(tensor, data=floats(5)))
    header = good[8:8 + struct.unpack("<Q", good[:8])[0]].rstrip(b" ")
    duplicate = b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' + header[1:]
    add("st_duplicate_name.safetensors", "safetensors", "appears twice",
        safetensors([], raw_header=duplicate, data=floats(1) + floats(4)))
    add("st_metadata_not_strings.safetensors", "safetensors", "__metadata__ value of 'k'",
        safetensors(tensor, {"k": 5}))
    add("st_metadata_not_object.safetensors", "safetensors", "__metadata__ is not an object",
        safetensors(tensor, ["k", "v"]))

    # --- manifests (parse_manifest through read_manifest) --------------------------------------
    one = [source("a", [shard("a.npy", 2)])]
    add("manifest_invalid_json.json", "manifest", "not valid JSON", b'{"format": ')
    add("manifest_not_object.json", "manifest", "must be a JSON object", b'["format"]')
    add("manifest_wrong_format.json", "manifest", "format is \"crosscoder-activations-9\"",
        manifest(one).replace(b"activations-1", b"activations-9"))
    add("manifest_missing_width.json", "manifest", "width is missing",
        json.dumps({"format": "crosscoder-activations-1", "sources": one}).encode())
    add("manifest_width_too_large.json", "manifest", "width is 4294967296",
        manifest(one, width=2 ** 32))
    add("manifest_mismatched_rows.json", "manifest", "sources[1].shards[0].rows is 3",
        manifest(one + [source("b", [shard("b.npy", 3)])]))
    add("manifest_mismatched_shard_count.json", "manifest", "labels.shards has 2 shards",
        manifest(one, labels={"dtype": "int8", "shards": [shard("l0.npy", 1), shard("l1.npy", 1)]}))
    add("manifest_duplicate_source.json", "manifest", "names two sources",
        manifest(one + [source("a", [shard("b.npy", 2)])]))
    add("manifest_bad_dtype.json", "manifest", "unknown dtype \"float32\"",
        manifest([source("a", [shard("a.npy", 2)], dtype="float32")]))
    add("manifest_int_activations.json", "manifest", "activations are f32, f16 or bf16",
        manifest([source("a", [shard("a.npy", 2)], dtype="int8")]))
    add("manifest_negative_rows.json", "manifest", "rows is -5",
        manifest([source("a", [shard("a.npy", -5)])]))
    add("manifest_rows_overflow.json", "manifest", "overflows the row count",
        manifest([source("a", [shard("a.npy", 2 ** 62), shard("b.npy", 2 ** 62)])]))
    two = [source("a", [shard("a0.npy", 2), shard("a1.npy", 3)])]
    add("manifest_document_ids_rows.json", "manifest",
        "document_ids.shards[1].rows is 4 but sources[0].shards[1].rows is 3",
        manifest(two, document_ids={"dtype": "int32",
                                    "shards": [shard("d0.npy", 2), shard("d1.npy", 4)]}))
    add("manifest_document_ids_dtype.json", "manifest",
        "document_ids.dtype is int8; document ids are int32",
        manifest(two, document_ids={"dtype": "int8",
                                    "shards": [shard("d0.npy", 2), shard("d1.npy", 3)]}))

    # --- datasets (ActivationDataset::open_manifest: the manifest parses, its shards do not
    # match). shard_*.npy / shard_*.safetensors are valid files the manifests refer to.
    write(HERE, "shard_f4_2x4.npy", npy("<f4", (2, 4), floats(8)))
    write(HERE, "shard_x.safetensors", safetensors([("x", "F32", [2, 4], floats(8))]))
    add("dataset_missing_shard.json", "dataset", "no-such-shard.npy",
        manifest([source("a", [shard("no-such-shard.npy", 2)])]))
    add("dataset_width_mismatch.json", "dataset",
        "shard_f4_2x4.npy: shape [2, 4] but expected [2, 3]",
        manifest([source("a", [shard("shard_f4_2x4.npy", 2)])], width=3))
    add("dataset_rows_mismatch.json", "dataset", "shape [2, 4] but expected [5, 4]",
        manifest([source("a", [shard("shard_f4_2x4.npy", 5)])]))
    add("dataset_dtype_mismatch.json", "dataset", "holds f32 ('<f4') but the manifest says bf16",
        manifest([source("a", [shard("shard_f4_2x4.npy", 2)], dtype="bf16")]))
    add("dataset_missing_tensor.json", "dataset", "no tensor \"nope\" (it has: x)",
        manifest([source("a", [shard("shard_x.safetensors", 2, tensor="nope")])]))
    add("dataset_malformed_shard.json", "dataset", "npy_truncated_data.npy: .npy data is truncated",
        manifest([source("a", [shard("npy_truncated_data.npy", 2)], dtype="f32")], width=2))
    add("dataset_document_ids_float.json", "dataset",
        "shard_f4_2x4.npy: dtype '<f4' is not int8 ('|i1') or int32",
        manifest([source("a", [shard("shard_f4_2x4.npy", 2)])],
                 document_ids={"dtype": "int32", "shards": [shard("shard_f4_2x4.npy", 2)]}))

    write(HERE, "EXPECTED.tsv", ("# file\tparser\texpected substring of the error\n" +
                                 "".join("%s\t%s\t%s\n" % row for row in rows)).encode())


if __name__ == "__main__":
    malformed()
