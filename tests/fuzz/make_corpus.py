#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora: small valid .npy, safetensors and manifest files in
corpus/{npy,safetensors,manifest}. Standard library only; the outputs are checked in, so this
is needed only to change them:  python3 tests/fuzz/make_corpus.py
(The malformed-file corpus is tests/data/malformed/make_malformed.py's, whose helpers this
reuses.)"""
import os
import struct
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(ROOT, "..", "data", "malformed"))
from make_malformed import floats, manifest, npy, safetensors, shard, source, write  # noqa: E402


def seeds():
    d = os.path.join(CORPUS, "npy")
    write(d, "f4_2d_v1.npy", npy("<f4", (3, 4), floats(12)))
    write(d, "f4_3d_v2.npy", npy("<f4", (2, 2, 2), floats(8), version=(2, 0)))
    write(d, "f2_1d_v3.npy",
          npy("<f2", (4,), struct.pack("<4e", 1.0, -2.0, 0.5, 65504.0), version=(3, 0)))
    write(d, "u2_bf16.npy", npy("<u2", (2, 2), struct.pack("<4H", 0x3F80, 0xC000, 0x7F80, 0x0001)))
    write(d, "i4_labels.npy", npy("<i4", (5,), struct.pack("<5i", 0, 1, -1, 1, 0)))
    write(d, "i1_scalar.npy", npy("|i1", (), b"\x07"))
    d = os.path.join(CORPUS, "safetensors")
    write(d, "f32_pair.safetensors", safetensors(
        [("base", "F32", [2, 3], floats(6)), ("tuned", "F32", [2, 3], floats(6, 9.0))],
        {"sources": '["base", "tuned"]'}))
    write(d, "half_types.safetensors", safetensors(
        [("h", "F16", [2], struct.pack("<2e", 1.5, -3.0)),
         ("b", "BF16", [2], struct.pack("<2H", 0x3F80, 0x4000)),
         ("labels", "I8", [2], b"\x01\x00"), ("ids", "I64", [1], struct.pack("<q", 42))],
        {"format": "pt"}))
    write(d, "empty_tensor.safetensors", safetensors([("e", "F32", [0, 4], b"")], {}))
    d = os.path.join(CORPUS, "manifest")
    write(d, "two_sources.json", manifest(
        [source("base", [shard("b-0.npy", 10), shard("b-1.npy", 3)], dtype="bf16"),
         source("tuned", [shard("t.safetensors", 10, "x0"), shard("t.safetensors", 3, "x1")],
                dtype="f16")],
        labels={"dtype": "int8", "shards": [shard("l-0.npy", 10), shard("l-1.npy", 3)]},
        token_ids={"dtype": "int32", "shards": [shard("/abs/tok.npy", 10), shard("tok-1.npy", 3)]}))
    write(d, "one_source.json", manifest([source("only", [shard("a.npy", 1)])], width=1))
    write(d, "document_ids.json", manifest(
        [source("base", [shard("b-0.npy", 4), shard("b-1.npy", 2)])],
        token_ids={"dtype": "int32", "shards": [shard("tok-0.npy", 4), shard("tok-1.npy", 2)]},
        document_ids={"dtype": "int32",
                      "shards": [shard("documents-0.npy", 4), shard("/abs/documents-1.npy", 2)]}))


def vocabulary_seeds():
    """Vocabularies: Hugging Face tokenizer.json in its three piece encodings, and llama2.c's
    binary tokenizer."""
    import json
    d = os.path.join(CORPUS, "vocabulary")
    byte_level = {"model": {"type": "BPE", "vocab": {"\u0120the": 0, "\u010a": 1, "\u00c3": 2,
                                                     "\u00a9": 3, "a": 4}},
                  "added_tokens": [{"id": 5, "content": "<|endoftext|>"}],
                  "decoder": {"type": "ByteLevel"}}
    write(d, "byte_level.json", json.dumps(byte_level).encode())
    sentencepiece = {"model": {"type": "BPE", "byte_fallback": True,
                               "vocab": {"<unk>": 0, "<0x0A>": 1, "\u2581the": 2, "s": 3}},
                     "decoder": {"type": "Sequence", "decoders": [
                         {"type": "Replace"}, {"type": "ByteFallback"}]}}
    write(d, "sentencepiece.json", json.dumps(sentencepiece).encode())
    unigram = {"model": {"type": "Unigram", "vocab": [["<pad>", 0.0], ["\u2581a", -1.5]]}}
    write(d, "unigram.json", json.dumps(unigram).encode())
    wordpiece = {"model": {"type": "WordPiece", "vocab": {"[CLS]": 0, "play": 1, "##ing": 2}}}
    write(d, "wordpiece.json", json.dumps(wordpiece).encode())
    pieces = [b"<unk>", b"<0x0A>", b" the", b"s"]
    binary = struct.pack("<i", 8) + b"".join(
        struct.pack("<fi", -float(i), len(p)) + p for i, p in enumerate(pieces))
    write(d, "llama2c.bin", binary)


if __name__ == "__main__":
    seeds()
    vocabulary_seeds()
