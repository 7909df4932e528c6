"""Crosscoder bindings against a float64 reference computed in NumPy from the parameters."""

import json

import numpy as np
import pytest

import crosscoder as cc
from conftest import small_model


def reference_preactivations(model, x):
    p = model.parameters()
    n = model.normaliser
    xf = x.reshape(len(x), -1).astype(np.float64)
    scale = np.asarray(n["scale"], dtype=np.float64)
    if scale.size == model.config.sources:
        scale = np.repeat(scale, model.config.width)
    xn = (xf - n["mean"]) * scale
    return xn @ p["encoder_weight"].astype(np.float64).T + p["encoder_bias"], scale, n["mean"]


def reference_topk(model, x, k):
    pre, _, _ = reference_preactivations(model, x)
    act = np.maximum(pre, 0.0)
    out = np.zeros_like(act)
    for r in range(len(act)):
        top = np.argsort(-act[r], kind="stable")[:k]
        out[r, top] = act[r, top]
    return out


def test_backends_list_the_cpu():
    kinds = {b["kind"]: b for b in cc.available_backends()}
    assert kinds["cpu"]["usable"] and kinds["cpu"]["built"]
    assert "cuda" in kinds
    best = cc.best_backend()
    assert best.kind in ("cpu", "cuda")
    assert cc.make_backend("cpu").kind == "cpu"
    with pytest.raises(cc.Error, match="tpu"):
        cc.make_backend("tpu")


def test_config_round_trips_through_json_and_rejects_bad_values():
    config = cc.CrosscoderConfig(sources=2, width=8, latents=32, activation="topk", k=3,
                                 exclusive=[4, 4], normalisation="per_channel")
    again = cc.CrosscoderConfig.from_json(config.to_json())
    assert json.loads(again.to_json()) == json.loads(config.to_json())
    assert again.activation == "topk" and again.exclusive == [4, 4]
    owners = [config.exclusive_owner(f) for f in range(32)]
    assert config.shared_latents == 24
    assert owners.count(-1) == 24 and owners.count(0) == 4 and owners.count(1) == 4
    with pytest.raises(cc.Error, match="softmax"):
        cc.CrosscoderConfig(width=8, latents=32, activation="softmax")
    with pytest.raises(cc.Error):
        cc.CrosscoderConfig(width=8, latents=0)


def test_encode_and_reconstruct_match_a_float64_reference(rows):
    model = small_model("topk", k=4)
    model.fit_normaliser(rows)
    x = rows[:200]
    dense = model.encode_dense(x)
    expected = reference_topk(model, x, 4)
    np.testing.assert_allclose(dense, expected, rtol=1e-4, atol=1e-4)

    codes = model.encode(x)
    assert codes.rows == 200 and codes.row_ptr[-1] == len(codes.values) == 200 * 4
    np.testing.assert_array_equal(codes.dense(model.config.latents), dense)

    _, scale, mean = reference_preactivations(model, x)
    p = model.parameters()
    recon_n = expected @ p["decoder_weight"].astype(np.float64) + p["decoder_bias"]
    recon = (recon_n / scale + mean).reshape(x.shape)
    np.testing.assert_allclose(model.reconstruct(x), recon, rtol=1e-3, atol=1e-3)
    # Flat rows [N, M·d] are the same rows.
    np.testing.assert_array_equal(model.encode_dense(x.reshape(200, -1)), dense)


def test_weight_metrics_match_the_decoder(rows):
    model = small_model("batchtopk")
    norms = model.decoder_norms()
    w = model.parameters()["decoder_weight"].reshape(64, 2, 16).astype(np.float64)
    np.testing.assert_allclose(norms, np.linalg.norm(w, axis=2), rtol=1e-5)
    rel = model.relative_decoder_norms()
    np.testing.assert_allclose(rel, norms / norms.sum(axis=1, keepdims=True), rtol=1e-5)
    metrics = model.weight_metrics()
    np.testing.assert_allclose(metrics.relative_norm, rel, rtol=1e-6)
    cosine = (w[:, 0] * w[:, 1]).sum(1) / np.linalg.norm(w[:, 0], axis=1) / np.linalg.norm(w[:, 1], axis=1)
    np.testing.assert_allclose(metrics.decoder_cosine, cosine, rtol=1e-4, atol=1e-6)
    assert metrics.latent_class.shape == (64,)
    np.testing.assert_array_equal(model.decoder_vectors(), w.astype(np.float32))
    # No fitted normaliser: scale 1, raw and normalised directions agree.
    np.testing.assert_array_equal(model.raw_decoder_vectors(), model.decoder_vectors())


def test_save_and_load_keep_the_encoding(tmp_path, rows):
    model = small_model("topk")
    model.fit_normaliser(rows)
    path = str(tmp_path / "model.safetensors")
    model.save(path, {"note": "from python"})
    loaded = cc.Crosscoder.load(path, backend="cpu")
    np.testing.assert_array_equal(loaded.encode_dense(rows[:50]), model.encode_dense(rows[:50]))
    assert loaded.config.to_json() == model.config.to_json()
    with pytest.raises(cc.Error, match="missing.safetensors"):
        cc.Crosscoder.load(str(tmp_path / "missing.safetensors"))


def test_bad_arrays_raise_errors_naming_the_problem(rows):
    model = small_model("topk")
    with pytest.raises(cc.Error, match="float64"):
        model.encode(rows.astype(np.float64))
    with pytest.raises(cc.Error, match="C-contiguous"):
        model.encode(np.asfortranarray(rows[:10].reshape(10, -1)))
    with pytest.raises(cc.Error, match=r"expected shape \(rows, 2, 16\) or \(rows, 32\)"):
        model.encode(rows[:, :, :8].copy())
    with pytest.raises(cc.Error, match="scalar"):
        model.encode(np.float32(1.0))
    with pytest.raises(cc.Error, match="int32"):
        model.encode(np.zeros((3, 2, 16), dtype=np.int32))


def test_outputs_are_owned_arrays_without_copies(rows):
    model = small_model("topk")
    codes = model.encode(rows[:20])
    values = codes.values
    # A view into the codes object: the same memory each time, kept alive by the array.
    assert values.__array_interface__["data"][0] == codes.values.__array_interface__["data"][0]
    del codes
    assert np.isfinite(values).all()
    dense = model.encode_dense(rows[:20])
    assert dense.flags["OWNDATA"] is False and dense.flags["C_CONTIGUOUS"]
