#!/usr/bin/env python3
"""The llama2.c engine of examples/llama2c against the float64 numpy reference
(examples/llama2c/reference_forward.py) on a real pretrained model, and its errors on bad input.

Environment: CROSSCODER_LLAMA2C_RUN (the built llama2c_run), CROSSCODER_LLAMA2C_MODEL (the
checkpoint; default ../shared/models/stories260K.bin beside the project). Exits 77 (skipped)
when the model file is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = os.environ.get("CROSSCODER_LLAMA2C_RUN", "")
MODEL = Path(os.environ.get("CROSSCODER_LLAMA2C_MODEL",
                            ROOT.parent / "shared" / "models" / "stories260K.bin"))
sys.path.insert(0, str(ROOT / "examples" / "llama2c"))

try:
    import numpy as np
    import reference_forward
except ImportError as error:  # pragma: no cover - reported as skipped
    print(f"skipped: {error}")
    sys.exit(77)


class Llama2cEngine(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory(prefix="llama2c-test-")
        cls.dir = Path(cls.tmp.name)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def run_tool(self, *args, expect_ok=True):
        result = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True,
                                check=False)
        if expect_ok:
            self.assertEqual(result.returncode, 0, result.stderr)
        return result

    def test_logits_and_block_outputs_match_the_float64_reference(self) -> None:
        config, weights = reference_forward.load(MODEL)
        rng = np.random.default_rng()
        length = int(rng.integers(40, 120))
        tokens = [1] + [int(t) for t in rng.integers(0, config["vocab"], size=length - 1)]
        block = int(rng.integers(0, config["layers"]))
        text = ",".join(map(str, tokens))
        self.run_tool(MODEL, "--tokens", text, "--logits", self.dir / "logits.npy",
                      "--block", block, "--states", self.dir / "states.npy")
        got_logits = np.load(self.dir / "logits.npy")
        got_states = np.load(self.dir / "states.npy")
        want_logits, want_states = reference_forward.forward(config, weights, tokens, block)
        self.assertEqual(got_logits.shape, want_logits.shape)
        self.assertEqual(got_states.shape, want_states.shape)
        # float32 precision: errors of a few ulps of the largest values, accumulated over five
        # blocks and the sequence.
        for name, got, want in (("logits", got_logits, want_logits),
                                ("states", got_states, want_states)):
            error = np.max(np.abs(got - want)) / np.max(np.abs(want))
            self.assertLess(error, 2e-5, f"{name}: max relative error {error:.2e} "
                            f"({length} tokens, block {block})")
        # the same greedy choice at (nearly) every position
        agree = np.mean(np.argmax(got_logits, 1) == np.argmax(want_logits, 1))
        self.assertGreater(agree, 0.97)

    def test_greedy_generation_is_deterministic_and_sampling_follows_the_seed(self) -> None:
        greedy = [self.run_tool(MODEL, "--tokens", "1", "--generate", 30).stdout for _ in range(2)]
        self.assertEqual(greedy[0], greedy[1])
        self.assertEqual(len(greedy[0].split()), 30)
        sampled = [self.run_tool(MODEL, "--tokens", "1", "--generate", 30, "--temperature", 0.8,
                                 "--seed", seed).stdout for seed in (3, 3, 4)]
        self.assertEqual(sampled[0], sampled[1])
        self.assertNotEqual(sampled[0], sampled[2])
        # greedy decoding is the reference's argmax, token by token
        config, weights = reference_forward.load(MODEL)
        tokens = [1]
        for _ in range(10):
            logits, _ = reference_forward.forward(config, weights, tokens)
            tokens.append(int(np.argmax(logits[-1])))
        self.assertEqual(greedy[0].split()[:10], [str(t) for t in tokens[1:]])

    def test_bad_input_gets_a_clear_error(self) -> None:
        raw = MODEL.read_bytes()
        truncated = self.dir / "truncated.bin"
        truncated.write_bytes(raw[: len(raw) - 100])
        result = self.run_tool(truncated, "--tokens", "1", expect_ok=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn("truncated", result.stderr)
        self.assertIn(str(truncated), result.stderr)
        longer = self.dir / "longer.bin"
        longer.write_bytes(raw + b"\0" * 8)
        self.assertIn("trailing data", self.run_tool(longer, "--tokens", "1",
                                                     expect_ok=False).stderr)
        garbage = self.dir / "garbage.bin"
        garbage.write_bytes(b"\xff" * 64)
        self.assertIn("not a llama2.c checkpoint",
                      self.run_tool(garbage, "--tokens", "1", expect_ok=False).stderr)
        self.assertIn("block 9 is out of range",
                      self.run_tool(MODEL, "--tokens", "1", "--block", 9, "--states",
                                    self.dir / "s.npy", expect_ok=False).stderr)
        self.assertIn("token 512 is out of range",
                      self.run_tool(MODEL, "--tokens", "1,512", expect_ok=False).stderr)


if __name__ == "__main__":
    if not TOOL or not Path(TOOL).exists():
        sys.exit(f"CROSSCODER_LLAMA2C_RUN must name the built llama2c_run, not '{TOOL}'")
    if not MODEL.exists():
        print(f"skipped: {MODEL} is absent (Karpathy's stories260K.bin from "
              "huggingface.co/karpathy/tinyllamas; set CROSSCODER_LLAMA2C_MODEL)")
        sys.exit(77)
    unittest.main()
