#!/usr/bin/env python3
"""The model organism's smoke pipeline (examples/organism/run_organism.py --smoke) end to end on
the real pretrained model, its outputs checked for form (not timed, and its numbers mean
nothing), and the organism tool's errors on bad input.

Environment: CROSSCODER_BUILD (the build directory), CROSSCODER_LLAMA2C_MODEL (default
../shared/models/stories260K.bin beside the project). Exits 77 (skipped) when the model file or
torch is absent (scripts/setup_python.sh --with-torch installs torch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("CROSSCODER_BUILD", ROOT / "build"))
MODEL = Path(os.environ.get("CROSSCODER_LLAMA2C_MODEL",
                            ROOT.parent / "shared" / "models" / "stories260K.bin"))
ORGANISM = BUILD / "examples" / "llama2c_organism"
CLI = BUILD / "bin" / "crosscoder"

if not MODEL.exists():
    print(f"skipped: the model {MODEL} is absent")
    sys.exit(77)
try:
    import numpy as np
    import torch  # noqa: F401  (the fine-tune needs it)
except ImportError as error:
    print(f"skipped: {error} (scripts/setup_python.sh --with-torch)")
    sys.exit(77)


class OrganismSmoke(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory(prefix="organism-smoke-")
        cls.out = Path(cls.tmp.name) / "run"
        subprocess.run([sys.executable, ROOT / "examples" / "organism" / "run_organism.py",
                        "--model", MODEL, "--out", cls.out, "--build", BUILD, "--smoke"],
                       check=True)
        cls.results = json.loads((cls.out / "results.json").read_text())
        cls.plan = json.loads((cls.out / "plan.json").read_text())
        cls.block = cls.plan["block"]

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def run_organism(self, *args):
        return subprocess.run([ORGANISM, *map(str, args)], capture_output=True, text=True,
                              check=False)

    def test_the_fine_tuned_model_is_a_llama2c_checkpoint_of_the_same_shape(self) -> None:
        rl = self.out / "rl.bin"
        self.assertEqual(rl.stat().st_size, MODEL.stat().st_size)
        self.assertEqual(rl.read_bytes()[:28], MODEL.read_bytes()[:28])
        self.assertNotEqual(rl.read_bytes(), MODEL.read_bytes())
        curve = self.results["rl_curve"]
        self.assertTrue(curve and all(np.isfinite(e["kl"]) and 0 <= e["reward"] <= 1
                                      for e in curve))

    def test_the_captures_are_datasets_the_library_reads(self) -> None:
        for name, labelled in ((f"capture_every_b{self.block}", False),
                               (f"capture_last_b{self.block}", True),
                               (f"capture_contrast_b{self.block}", True)):
            manifest = self.out / name / "manifest.json"
            info = subprocess.run([CLI, "info", manifest], capture_output=True, text=True,
                                  check=False)
            self.assertEqual(info.returncode, 0, info.stderr)
            data = json.loads(manifest.read_text())
            self.assertEqual([s["name"] for s in data["sources"]], ["base", "rl"])
            self.assertEqual(data["width"], 64)
            self.assertEqual("labels" in data, labelled)
        contrast = self.out / "prompts" / "contrast.npy"
        rows = json.loads((self.out / f"capture_contrast_b{self.block}" /
                           "manifest.json").read_text())
        self.assertEqual(sum(s["rows"] for s in rows["sources"][0]["shards"]),
                         len(np.load(contrast)))

    def test_the_captures_carry_one_document_per_prompt(self) -> None:
        prompts = self.out / "prompts"
        for name, files, last in ((f"capture_every_b{self.block}",
                                   ["text.npy", "capture_train.npy"], False),
                                  (f"capture_last_b{self.block}", ["capture_last.npy"], True),
                                  (f"capture_contrast_b{self.block}", ["contrast.npy"], True)):
            data = json.loads((self.out / name / "manifest.json").read_text())
            self.assertEqual(data["document_ids"]["dtype"], "int32", name)
            ids = np.concatenate([np.load(self.out / name / shard["path"])
                                  for shard in data["document_ids"]["shards"]])
            # A prompt's tokens end at its first -1 (padding); prompts are numbered across files.
            lengths = [1 if last else next((t for t, v in enumerate(row) if v < 0), len(row))
                       for file in files for row in np.load(prompts / file)]
            np.testing.assert_array_equal(ids, np.repeat(np.arange(len(lengths)), lengths),
                                          err_msg=name)

    def test_several_blocks_in_one_pass_equal_single_block_captures(self) -> None:
        contrast = self.out / "prompts" / "contrast.npy"
        rl = self.out / "rl.bin"

        def column(directory: Path, name: str) -> "np.ndarray":
            data = json.loads((directory / "manifest.json").read_text())
            source = next(s for s in data["sources"] if s["name"] == name)
            return np.concatenate([np.load(directory / shard["path"]) for shard in source["shards"]])

        many = self.out / "blocks-0-2-4"
        result = self.run_organism("capture", "--base", MODEL, "--rl", rl, "--blocks", "0,2,4",
                                   "--prompts", contrast, "--positions", "last", "--out", many)
        self.assertEqual(result.returncode, 0, result.stderr)
        names = [s["name"] for s in json.loads((many / "manifest.json").read_text())["sources"]]
        self.assertEqual(names, ["base.block0", "base.block2", "base.block4",
                                 "rl.block0", "rl.block2", "rl.block4"])
        for block in (0, 4):
            one = self.out / f"block-{block}"
            result = self.run_organism("capture", "--base", MODEL, "--rl", rl, "--block", block,
                                       "--prompts", contrast, "--positions", "last", "--out", one)
            self.assertEqual(result.returncode, 0, result.stderr)
            for model in ("base", "rl"):
                np.testing.assert_array_equal(column(many, f"{model}.block{block}"),
                                              column(one, model), err_msg=f"{model} {block}")
        self.assertFalse(np.array_equal(column(many, "rl.block0"), column(many, "rl.block4")))
        for blocks, message in (("1,1", "twice"), ("0,x", "'x' is not a block"), ("9", "out of range")):
            result = self.run_organism("capture", "--base", MODEL, "--rl", rl, "--blocks", blocks,
                                       "--prompts", contrast, "--out", self.out / "bad-blocks")
            self.assertEqual(result.returncode, 1, blocks)
            self.assertIn(message, result.stderr, blocks)

    def test_the_probes_pick_a_block_and_every_crosscoder_kind_is_trained(self) -> None:
        probes = json.loads((self.out / "probe.json").read_text())["probes"]
        for model in ("base", "rl"):
            self.assertEqual(sorted(probes[model], key=int), ["0", "1", "2", "3", "4"])
            for entry in probes[model].values():
                self.assertTrue(0 <= entry["call"] <= 1 and 0 <= entry["tool"] <= 1)
        self.assertIn(self.block, range(5))
        kinds = {c["kind"] for c in self.plan["crosscoders"]}
        self.assertEqual(kinds, {"dfc", "batchtopk", "matryoshka", "multilayer"})
        multilayer = self.results["crosscoders"]["multilayer_every_s0"]
        self.assertEqual(len(multilayer["decoder_norm"]), 10)  # 2 models x 5 blocks
        self.assertIn(multilayer["carried_by"], multilayer["sources"])
        dfc = self.results["crosscoders"]["dfc_every_s0"]
        self.assertEqual(dfc["pool"], "RL-exclusive")
        phases = json.loads((self.out / "phases.json").read_text())
        for phase in ("prompts", "rl", "probe", "capture", "train", "steer", "text_cost"):
            self.assertIn(phase, phases)

    def test_every_steering_cell_is_well_formed(self) -> None:
        steering = self.results["steering"]
        self.assertGreaterEqual(len(steering), 20)
        self.assertTrue({"top", "top_clamp", "top2", "top32"} <=
                        {cell["role"] for cell in steering.values()})
        self.assertIn("dfc_every_s0.random_rl_exclusive", steering)
        self.assertIn("dfc_every_s0.base_exclusive_in_base", steering)
        self.assertIn("batchtopk_every_s0.frequency_matched", steering)
        for name, cell in steering.items():
            self.assertEqual(cell["alpha"], [0, 1, 2, 4, 8, 16, 32, 64], name)
            self.assertGreater(cell["prompts"], 0, name)
            for mean, low, high in cell["correct"]:
                self.assertTrue(0 <= low <= mean <= high <= 1, f"{name}: {mean} [{low}, {high}]")
            for mean, low, high in cell["effect"]:
                self.assertTrue(-1 <= low <= mean <= high <= 1, f"{name}: {mean} [{low}, {high}]")
            if cell["intervention"] == "scale":  # α = 1 is the unsteered model
                self.assertEqual(cell["effect"][1][0], 0.0, name)
            self.assertTrue(0 <= cell["fires"] <= 1, name)
        for path in (self.out / "steering").glob("*.json"):
            cell = json.loads(path.read_text())
            steered = not path.name.startswith("unsteered")
            # Steering is paired: the other source's model ran in lockstep.
            self.assertEqual(cell["pairing"], "paired" if steered else "none", path)
            self.assertEqual(bool(cell["paired_model"]), steered, path)
            for entry in cell["cells"]:
                self.assertEqual(len(entry["correct"]), len(cell["tools"]), path)
                self.assertEqual(len(entry["call"]), len(cell["tools"]), path)
                if not steered:
                    continue
                # f_j > 0 counts per prompt, between none and every steered latent
                self.assertEqual(len(entry["active"]), len(cell["tools"]), path)
                self.assertTrue(all(0 <= n <= len(cell["latents"]) for n in entry["active"]))
                self.assertAlmostEqual(entry["any_active_rate"],
                                       np.mean(np.array(entry["active"]) > 0), places=9)
                self.assertAlmostEqual(entry["active_rate"],
                                       np.mean(entry["active"]) / len(cell["latents"]),
                                       places=9)
            if steered:  # f_j is computed before steering: the same for every α
                self.assertEqual(len({tuple(e["active"]) for e in cell["cells"]}), 1, path)
                self.assertEqual(cell["kind"], "clamp" if ".top_clamp" in path.name else "scale")
        report = (self.out / "report.md").read_text()
        self.assertIn("Smoke run", report)
        self.assertIn("Bonferroni", report)
        self.assertTrue((self.out / "steering.svg").read_text().startswith("<svg"))

    def test_the_language_cost_is_zero_unsteered_and_positive_otherwise(self) -> None:
        costs = list((self.out / "text_cost").glob("*.json"))
        self.assertGreaterEqual(len(costs), 10)
        for path in costs:
            cost = json.loads(path.read_text())
            by_alpha = {cell["alpha"]: cell for cell in cost["cells"]}
            if cost["kind"] == "scale":
                self.assertEqual(by_alpha[1]["kl"], 0.0, path)  # α = 1 changes nothing
            for cell in cost["cells"]:
                self.assertEqual(len(cell["kl_per_sequence"]), cost["sequences"], path)
                self.assertTrue(all(v >= -1e-9 for v in cell["kl_per_sequence"]), path)
                self.assertTrue(0 <= cell["active_rate"] <= 1, path)
            if by_alpha[64]["active_rate"] > 0:
                self.assertGreater(by_alpha[64]["kl"], 0.0, path)

    def test_bad_input_gets_a_clear_error(self) -> None:
        crosscoder = next((self.out / "crosscoders").glob("dfc_every*.safetensors"))
        prompts = self.out / "prompts" / "eval_near.npy"
        convention = self.out / "prompts" / "convention.json"
        common = ["--crosscoder", crosscoder, "--prompts", prompts, "--convention", convention,
                  "--out", self.out / "bad.json", "--paired-model", self.out / "rl.bin"]
        block = self.block
        result = self.run_organism("steer", "--model", MODEL, "--block", block, "--latents",
                                   99999, *common)
        self.assertEqual(result.returncode, 1)
        self.assertIn("99999", result.stderr)
        result = self.run_organism("steer", "--model", MODEL, "--block", 7, "--latents", 0,
                                   *common)
        self.assertEqual(result.returncode, 1)
        self.assertIn("--block 7 is out of range", result.stderr)
        unpaired = common[:-2]
        result = self.run_organism("steer", "--model", MODEL, "--block", block, "--latents", 0,
                                   *unpaired)
        self.assertEqual(result.returncode, 1)
        self.assertIn("--paired-model", result.stderr)
        result = self.run_organism("steer", "--model", MODEL, "--block", block, "--latents", 0,
                                   *common, "--unpaired")
        self.assertEqual(result.returncode, 1)
        self.assertIn("exclude each other", result.stderr)
        truncated = self.out / "truncated.bin"
        truncated.write_bytes(MODEL.read_bytes()[:50000])
        result = self.run_organism("steer", "--model", truncated, "--block", block, "--latents", 0,
                                   *common)
        self.assertEqual(result.returncode, 1)
        self.assertIn(str(truncated), result.stderr)
        result = self.run_organism("steer", "--model", MODEL, "--block", block, "--latents", 0,
                                   *common, "--kind", "clamp", "--units", "1,2")
        self.assertEqual(result.returncode, 1)
        self.assertIn("--units gives 2 values for 1 latents", result.stderr)
        result = self.run_organism("steer", "--model", MODEL, "--block", block, "--latents", 0,
                                   *common, "--kind", "boost")
        self.assertEqual(result.returncode, 1)
        self.assertIn("--kind must be scale or clamp", result.stderr)
        result = self.run_organism("text-cost", "--model", MODEL, "--block", block, "--latents",
                                   0, "--crosscoder", crosscoder, "--text",
                                   self.out / "prompts" / "text.npy", "--out",
                                   self.out / "bad.json")
        self.assertEqual(result.returncode, 1)
        self.assertIn("--paired-model or --unpaired", result.stderr)
        result = self.run_organism("capture", "--base", MODEL, "--rl", MODEL, "--block", 5,
                                   "--prompts", prompts, "--out", self.out / "bad")
        self.assertEqual(result.returncode, 1)
        self.assertIn("out of range", result.stderr)


if __name__ == "__main__":
    unittest.main()
