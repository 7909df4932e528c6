"""Tests of examples/python/dump_activations.py on a tiny, randomly initialised Llama pair.

The pair and its word-level tokenizer are built here (nothing is downloaded); the "tuned" model
is the base with perturbed weights. Each test dumps a dataset, checks its manifest against
docs/formats.md ("Dataset manifests") and compares the rows with hidden states computed here,
one unpadded prompt at a time.

Run: .venv/bin/python tests/python/test_dump_activations.py
Exits 77 (ctest: skipped) when torch or transformers is missing. When CROSSCODER_CLI names the
crosscoder tool and it has an `info` command, the dumped manifest is also opened with it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any

try:
    import numpy as np
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
except ImportError as error:  # pragma: no cover - depends on the environment
    MISSING = (
        f"{error.name} is not installed: run scripts/setup_python.sh --with-torch "
        "to enable this test"
    )
else:
    MISSING = ""

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "python" / "dump_activations.py"

VOCAB = 300
BOS, EOS = 1, 2
PROMPTS = [  # (text, label): lengths 1 to 9 words, so batches need padding
    ("w10 w11 w12", 1),
    ("w200", 0),
    ("w5 w6 w7 w8 w9 w10 w11 w12 w13", 1),
    ("w42 w43", 0),
    ("w100 w101 w102 w103 w104", 1),
    ("w7 unknownword w7", 0),
    ("w299 w298 w297 w296", 1),
]
Models = tuple[Path, Path] | None  # (base, tuned) model directories
# Per stored dtype: (relative, absolute) tolerance against float32 hidden states.
TOLERANCE = {"f32": (1e-5, 1e-5), "f16": (2e-3, 1e-3), "bf16": (1e-2, 1e-2)}
NPY_DTYPES = {
    "f32": ["<f4"],
    "f16": ["<f2"],
    "bf16": ["<u2", "<i2"],
    "int8": ["|i1"],
    "int32": ["<i4"],
}


def load_dump_module() -> Any:
    spec = importlib.util.spec_from_file_location("dump_activations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def build_tokenizer(directory: Path, extra_word: str | None = None) -> None:
    """A word-level tokenizer over "w3" … "w299" that prepends BOS, like Llama's (no pad token)."""
    vocab = {"<unk>": 0, "<s>": BOS, "</s>": EOS}
    vocab.update({f"w{i}": i for i in range(3, VOCAB)})
    if extra_word is not None:  # a different vocabulary, for the mismatch test
        vocab[extra_word] = vocab.pop("w299")
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", BOS)]
    )
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    wrapped.save_pretrained(directory)


def build_model_pair(root: Path, kind: str = "llama") -> tuple[Path, Path]:
    """Saves a random 2-block model of width 32 and a perturbed copy, each with the tokenizer.

    kind "llama" (rotary positions) or "gpt2" (learnt absolute positions, which left padding
    would shift unless the dumper passes position ids).
    """
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=BOS,
            eos_token_id=EOS,
            tie_word_embeddings=False,
            # Large weights make attention (and so padding) matter to every row.
            initializer_range=0.3,
        )
    else:
        config = transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=BOS,
            eos_token_id=EOS,
            initializer_range=0.3,
        )
    base = transformers.AutoModelForCausalLM.from_config(config).eval()
    tuned = transformers.AutoModelForCausalLM.from_config(config).eval()
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        for parameter in tuned.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    paths = (root / f"{kind}-base", root / f"{kind}-tuned")
    for model, path in zip((base, tuned), paths, strict=True):
        model.save_pretrained(path)
        build_tokenizer(path)
    return paths


def reference_rows(
    model_dir: Path, layer: int, positions: str, skip_bos: bool, texts: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """hidden_states[layer + 1] of each prompt run alone: (rows [N, d], token ids [N])."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows, ids = [], []
    for text in texts:
        input_ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            states = model(input_ids=input_ids, output_hidden_states=True).hidden_states
        hidden = states[layer + 1][0].numpy()
        selected = list(range(input_ids.shape[1]))
        if positions == "last":
            selected = selected[-1:]
        elif skip_bos and input_ids[0, 0] == BOS:
            selected = selected[1:]
        rows.append(hidden[selected])
        ids.append(input_ids[0, selected].numpy())
    return np.concatenate(rows), np.concatenate(ids)


def load_column(directory: Path, column: dict[str, Any], width: int | None) -> np.ndarray:
    """Checks a manifest column's shards against its dtype and rows; returns them concatenated."""
    parts = []
    for shard in column["shards"]:
        path = directory / shard["path"]
        assert path.is_file(), f"{path}: missing"
        array = np.load(path, mmap_mode="r")
        assert array.dtype.str in NPY_DTYPES[column["dtype"]], f"{path}: dtype {array.dtype.str}"
        expected = (shard["rows"], width) if width is not None else (shard["rows"],)
        assert array.shape == expected, f"{path}: shape {array.shape}, expected {expected}"
        assert array.flags.c_contiguous, f"{path}: not C order"
        parts.append(np.asarray(array))
    return np.concatenate(parts)


def validate_manifest(directory: Path) -> dict[str, Any]:
    """Checks manifest.json against docs/formats.md; returns it with the columns' arrays."""
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format"] == "crosscoder-activations-1"
    width = manifest["width"]
    assert isinstance(width, int) and width > 0
    sources = manifest["sources"]
    names = [s["name"] for s in sources]
    assert len(sources) >= 1 and all(names) and len(set(names)) == len(names)
    columns = list(sources)
    for key in ["labels", "token_ids", "document_ids"]:
        if key in manifest:
            columns.append(manifest[key])
    shard_rows = [[shard["rows"] for shard in column["shards"]] for column in columns]
    assert all(rows == shard_rows[0] for rows in shard_rows), f"shard rows differ: {shard_rows}"
    assert all(isinstance(r, int) and r > 0 for r in shard_rows[0])
    for source in sources:
        assert source["dtype"] in ("f32", "f16", "bf16")
    arrays = {s["name"]: load_column(directory, s, width) for s in sources}
    if "labels" in manifest:
        assert manifest["labels"]["dtype"] in ("int8", "int32")
        arrays["labels"] = load_column(directory, manifest["labels"], None)
    for key in ["token_ids", "document_ids"]:
        if key in manifest:
            assert manifest[key]["dtype"] == "int32"
            arrays[key] = load_column(directory, manifest[key], None)
    manifest["arrays"] = arrays
    return manifest


def as_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


@unittest.skipIf(MISSING, MISSING)
class DumpActivationsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls._tmp = tempfile.TemporaryDirectory(prefix="crosscoder-dump-")
        cls.root = Path(cls._tmp.name)
        cls.base, cls.tuned = build_model_pair(cls.root)
        cls.jsonl = cls.root / "prompts.jsonl"
        cls.jsonl.write_text(
            "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in PROMPTS)
        )
        cls.txt = cls.root / "prompts.txt"
        cls.txt.write_text("".join(t + "\n\n" for t, _ in PROMPTS))  # blank lines are skipped
        cls.dump = load_dump_module()
        cls.runs = 0

    @classmethod
    def tearDownClass(cls) -> None:
        cls._tmp.cleanup()

    def argv(self, options: str, prompts: Path, out: Path, models: Models = None) -> list[str]:
        """The dumper's arguments: `options` (flags without paths, split at spaces), the prompts,
        the output directory and the models (default: the Llama pair)."""
        base, tuned = models or (self.base, self.tuned)
        paths = ["--base", str(base), "--tuned", str(tuned), "--prompts", str(prompts)]
        return [*paths, "--out", str(out), "--device", "cpu", *options.split()]

    def run_dump(self, options: str, prompts: Path, models: Models = None) -> Path:
        """Runs the dumper in this process; returns the output directory."""
        type(self).runs += 1
        out = self.root / f"out-{self.runs}"
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = self.dump.main(self.argv(options, prompts, out, models))
        self.assertEqual(status, 0, stderr.getvalue())
        return out

    def check_dataset(
        self,
        out: Path,
        *,
        dtype: str,
        positions: str,
        skip_bos: bool = False,
        layers: tuple[int, int] = (0, 0),
        labelled: bool = True,
        models: Models = None,
    ) -> dict[str, Any]:
        manifest = validate_manifest(out)
        self.assertEqual(manifest["width"], 32)
        self.assertEqual([s["name"] for s in manifest["sources"]], ["base", "tuned"])
        self.assertTrue(all(s["dtype"] == dtype for s in manifest["sources"]))
        self.assertEqual("labels" in manifest, labelled)
        texts = [t for t, _ in PROMPTS]
        arrays = manifest["arrays"]
        rtol, atol = TOLERANCE[dtype]
        model_dirs = models or (self.base, self.tuned)
        for name, model_dir, layer in zip(("base", "tuned"), model_dirs, layers, strict=True):
            expected, ids = reference_rows(model_dir, layer, positions, skip_bos, texts)
            np.testing.assert_allclose(
                as_float32(arrays[name], dtype),
                expected,
                rtol=rtol,
                atol=atol,
                err_msg=f"source {name}",
            )
            np.testing.assert_array_equal(arrays["token_ids"], ids)
        # The two sources differ (the tuned model's weights were perturbed).
        self.assertGreater(
            np.abs(as_float32(arrays["base"], dtype) - as_float32(arrays["tuned"], dtype)).max(),
            1e-2,
        )
        tokens_per_prompt = [len(t.split()) + 1 for t in texts]  # + BOS
        if positions == "last":
            tokens_per_prompt = [1] * len(texts)
        elif skip_bos:
            tokens_per_prompt = [n - 1 for n in tokens_per_prompt]
        # Every prompt is a document, numbered in file order.
        self.assertEqual(arrays["document_ids"].dtype, np.int32)
        expected_documents = np.repeat(np.arange(len(texts)), tokens_per_prompt)
        np.testing.assert_array_equal(arrays["document_ids"], expected_documents)
        if labelled:
            expected_labels = np.repeat([y for _, y in PROMPTS], tokens_per_prompt)
            self.assertEqual(arrays["labels"].dtype, np.int8)
            np.testing.assert_array_equal(arrays["labels"], expected_labels)
        return manifest

    def test_all_positions_float32_right_padding_several_shards(self) -> None:
        options = "--layer 0 --dtype f32 --shard-rows 7 --batch-size 3 --padding-side right"
        out = self.run_dump(options, self.jsonl)
        manifest = self.check_dataset(out, dtype="f32", positions="all")
        rows = [shard["rows"] for shard in manifest["sources"][0]["shards"]]
        total = sum(len(t.split()) + 1 for t, _ in PROMPTS)
        self.assertEqual(sum(rows), total)
        self.assertEqual(rows, [7] * (total // 7) + ([total % 7] if total % 7 else []))
        self.assertEqual(manifest["sources"][0]["shards"][0]["path"], "base-00000.npy")
        self.assertFalse(list(out.glob("*.tmp")))
        self.assertEqual(manifest["producer"]["layers"], {"base": 0, "tuned": 0})
        # The vocabulary beside the dataset: the fast tokenizer's tokenizer.json.
        self.assertEqual(manifest["producer"]["vocabulary"], "tokenizer.json")
        vocabulary = json.loads((out / "tokenizer.json").read_text())
        self.assertEqual(vocabulary["model"]["vocab"]["w3"], 3)
        self.check_with_cli(out, manifest["arrays"]["labels"])
        self.check_examples_show_text(out)

    def test_all_positions_left_padding_bf16_skip_bos_different_layers(self) -> None:
        options = "--layer 0 --layer-tuned 1 --dtype bf16 --skip-bos --batch-size 4"
        out = self.run_dump(options + " --padding-side left", self.jsonl)
        manifest = self.check_dataset(
            out, dtype="bf16", positions="all", skip_bos=True, layers=(0, 1)
        )
        self.assertNotIn(BOS, manifest["arrays"]["token_ids"])
        self.assertEqual(manifest["arrays"]["base"].dtype, np.uint16)
        self.check_with_cli(out, manifest["arrays"]["labels"])

    def test_last_position_both_padding_sides(self) -> None:
        for side in ["left", "right"]:
            with self.subTest(padding_side=side):
                options = (
                    f"--layer 1 --positions last --dtype f16 --batch-size 7 --padding-side {side}"
                )
                out = self.run_dump(options, self.txt)
                manifest = self.check_dataset(
                    out, dtype="f16", positions="last", layers=(1, 1), labelled=False
                )
                last_words = [
                    int(t.split()[-1][1:]) if t.split()[-1].startswith("w") else 0
                    for t, _ in PROMPTS
                ]
                np.testing.assert_array_equal(manifest["arrays"]["token_ids"], last_words)

    def test_absolute_positions_with_left_padding(self) -> None:
        models = build_model_pair(self.root, "gpt2")
        for side in ["left", "right"]:
            with self.subTest(padding_side=side):
                options = f"--layer 1 --batch-size 7 --padding-side {side}"
                out = self.run_dump(options, self.jsonl, models)
                self.check_dataset(out, dtype="f32", positions="all", layers=(1, 1), models=models)

    def test_embedding_layer(self) -> None:
        out = self.run_dump("--layer -1 --positions last", self.txt)
        self.check_dataset(out, dtype="f32", positions="last", layers=(-1, -1), labelled=False)

    def test_refuses_existing_dataset_and_bad_layer(self) -> None:
        out = self.run_dump("--layer 0", self.txt)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            self.assertEqual(self.dump.main(self.argv("--layer 0", self.txt, out)), 1)
            self.assertIn("manifest.json exists", stderr.getvalue())
            argv = self.argv("--layer 2 --overwrite", self.txt, out)
            self.assertEqual(self.dump.main(argv), 1)
        self.assertIn("layer 2 is out of range", stderr.getvalue())

    def test_bad_prompt_file_names_the_line(self) -> None:
        bad = self.root / "bad.jsonl"
        bad.write_text('{"text": "w3", "label": 1}\n{"text": "w4", "label": "yes"}\n')
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = self.dump.main(self.argv("--layer 0", bad, self.root / "bad"))
        self.assertEqual(status, 1)
        self.assertIn(f"{bad}:2", stderr.getvalue())

    def test_tokenizer_mismatch_is_refused(self) -> None:
        other = self.root / "other"
        transformers.AutoModelForCausalLM.from_pretrained(self.tuned).save_pretrained(other)
        build_tokenizer(other, extra_word="different")
        out = self.root / "mismatch"
        argv = self.argv("--layer 0", self.txt, out, models=(self.base, other))
        command = [sys.executable, str(SCRIPT), *argv]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(f"the tokenizers of {self.base} and {other} differ", result.stderr)
        self.assertFalse((out / "manifest.json").exists())

    def check_with_cli(self, out: Path, labels: np.ndarray) -> None:
        """Opens the dataset with `crosscoder info --check` and trains a few steps on it, when
        CROSSCODER_CLI names the crosscoder tool."""
        cli = os.environ.get("CROSSCODER_CLI")
        if not cli or not Path(cli).is_file():
            return
        manifest = str(out / "manifest.json")
        info = subprocess.run(
            [cli, "info", manifest, "--check"], capture_output=True, text=True, check=False
        )
        self.assertEqual(info.returncode, 0, info.stdout + info.stderr)
        self.assertIn("every value is finite", info.stdout)
        self.assertIn("document ids: int32", info.stdout)
        positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
        self.assertIn(f"labels: {positives} positive, {negatives} negative", info.stdout)
        options = "--latents 16 --k 2 --steps 3 --batch 8 --device cpu"
        command = [cli, "train", "--data", manifest, *options.split()]
        command += ["--out", str(out / "model.safetensors")]
        train = subprocess.run(command, capture_output=True, text=True, check=False)
        self.assertEqual(train.returncode, 0, train.stdout + train.stderr)
        self.assertIn("final step 3", train.stdout + train.stderr)

    def check_examples_show_text(self, out: Path) -> None:
        """`crosscoder diff --examples` on the dump, then `crosscoder examples --vocab` with the
        dumped tokenizer.json shows the prompts' words (w3 ... w299)."""
        cli = os.environ.get("CROSSCODER_CLI")
        if not cli or not Path(cli).is_file():
            return
        examples = out / "examples.safetensors"
        command = [cli, "diff", str(out / "model.safetensors"), "--data", str(out / "manifest.json"),
                   "--examples", "3", "--examples-out", str(examples), "--device", "cpu"]
        diff = subprocess.run(command, capture_output=True, text=True, check=False)
        self.assertEqual(diff.returncode, 0, diff.stdout + diff.stderr)
        outputs = []
        for latent in range(16):  # the model's 16 latents; some never fire after 3 steps
            shown = subprocess.run([cli, "examples", str(examples), "--latent", str(latent),
                                    "--vocab", str(out / "tokenizer.json")],
                                   capture_output=True, text=True, check=False)
            self.assertEqual(shown.returncode, 0, shown.stdout + shown.stderr)
            outputs.append(shown.stdout)
        self.assertRegex("".join(outputs), r"\bw[0-9]+")


if __name__ == "__main__":
    if MISSING:
        print(f"skipped: {MISSING}")
        sys.exit(77)
    unittest.main(verbosity=2)
