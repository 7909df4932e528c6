"""Steerer and Splicer from Python: in place on NumPy arrays and torch tensors (no copy),
against float64 references."""

import numpy as np
import pytest

import crosscoder as cc
from conftest import small_model


def fitted(rows, activation="relu"):
    model = small_model(activation)
    model.fit_normaliser(rows)
    return model


def test_add_moves_rows_along_the_raw_decoder_direction(rows):
    model = fitted(rows)
    x = rows[:10, 1].copy()
    before = x.copy()
    steerer = cc.Steerer(model, 1, [cc.Intervention("add", latent=7, strength=3.0)])
    steerer.apply(x)
    direction = model.raw_decoder_vectors()[7, 1].astype(np.float64)
    np.testing.assert_allclose(x, before + 3.0 * direction, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(steerer.direction(7), direction, rtol=1e-6)


def test_scale_to_zero_removes_the_latents_contribution(rows):
    model = fitted(rows, "relu")
    paired = rows[:12].copy()
    x = paired[:, 0].copy()
    steerer = cc.Steerer(model, 0, [cc.Intervention("scale", latent=5, strength=0.0)])
    f = model.encode_dense(paired)[:, 5].astype(np.float64)
    np.testing.assert_allclose(steerer.activations(x, paired)[:, 0], f, rtol=1e-4, atol=1e-5)
    steerer.apply(x, paired=paired)
    want = paired[:, 0] - f[:, None] * model.raw_decoder_vectors()[5, 0]
    np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-4)


def test_last_prompt_position_changes_only_that_row(rows):
    model = fitted(rows)
    x = rows[:6, 0].copy()
    before = x.copy()
    steerer = cc.Steerer(model, 0, [cc.Intervention("add", latent=2, strength=1.0)],
                         positions="last_prompt")
    steerer.apply(x)
    np.testing.assert_array_equal(x[:5], before[:5])
    assert not np.allclose(x[5], before[5])
    listed = cc.Steerer(model, 0, [cc.Intervention("add", latent=2)], positions=[1, 3])
    y = before.copy()
    listed.apply(y, position=np.arange(6, dtype=np.int64))
    changed = [i for i in range(6) if not np.array_equal(y[i], before[i])]
    assert changed == [1, 3]


def test_torch_tensors_are_steered_in_place():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng()
    model = small_model("relu")
    x = torch.from_numpy(rng.standard_normal((4, 16)).astype(np.float32))
    pointer = x.data_ptr()
    before = x.clone()
    cc.Steerer(model, 0, [cc.Intervention("add", latent=1, strength=2.0)]).apply(x)
    assert x.data_ptr() == pointer
    expected = before.numpy() + 2.0 * model.raw_decoder_vectors()[1, 0]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(cc.Error, match="float64"):
        cc.Steerer(model, 0, [cc.Intervention("add", latent=1)]).apply(x.double())
    with pytest.raises(cc.Error, match="C-contiguous"):
        cc.Steerer(model, 0, [cc.Intervention("add", latent=1)]).apply(torch.zeros(16, 4).T)
    # NumPy out, torch in through DLPack without a copy: the same memory.
    dense = model.encode_dense(np.ascontiguousarray(np.stack([before.numpy()] * 2, 1)))
    shared = torch.from_dlpack(dense)
    assert shared.data_ptr() == dense.__array_interface__["data"][0]
    # DLPack in, NumPy out: encode reads the tensor's memory.
    np.testing.assert_array_equal(model.encode_dense(torch.from_numpy(np.ascontiguousarray(
        np.stack([before.numpy(), before.numpy()], 1)))).shape, (4, 64))


def test_numpy_rows_are_steered_in_place_and_read_only_arrays_refused(rows):
    model = fitted(rows)
    x = rows[:3, 0].copy()
    address = x.__array_interface__["data"][0]
    cc.Steerer(model, 0, [cc.Intervention("add", latent=0)]).apply(x)
    assert x.__array_interface__["data"][0] == address
    frozen = rows[:3, 0].copy()
    frozen.flags.writeable = False
    with pytest.raises((TypeError, cc.Error)):
        cc.Steerer(model, 0, [cc.Intervention("add", latent=0)]).apply(frozen)


def test_splicing_the_reconstruction_and_the_identity(rows):
    model = fitted(rows, "topk")
    paired = rows[:8].copy()
    x = paired[:, 1].copy()
    cc.Splicer(model, 1, "reconstruction").apply(x, paired=paired)
    np.testing.assert_allclose(x, model.reconstruct(paired)[:, 1], rtol=1e-4, atol=1e-4)
    y = paired[:, 1].copy()
    cc.Splicer(model, 1, "reconstruction_plus_error").apply(y, paired=paired)
    np.testing.assert_allclose(y, paired[:, 1], rtol=1e-4, atol=1e-4)
    z = paired[:, 0].copy()
    cc.Splicer(model, 0, "zero").apply(z)
    assert not z.any()
    with pytest.raises(cc.Error, match="splice"):
        cc.Splicer(model, 0, "swap")
