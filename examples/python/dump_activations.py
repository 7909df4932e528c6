#!/usr/bin/env python3
"""Dumps paired activations of two Hugging Face causal LMs as a crosscoder dataset.

Runs a base model and its fine-tune on the same tokenized prompts and writes, per token, the
residual stream at one layer of each model: the sharded layout of docs/formats.md ("Dataset
manifests"), ready for `crosscoder train --data OUT/manifest.json`. Every prompt is a document:
its rows' document id is the prompt's index (0-based, in file order, blank lines not counted).

    python examples/python/dump_activations.py --base BASE --tuned TUNED --layer 6 \\
        --prompts prompts.jsonl --out acts/

Layer convention: `--layer L` stores `hidden_states[L + 1]` of a forward pass with
`output_hidden_states=True`, the residual stream after decoder block L (0-based); L = -1 is the
embedding output. Hugging Face applies the final norm to the last entry, so L = num_layers - 1
gives the normed output of the last block. See docs/python.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("dump_activations")

MANIFEST_FORMAT = "crosscoder-activations-1"
SOURCE_NAMES = ("base", "tuned")


class DumpError(Exception):
    """A problem with the inputs, reported without a traceback."""


@dataclass
class Prompt:
    text: str
    label: int | None  # None when the prompt file has no labels


@dataclass
class Column:
    """One column of the dataset being written: a source's activations, labels, token ids or
    document ids."""

    name: str  # file prefix, e.g. "base" → base-00000.npy
    dtype: str  # the manifest's dtype: f32, f16, bf16, int8, int32
    shards: list[dict[str, Any]] = field(default_factory=list)


# --- prompts --------------------------------------------------------------------------------


def read_prompts(path: Path) -> list[Prompt]:
    """Reads .txt (one prompt per non-empty line) or .jsonl ({"text": ..., "label": 0/1})."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise DumpError(f"{path}: cannot read the prompts: {error.strerror}") from error
    prompts: list[Prompt] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DumpError(f"{path}:{number}: not JSON: {error.msg}") from error
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DumpError(f'{path}:{number}: expected an object with a string "text"')
            label = record.get("label")
            if label is not None and (
                isinstance(label, bool) or not isinstance(label, int) or not -128 <= label <= 127
            ):
                raise DumpError(f'{path}:{number}: "label" must be an integer in [-128, 127]')
            prompts.append(Prompt(record["text"], label))
        labelled = [p.label is not None for p in prompts]
        if any(labelled) and not all(labelled):
            raise DumpError(f'{path}: some prompts have a "label" and some do not')
    else:
        prompts = [Prompt(line, None) for line in lines if line.strip()]
    if not prompts:
        raise DumpError(f"{path}: no prompts")
    return prompts


def batches(items: list[Prompt], size: int) -> Iterator[tuple[int, list[Prompt]]]:
    """(index of the batch's first prompt, the batch's prompts)."""
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


# --- the dataset being written ----------------------------------------------------------------


class ShardedWriter:
    """Collects rows of every column and writes them as .npy shards of `shard_rows` rows."""

    def __init__(self, out: Path, columns: list[Column], shard_rows: int) -> None:
        self.out = out
        self.columns = columns
        self.shard_rows = shard_rows
        self.pending: list[list[np.ndarray]] = [[] for _ in columns]
        self.pending_rows = 0
        self.rows = 0

    def add(self, arrays: list[np.ndarray]) -> None:
        """Appends the same number of rows to every column (in the order of `columns`)."""
        count = len(arrays[0])
        assert all(len(a) == count for a in arrays)
        for pending, array in zip(self.pending, arrays, strict=True):
            pending.append(array)
        self.pending_rows += count
        self.rows += count
        while self.pending_rows >= self.shard_rows:
            self._write_shard(self.shard_rows)

    def finish(self) -> None:
        if self.pending_rows > 0:
            self._write_shard(self.pending_rows)

    def _write_shard(self, rows: int) -> None:
        index = len(self.columns[0].shards)
        for i, column in enumerate(self.columns):
            joined = np.concatenate(self.pending[i])
            shard, rest = joined[:rows], joined[rows:]
            self.pending[i] = [rest] if len(rest) else []
            name = f"{column.name}-{index:05d}.npy"
            np.save(self.out / name, np.ascontiguousarray(shard))
            column.shards.append({"path": name, "rows": rows})
        self.pending_rows -= rows


def write_manifest_atomically(path: Path, manifest: dict[str, Any]) -> None:
    """Writes the manifest to a temporary file beside it, then renames it into place."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


# --- models -------------------------------------------------------------------------------------


def load_tokenizer(name: str, padding_side: str | None) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise DumpError(f"{name}: cannot load the tokenizer: {error}") from error
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DumpError(f"{name}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token  # only ever masked out
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def check_tokenizers_agree(base: Any, tuned: Any, base_name: str, tuned_name: str) -> None:
    """The rows of both models must be the same tokens: same vocabulary and special tokens."""
    for what in ["bos_token_id", "eos_token_id", "unk_token_id"]:
        if getattr(base, what) != getattr(tuned, what):
            raise DumpError(
                f"the tokenizers of {base_name} and {tuned_name} differ: {what} "
                f"{getattr(base, what)} vs {getattr(tuned, what)}"
            )
    base_vocab, tuned_vocab = base.get_vocab(), tuned.get_vocab()
    if base_vocab != tuned_vocab:
        differing = sorted(set(base_vocab.items()) ^ set(tuned_vocab.items()))[:3]
        raise DumpError(
            f"the tokenizers of {base_name} and {tuned_name} differ: vocabularies of "
            f"{len(base_vocab)} and {len(tuned_vocab)} tokens, e.g. {differing}"
        )


def load_model(name: str, dtype: str, device: str) -> Any:
    import torch
    import transformers

    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    # transformers 4.56 renamed from_pretrained's torch_dtype to dtype.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(name, **{key: torch_dtype[dtype]})
    except (OSError, ValueError) as error:
        raise DumpError(f"{name}: cannot load the model: {error}") from error
    return model.to(device).eval()


def hidden_states_at(model: Any, batch: dict[str, Any], layer: int, name: str) -> Any:
    """hidden_states[layer + 1] of `model` on a padded batch, as float32 [B, T, d]."""
    import torch

    mask = batch["attention_mask"]
    # Positions count real tokens only, so left padding does not shift them.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        output = model(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
    states = output.hidden_states
    if not -1 <= layer < len(states) - 1:
        raise DumpError(
            f"{name}: layer {layer} is out of range: the model has {len(states) - 1} blocks "
            f"(layers -1 to {len(states) - 2})"
        )
    return states[layer + 1].float()


def to_storage(values: Any, dtype: str) -> np.ndarray:
    """float32 torch rows → the stored NumPy array (bf16 as its raw bits in uint16)."""
    import torch

    if dtype == "f32":
        return values.cpu().numpy().astype(np.float32)
    if dtype == "f16":
        return values.to(torch.float16).cpu().numpy()
    return values.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)


def selected_positions(
    input_ids: Any, mask: Any, positions: str, skip_bos: bool, bos_id: int | None
) -> list[list[int]]:
    """Per prompt of the batch, the token positions whose activations become rows."""
    chosen = []
    for row_ids, row_mask in zip(input_ids.tolist(), mask.tolist(), strict=True):
        real = [t for t, m in enumerate(row_mask) if m]
        if positions == "last":
            chosen.append(real[-1:])
            continue
        if skip_bos and real and bos_id is not None and row_ids[real[0]] == bos_id:
            real = real[1:]
        chosen.append(real)
    return chosen


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Dump paired residual-stream activations of a base model and its fine-tune "
        "into a crosscoder dataset (docs/formats.md).",
    )
    parser.add_argument(
        "--base", required=True, metavar="MODEL", help="base model: a path or a Hugging Face name"
    )
    parser.add_argument(
        "--tuned", required=True, metavar="MODEL", help="fine-tuned model: a path or a name"
    )
    parser.add_argument(
        "--layer",
        type=int,
        required=True,
        metavar="L",
        help="store hidden_states[L + 1]: the residual stream after block L (0-based); "
        "-1 is the embedding output",
    )
    parser.add_argument(
        "--layer-tuned", type=int, metavar="L", help="the tuned model's layer (default: --layer)"
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        required=True,
        metavar="FILE",
        help='.txt (one prompt per line) or .jsonl ({"text": ..., "label": 0/1}, label optional)',
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--positions",
        choices=["all", "last"],
        default="all",
        help="all: every prompt token; last: the last token of each prompt (default: all)",
    )
    parser.add_argument(
        "--skip-bos",
        action="store_true",
        help="with --positions all, leave out each prompt's leading BOS token",
    )
    parser.add_argument(
        "--dtype",
        choices=["f32", "f16", "bf16"],
        default="f32",
        help="stored element type, bf16 as '<u2' .npy (default: f32)",
    )
    parser.add_argument(
        "--model-dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="dtype the models run in (default: float32)",
    )
    parser.add_argument(
        "--shard-rows", type=int, default=65536, help="rows per shard (default: 65536)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="prompts per forward pass (default: 8)"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=512,
        help="truncate prompts to this many tokens (default: 512)",
    )
    parser.add_argument(
        "--padding-side",
        choices=["left", "right"],
        help="pad batches on this side (default: the tokenizer's)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto (the default): cuda when available, else cpu",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset in --out"
    )
    args = parser.parse_args(argv)
    if args.layer_tuned is None:
        args.layer_tuned = args.layer
    for name in ["shard_rows", "batch_size", "max_length"]:
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def progress(total: int) -> Any:
    """A tqdm bar over `total` prompts when tqdm is installed, else log lines."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="prompt", file=sys.stderr)
    except ImportError:
        return LogProgress(total)


class LogProgress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.next_report = total, 0, 0.0

    def update(self, count: int) -> None:
        self.done += count
        if self.done >= self.next_report or self.done == self.total:
            log.info("%d/%d prompts", self.done, self.total)
            self.next_report = self.done + max(1, self.total // 20)

    def close(self) -> None:
        pass


def write_vocabulary(tokenizer: Any, out: Path) -> str:
    """Writes the token vocabulary beside the dataset, so that reports show text
    (`crosscoder diff --vocab`): tokenizer.json for a fast tokenizer, else vocab.txt with one
    piece per line in id order. Returns the file name."""
    if getattr(tokenizer, "is_fast", False):
        path = out / "tokenizer.json"
        tokenizer.backend_tokenizer.save(str(path))
    else:
        path = out / "vocab.txt"
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        path.write_text("".join(str(p).replace("\n", " ") + "\n" for p in pieces), encoding="utf-8")
    return path.name


def build_manifest(
    args: argparse.Namespace, columns: list[Column], width: int, prompt_count: int
) -> dict[str, Any]:
    """The manifest of docs/formats.md, plus a "producer" record of how the data was made."""

    def column_json(column: Column) -> dict[str, Any]:
        return {"dtype": column.dtype, "shards": column.shards}

    by_name = {c.name: c for c in columns}
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "width": width,
        "sources": [{"name": n, **column_json(by_name[n])} for n in SOURCE_NAMES],
        "token_ids": column_json(by_name["tokens"]),
        "document_ids": column_json(by_name["documents"]),
    }
    if "labels" in by_name:
        manifest["labels"] = column_json(by_name["labels"])
    manifest["producer"] = {
        "tool": "examples/python/dump_activations.py",
        "models": {"base": args.base, "tuned": args.tuned},
        "layers": {"base": args.layer, "tuned": args.layer_tuned},
        "layer_convention": "hidden_states[layer + 1]",
        "positions": args.positions,
        "skip_bos": args.skip_bos,
        "max_length": args.max_length,
        "model_dtype": args.model_dtype,
        "prompts": str(args.prompts),
        "prompt_count": prompt_count,
    }
    return manifest


def dump(args: argparse.Namespace) -> dict[str, Any]:
    """Writes the dataset and returns its manifest."""
    import torch

    prompts = read_prompts(args.prompts)
    manifest_path = args.out / "manifest.json"
    if manifest_path.exists():
        if not args.overwrite:
            raise DumpError(f"{manifest_path} exists: pass --overwrite to replace the dataset")
        manifest_path.unlink()  # it would describe shards that are about to be overwritten
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise DumpError("--device cuda: torch finds no CUDA device")

    tokenizer = load_tokenizer(args.base, args.padding_side)
    tuned_tokenizer = load_tokenizer(args.tuned, tokenizer.padding_side)
    check_tokenizers_agree(tokenizer, tuned_tokenizer, args.base, args.tuned)
    log.info("loading %s and %s on %s", args.base, args.tuned, device)
    args.out.mkdir(parents=True, exist_ok=True)
    models = [
        load_model(args.base, args.model_dtype, device),
        load_model(args.tuned, args.model_dtype, device),
    ]
    layers = [args.layer, args.layer_tuned]

    labelled = prompts[0].label is not None
    columns = [Column(name, args.dtype) for name in SOURCE_NAMES]
    columns.append(Column("tokens", "int32"))
    columns.append(Column("documents", "int32"))
    if labelled:
        columns.append(Column("labels", "int8"))
    writer = ShardedWriter(args.out, columns, args.shard_rows)
    width: int | None = None

    bar = progress(len(prompts))
    for first_prompt, batch_prompts in batches(prompts, args.batch_size):
        texts = [p.text for p in batch_prompts]
        encode = dict(
            padding=True, truncation=True, max_length=args.max_length, return_tensors="pt"
        )
        batch = tokenizer(texts, **encode)
        tuned_ids = tuned_tokenizer(texts, **encode)["input_ids"]
        if not torch.equal(batch["input_ids"], tuned_ids):
            raise DumpError(
                f"the tokenizers of {args.base} and {args.tuned} tokenize "
                f"differently (batch starting with {texts[0]!r})"
            )
        chosen = selected_positions(
            batch["input_ids"],
            batch["attention_mask"],
            args.positions,
            args.skip_bos,
            tokenizer.bos_token_id,
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        states = [
            hidden_states_at(model, batch, layer, name)
            for model, layer, name in zip(models, layers, (args.base, args.tuned), strict=True)
        ]
        if states[0].shape[-1] != states[1].shape[-1]:
            raise DumpError(
                f"{args.base} and {args.tuned} have different widths: "
                f"{states[0].shape[-1]} vs {states[1].shape[-1]}"
            )
        width = states[0].shape[-1]

        rows = torch.tensor([b for b, ps in enumerate(chosen) for _ in ps], dtype=torch.long)
        cols = torch.tensor([p for ps in chosen for p in ps], dtype=torch.long)
        arrays = [to_storage(s[rows.to(device), cols.to(device)], args.dtype) for s in states]
        ids = batch["input_ids"].cpu()[rows, cols].numpy().astype(np.int32)
        arrays.append(ids)
        # Each prompt is a document; ids need only differ between neighbours, so the prompt's
        # index (wrapped to int32) is enough.
        documents = [(first_prompt + b) % 2**31 for b, ps in enumerate(chosen) for _ in ps]
        arrays.append(np.array(documents, dtype=np.int32))
        if labelled:
            labels = [p.label for p, ps in zip(batch_prompts, chosen, strict=True) for _ in ps]
            arrays.append(np.array(labels, dtype=np.int8))
        if len(ids):
            writer.add(arrays)
        bar.update(len(batch_prompts))
    bar.close()
    writer.finish()
    if writer.rows == 0:
        raise DumpError(f"{args.prompts}: the prompts gave no rows")

    manifest = build_manifest(args, columns, width, len(prompts))
    manifest["producer"]["vocabulary"] = write_vocabulary(tokenizer, Path(args.out))
    write_manifest_atomically(manifest_path, manifest)
    log.info(
        "wrote %d rows of width %d in %d shards to %s",
        writer.rows,
        width,
        len(columns[0].shards),
        manifest_path,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="dump_activations: %(message)s")
    args = parse_args(argv)
    try:
        dump(args)
    except DumpError as error:
        print(f"dump_activations: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
