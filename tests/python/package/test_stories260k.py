"""crosscoder.hf on the real pretrained stories260K through the project's PyTorch port of the
llama2.c model (examples/organism/llama2c_torch.py): captured rows equal the port's own block
output and a float64 reference forward, and steering through the hook equals the C++ Steerer
applied to the same rows. Skipped when ../shared/models/stories260K.bin is absent."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import crosscoder as cc  # noqa: E402
from crosscoder import hf  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
MODEL = Path(os.environ.get("CROSSCODER_LLAMA2C_MODEL",
                            ROOT.parent / "shared" / "models" / "stories260K.bin"))
if not MODEL.exists():
    pytest.skip(f"the model {MODEL} is absent", allow_module_level=True)
sys.path.insert(0, str(ROOT / "examples" / "organism"))
sys.path.insert(0, str(ROOT / "examples" / "llama2c"))
import llama2c_torch  # noqa: E402
import reference_forward  # noqa: E402

BLOCK = 2


@pytest.fixture(scope="module")
def port():
    return llama2c_torch.load(MODEL).eval()


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(11)
    ids = rng.integers(3, 512, size=(4, 24))
    ids[:, 0] = 1  # BOS
    return torch.as_tensor(ids)


def test_captured_rows_are_the_block_output_of_the_port_and_the_reference(port, tokens):
    rows, token_ids, sequence = hf.capture_rows([port, port], tokens, block=BLOCK)
    with torch.no_grad():
        _, states = port(tokens, block=BLOCK)
    np.testing.assert_array_equal(rows[:, 0], states.reshape(-1, states.shape[-1]).numpy())
    config, weights = reference_forward.load(MODEL)
    _, reference = reference_forward.forward(config, weights, tokens[0].tolist(), block=BLOCK)
    np.testing.assert_allclose(rows[: tokens.shape[1], 1], reference, atol=2e-5)
    np.testing.assert_array_equal(token_ids, tokens.reshape(-1).numpy())


def test_steering_through_the_hook_equals_the_cpp_steerer(port, tokens):
    rows, _, _ = hf.capture_rows([port, port], tokens, block=BLOCK)
    model = cc.Crosscoder(cc.CrosscoderConfig(sources=2, width=64, latents=256, k=8,
                                              activation="topk"), backend="cpu", seed=5)
    trainer = cc.Trainer(model, cc.TrainConfig(steps=30, batch_size=48, warmup_steps=3))
    rng = np.random.default_rng(0)
    for _ in range(30):
        trainer.step(rows[rng.integers(0, len(rows), 48)])
    interventions = [cc.Intervention("scale", latent=int(np.argmax(model.encode_dense(rows).sum(0))),
                                     strength=16.0),
                     cc.Intervention("add", latent=3, strength=1.5)]
    seen = {}
    with hf.steer(port, model, source=1, block=BLOCK, interventions=interventions,
                  positions="prompt"):
        handle = port.layers[BLOCK].register_forward_hook(
            lambda _m, _a, out: seen.__setitem__("rows", out.detach().clone()))
        try:
            with torch.no_grad():
                port(tokens)
        finally:
            handle.remove()
    reference = cc.Steerer(model, 1, interventions, positions="prompt")
    for b in range(tokens.shape[0]):
        expected = rows[b * tokens.shape[1]:(b + 1) * tokens.shape[1], 1].copy()
        reference.apply(expected)
        np.testing.assert_allclose(seen["rows"][b].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(seen["rows"][0].numpy(), rows[: tokens.shape[1], 1])
