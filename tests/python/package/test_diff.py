"""crosscoder.diff from Python: its report against float64 references from the encodings, the
JSON against the command-line tool's, and stopping a pass."""

import json
import os
import subprocess

import numpy as np
import pytest

import crosscoder as cc
from conftest import small_model


def reference_cohens_d(activations, labels):
    a1 = activations[labels == 1].astype(np.float64)
    a0 = activations[labels == 0].astype(np.float64)
    n1, n0 = len(a1), len(a0)
    pooled = np.sqrt(((n1 - 1) * a1.var(0, ddof=1) + (n0 - 1) * a0.var(0, ddof=1)) / (n1 + n0 - 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        d = (a1.mean(0) - a0.mean(0)) / pooled
    return np.where(pooled > 0, d, 0.0)


def reference_auroc(activations, labels):
    out = []
    for f in range(activations.shape[1]):
        pos = activations[labels == 1, f].astype(np.float64)
        neg = activations[labels == 0, f].astype(np.float64)
        greater = (pos[:, None] > neg[None, :]).sum()
        ties = (pos[:, None] == neg[None, :]).sum()
        out.append((greater + 0.5 * ties) / (len(pos) * len(neg)))
    return np.array(out)


def trained(data, activation="topk"):
    model = small_model(activation)
    cc.train(cc.Trainer(model, cc.TrainConfig(steps=40, batch_size=128, warmup_steps=5, seed=1)),
             data, progress=False)
    return model


def test_diff_matches_float64_references(dataset):
    data, rows, labels = dataset
    model = trained(data)
    report = cc.diff(model, data, progress=False, examples=True, example_top=5)
    activations = model.encode_dense(rows)

    assert report.source_names == ["base", "tuned"]
    assert report.data.rows == len(rows)
    frequency = (activations > 0).mean(0)
    np.testing.assert_allclose(report.data.frequency, frequency, atol=1e-12)
    np.testing.assert_allclose(report.data.max_activation, activations.max(0), rtol=1e-5)
    assert report.data.l0 == pytest.approx((activations > 0).sum(1).mean(), rel=1e-9)

    contrast = report.contrast
    assert (contrast.positives, contrast.negatives) == ((labels == 1).sum(), (labels == 0).sum())
    np.testing.assert_allclose(contrast.cohens_d, reference_cohens_d(activations, labels),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(contrast.auroc, reference_auroc(activations, labels), atol=1e-9)
    order = report.rank("cohens_d")
    assert order[0] == np.argmax(contrast.cohens_d)
    np.testing.assert_array_equal(contrast.ranking()[:1], order[:1])

    top = report.examples.top_values
    assert top.shape == (64, 5)
    for f in range(64):
        want = np.sort(activations[:, f][activations[:, f] > 0])[::-1][:5]
        np.testing.assert_allclose(top[f, : len(want)], want, rtol=1e-5)
    np.testing.assert_allclose(report.metric("relative_norm_1"),
                               model.relative_decoder_norms()[:, 1], rtol=1e-6)
    assert "cohens_d" in report.metric_names()


def test_weight_only_diff_and_labels_from_an_array(dataset):
    data, rows, labels = dataset
    model = trained(data)
    weights_only = cc.diff(model)
    assert weights_only.data is None and weights_only.contrast is None
    np.testing.assert_allclose(weights_only.weights.relative_norm, model.relative_decoder_norms(),
                               rtol=1e-6)
    flipped = cc.diff(model, data, labels=(1 - labels).astype(np.int8), progress=False,
                      scaling="none")
    np.testing.assert_allclose(flipped.contrast.cohens_d,
                               -cc.diff(model, data, progress=False).contrast.cohens_d, atol=1e-9)
    with pytest.raises(cc.Error, match="labels"):
        cc.diff(model, data, labels=labels[:10], progress=False)


def test_json_is_the_command_line_tools(tmp_path, dataset):
    cli = os.environ.get("CROSSCODER_CLI")
    if not cli:
        pytest.skip("CROSSCODER_CLI is not set (ctest sets it to build/bin/crosscoder)")
    data, _, _ = dataset
    model = trained(data)
    path = tmp_path / "model.safetensors"
    model.save(str(path))
    subprocess.run([cli, "diff", str(path), "--data", str(tmp_path / "data" / "manifest.json"),
                    "--json", str(tmp_path / "cli.json"), "--device", "cpu"],
                   check=True, capture_output=True)
    from_cli = json.loads((tmp_path / "cli.json").read_text())
    from_python = json.loads(cc.diff(cc.Crosscoder.load(str(path), backend="cpu"), data,
                                     progress=False).json())
    assert from_python == from_cli


def test_an_exception_in_the_progress_callback_stops_the_pass(dataset):
    data, _, _ = dataset
    model = small_model()

    def fail(done, total):
        raise ValueError(f"stop at {done} of {total}")

    with pytest.raises(ValueError, match="stop at"):
        cc.diff(model, data, chunk_rows=256, progress=False, on_progress=fail)


def test_examples_carry_token_windows_that_a_vocabulary_turns_into_text(tmp_path, dataset):
    data, rows, _ = dataset  # token id of row r is r (conftest), no document ids
    model = trained(data)
    report = cc.diff(model, data, progress=False, window_before=3, window_after=2)
    examples = report.examples
    windows = examples.top_windows
    assert windows.shape == (64, 20, 6)
    vocabulary_file = tmp_path / "vocab.txt"
    vocabulary_file.write_text("".join(f"<{i}>\n" for i in range(len(rows))))
    vocabulary = cc.Vocabulary.load(str(vocabulary_file))
    assert len(vocabulary) == len(rows) and vocabulary.piece(7) == "<7>"
    checked = 0
    for f in range(64):
        for slot in range(20):
            if examples.top_values[f, slot] <= 0:
                continue
            row = int(examples.top_rows[f, slot])
            window = windows[f, slot]
            assert window[3] == row  # the example's own token sits after window_before tokens
            expected = "".join(f"<{t}>" for t in range(max(0, row - 3), min(len(rows), row + 3)))
            assert vocabulary.decode(np.ascontiguousarray(window)) == expected
            checked += 1
    assert checked > 0
    assert vocabulary.token_text(3) == b"<3>"
    with pytest.raises(cc.Error, match="vocab"):
        cc.Vocabulary.load(str(tmp_path / "missing-vocab.txt"))
