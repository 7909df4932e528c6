"""Shared fixtures of the Python package's tests: fresh random data with sparse structure."""

import numpy as np
import pytest

import crosscoder as cc


def sparse_rows(rng, rows, sources=2, width=16, features=48, active=4):
    """Rows [rows, sources, width] built from `active` of `features` random directions per row,
    some directions present in only one source (as a fine-tune's would be), plus noise."""
    directions = rng.standard_normal((features, sources, width)).astype(np.float32)
    directions[: features // 4, 0] = 0.0  # only in the last source
    directions[features // 4 : features // 2, 1:] = 0.0  # only in the first source
    x = np.zeros((rows, sources, width), dtype=np.float32)
    for r in range(rows):
        chosen = rng.choice(features, size=active, replace=False)
        magnitudes = rng.exponential(1.0, size=active).astype(np.float32)
        x[r] = np.tensordot(magnitudes, directions[chosen], axes=1)
    x += 0.01 * rng.standard_normal(x.shape).astype(np.float32)
    return x


@pytest.fixture
def rng():
    return np.random.default_rng()


@pytest.fixture
def rows(rng):
    return sparse_rows(rng, 2048)


@pytest.fixture
def dataset(tmp_path, rng, rows):
    """A sharded dataset (manifest) with labels and token ids, written by ActivationWriter."""
    labels = (rng.random(len(rows)) < 0.5).astype(np.int8)
    # The label shifts one direction's weight, so some latent separates the classes.
    rows = rows.copy()
    rows[labels == 1, :, 0] += 2.0
    with cc.ActivationWriter(
        str(tmp_path / "data"), source_names=["base", "tuned"], width=rows.shape[2],
        shard_rows=700, labels=True, token_ids=True
    ) as writer:
        writer.append_all(rows)
        writer.append_labels(labels)
        writer.append_token_ids(np.arange(len(rows), dtype=np.int32))
    data = cc.ActivationDataset.open(str(tmp_path / "data" / "manifest.json"))
    return data, rows, labels


def small_model(activation="topk", latents=64, width=16, k=4, seed=0, **kwargs):
    config = cc.CrosscoderConfig(sources=2, width=width, latents=latents, activation=activation,
                                 k=k, **kwargs)
    return cc.Crosscoder(config, backend="cpu", seed=seed)
