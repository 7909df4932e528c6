"""crosscoder.hf on a tiny Llama-architecture model pair made from a config (random weights,
nothing downloaded): capture against output_hidden_states, streaming training, steering through
the hook against the C++ Steerer on the same rows, splicing, and refused inputs."""

import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import crosscoder as cc  # noqa: E402
from crosscoder import hf  # noqa: E402

WIDTH = 32


def tiny_llama(seed):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=WIDTH, intermediate_size=64,
                                      num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=4, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def pair():
    base = tiny_llama(0)
    tuned = tiny_llama(0)
    with torch.no_grad():  # the "fine-tune": a small change to every weight
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return base, tuned


def token_batch(rng, batch=3, length=9, pad_left=True):
    ids = torch.as_tensor(rng.integers(1, 97, size=(batch, length)))
    mask = torch.ones_like(ids)
    for b in range(1, batch):  # sequences of different lengths, padded
        if pad_left:
            mask[b, : 2 * b] = 0
        else:
            mask[b, length - 2 * b:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def hidden_after(model, ids, mask, block):
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                    output_hidden_states=True)
    return out.hidden_states[block + 1]


def test_capture_equals_output_hidden_states_for_real_tokens_only(pair, rng):
    base, tuned = pair
    ids, mask = token_batch(rng)
    rows, token_ids, sequence = hf.capture_rows([base, tuned], ids, mask, block=1)
    assert rows.shape == (int(mask.sum()), 2, WIDTH) and rows.dtype == np.float32
    keep = mask.bool()
    np.testing.assert_allclose(rows[:, 0], hidden_after(base, ids, mask, 1)[keep].numpy(), atol=1e-5)
    np.testing.assert_allclose(rows[:, 1], hidden_after(tuned, ids, mask, 1)[keep].numpy(), atol=1e-5)
    np.testing.assert_array_equal(token_ids, ids[keep].numpy())
    # Left and right padding give the same rows.
    right_ids, right_mask = token_batch(np.random.default_rng(0), pad_left=False)
    left_ids, left_mask = token_batch(np.random.default_rng(0), pad_left=True)
    for b in range(3):
        n = int(right_mask[b].sum())
        right_ids[b, :n] = left_ids[b, left_ids.shape[1] - n:]
    left, _, _ = hf.capture_rows([base], left_ids, left_mask, block=0)
    right, _, _ = hf.capture_rows([base], right_ids, right_mask, block=0)
    np.testing.assert_allclose(left, right, atol=1e-5)
    # Several blocks in one pass, sources model-major; skip_first drops each sequence's first.
    # (Not the last block: transformers' last hidden state is after the final norm.)
    multi, _, seq = hf.capture_rows([base, tuned], ids, mask, blocks=[0, 1], skip_first=True)
    assert multi.shape == (int(mask.sum()) - 3, 4, WIDTH)
    np.testing.assert_allclose(multi[:, 3], hidden_after(tuned, ids, mask, 1)[keep][
        np.concatenate([np.arange(int(mask[b].sum()))[1:] + int(mask[:b].sum()) for b in range(3)])
    ].numpy(), atol=1e-5)


def test_capture_to_dataset_writes_rows_tokens_documents_and_labels(pair, rng, tmp_path):
    base, tuned = pair
    batches = [token_batch(rng) for _ in range(2)]
    manifest = hf.capture_to_dataset(
        [base, tuned], [{"input_ids": i, "attention_mask": m} for i, m in batches],
        str(tmp_path / "acts"), block=1, labels=[1, 0, 1, 0, 0, 1], shard_rows=10)
    data = cc.ActivationDataset.open(manifest)
    assert data.source_names == ["base", "tuned"] and data.has_document_ids and data.has_labels
    first, _, seq = hf.capture_rows([base, tuned], *batches[0], block=1)
    np.testing.assert_array_equal(data.read(0, len(first)), first)
    np.testing.assert_array_equal(data.read_document_ids(0, len(first)), seq)
    np.testing.assert_array_equal(data.read_labels(0, len(first)), np.array([1, 0, 1])[seq])


def test_streaming_capture_trains_without_disk(pair, rng):
    base, tuned = pair
    batches = [token_batch(rng, batch=4, length=16)[0] for _ in range(12)]
    stream = hf.stream_batches([base, tuned], batches, block=1, batch_size=32, shuffle_rows=64)
    config = cc.CrosscoderConfig(sources=2, width=WIDTH, latents=64, activation="topk", k=4)
    model = cc.Crosscoder(config, backend="cpu")
    trainer = cc.Trainer(model, cc.TrainConfig(steps=4, batch_size=32, warmup_steps=1))
    report = cc.train(trainer, stream, progress=False, data_identity="tiny llama pair")
    assert trainer.steps_done == 4 and np.isfinite(report.loss)
    with pytest.raises(cc.Error, match="ended at step"):
        short = hf.stream_batches([base, tuned], batches[:1], block=1, batch_size=32)
        cc.train(cc.Trainer(cc.Crosscoder(config, backend="cpu"),
                            cc.TrainConfig(steps=4, batch_size=32)), short, progress=False)


def fitted_crosscoder(pair, rng, activation="relu"):
    base, tuned = pair
    ids, mask = token_batch(rng, batch=6, length=16)
    rows, _, _ = hf.capture_rows([base, tuned], ids, mask, block=1)
    model = cc.Crosscoder(cc.CrosscoderConfig(sources=2, width=WIDTH, latents=48,
                                              activation=activation, k=6), backend="cpu", seed=2)
    model.fit_normaliser(rows)
    return model


def block_output_while(model, ids, mask, block, context):
    """The block's output (after the context's hook: hooks run in the order they were
    registered) and the logits, in one forward pass inside `context`."""
    seen = {}
    with context:
        handle = hf.blocks_of(model)[block].register_forward_hook(
            lambda _m, _a, out: seen.__setitem__("rows", hf._hidden(out).detach().clone()))
        try:
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask,
                               position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        finally:
            handle.remove()
    return seen["rows"], logits


@pytest.mark.parametrize("paired", [False, True])
def test_steering_through_the_hook_equals_the_cpp_steerer_on_the_same_rows(pair, rng, paired):
    base, tuned = pair
    model = fitted_crosscoder(pair, rng, "topk")
    ids, mask = token_batch(rng)
    interventions = [cc.Intervention("scale", latent=3, strength=8.0),
                     cc.Intervention("add", latent=11, strength=2.0)]
    clean = hidden_after(tuned, ids, mask, 1)
    base_rows = hidden_after(base, ids, mask, 1)
    context = hf.steer(tuned, model, source=1, block=1, interventions=interventions,
                       positions="prompt", paired_model=base if paired else None)
    steered, _ = block_output_while(tuned, ids, mask, 1, context)
    reference = cc.Steerer(model, 1, interventions, positions="prompt")
    for b in range(3):
        keep = mask[b].bool()
        rows = clean[b][keep].numpy().copy()
        if paired:
            both = np.stack([base_rows[b][keep].numpy(), rows], axis=1)
            reference.apply(rows, paired=np.ascontiguousarray(both))
        else:
            reference.apply(rows)
        np.testing.assert_allclose(steered[b][keep].numpy(), rows, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(steered[b][~keep].numpy(), clean[b][~keep].numpy())


def test_steering_works_with_generate_on_the_last_prompt_token_only(pair, rng):
    _, tuned = pair
    model = fitted_crosscoder(pair, rng)
    ids, mask = token_batch(rng, batch=1)
    plain = tuned.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    with hf.steer(tuned, model, source=1, block=1, positions="last_prompt",
                  interventions=[cc.Intervention("add", latent=0, strength=0.0)]):
        same = tuned.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    np.testing.assert_array_equal(plain.numpy(), same.numpy())
    steered_rows, _ = block_output_while(
        tuned, ids, mask, 1, hf.steer(tuned, model, source=1, block=1, positions="last_prompt",
                                      interventions=[cc.Intervention("add", latent=0, strength=5.0)]))
    clean = hidden_after(tuned, ids, mask, 1)
    np.testing.assert_array_equal(steered_rows[0, :-1].numpy(), clean[0, :-1].numpy())
    np.testing.assert_allclose(steered_rows[0, -1].numpy(),
                               clean[0, -1].numpy() + 5.0 * model.raw_decoder_vectors()[0, 1],
                               rtol=1e-4, atol=1e-4)
    assert len(hf.blocks_of(tuned)[1]._forward_hooks) == 0  # the hook is gone


def test_splicing_the_identity_keeps_the_logits_and_zero_changes_them(pair, rng):
    _, tuned = pair
    model = fitted_crosscoder(pair, rng, "topk")
    ids, mask = token_batch(rng)
    _, clean = block_output_while(tuned, ids, mask, 1, hf.steer(
        tuned, model, source=1, block=1, interventions=[], positions="all"))
    _, identity = block_output_while(tuned, ids, mask, 1, hf.splice(
        tuned, model, source=1, block=1, kind="reconstruction_plus_error"))
    keep = mask.bool()
    np.testing.assert_allclose(identity[keep].numpy(), clean[keep].numpy(), atol=1e-3)
    _, zero = block_output_while(tuned, ids, mask, 1, hf.splice(tuned, model, source=1, block=1,
                                                                kind="zero"))
    assert not np.allclose(zero[keep].numpy(), clean[keep].numpy(), atol=1e-2)


def test_refused_inputs(pair, rng):
    base, tuned = pair
    wide = cc.Crosscoder(cc.CrosscoderConfig(sources=2, width=WIDTH + 1, latents=8, k=2),
                         backend="cpu")
    with pytest.raises(cc.Error, match="hidden size 32"):
        with hf.steer(tuned, wide, source=1, block=1, interventions=[]):
            pass
    model = fitted_crosscoder(pair, rng)
    with pytest.raises(cc.Error, match="3 blocks; block 7"):
        with hf.splice(tuned, model, source=1, block=7):
            pass
    with pytest.raises(cc.Error, match="no decoder blocks"):
        hf.blocks_of(torch.nn.Linear(2, 2))
    with pytest.raises(cc.Error, match="exactly one of"):
        hf.capture_rows([base], *token_batch(rng))


def reference_cross_entropy(logits, targets):
    logits = logits.astype(np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = logits[np.arange(len(targets)), targets]
    return (log_z - picked)


def test_evaluate_splice_scores_against_a_float64_reference(pair, rng):
    _, tuned = pair
    model = fitted_crosscoder(pair, rng, "topk")
    batches = [token_batch(rng, batch=3, length=12) for _ in range(2)]
    report = hf.evaluate_splice(
        tuned, model, [{"input_ids": i, "attention_mask": m} for i, m in batches], source=1,
        block=1, kinds=["reconstruction", "reconstruction_plus_error"], resamples=200)
    assert [c.name for c in report.conditions] == ["clean", "reconstruction",
                                                   "reconstruction_plus_error", "zero"]
    assert report.sequences == 6
    # Clean CE from the logits in float64, padded targets skipped.
    total, tokens = 0.0, 0
    for ids, mask in batches:
        with torch.no_grad():
            logits = tuned(input_ids=ids, attention_mask=mask,
                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.numpy()
        for b in range(ids.shape[0]):
            keep = mask[b, 1:].bool().numpy()
            ce = reference_cross_entropy(logits[b, :-1], ids[b, 1:].numpy())
            total += ce[keep].sum()
            tokens += int(keep.sum())
    clean = report.condition("clean")
    assert clean.tokens == tokens
    assert clean.cross_entropy.value == pytest.approx(total / tokens, rel=1e-5)
    identity = report.condition("reconstruction_plus_error")
    assert identity.cross_entropy.value == pytest.approx(clean.cross_entropy.value, abs=1e-3)
    assert identity.kl.value < 1e-4
    zero = report.condition("zero")
    # (Random weights: zeroing a block need not raise the CE, but it changes the predictions.)
    assert zero.kl.value > 1e-3 and zero.cross_entropy.value != clean.cross_entropy.value
    recovered = report.recovered("reconstruction")
    assert recovered.low <= recovered.value <= recovered.high
    assert report.recovered("reconstruction_plus_error").value == pytest.approx(1.0, abs=1e-2)


def test_generated_positions_are_steered_on_every_decoding_step(pair, rng):
    _, tuned = pair
    model = fitted_crosscoder(pair, rng)
    ids, mask = token_batch(rng, batch=1)
    direction = model.raw_decoder_vectors()[4, 1]

    def record(context):
        calls = []
        with context:
            handle = hf.blocks_of(tuned)[1].register_forward_hook(
                lambda _m, _a, out: calls.append(hf._hidden(out).detach().clone()))
            try:
                tuned.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
            finally:
                handle.remove()
        return calls

    plain = record(contextlib.nullcontext())
    steered = record(hf.steer(tuned, model, source=1, block=1, positions="generated",
                              prefill_only=False,
                              interventions=[cc.Intervention("add", latent=4, strength=3.0)]))
    assert len(plain) == len(steered) == 3  # the prompt's pass, then one per new token
    np.testing.assert_array_equal(steered[0].numpy(), plain[0].numpy())  # prompt: untouched
    # The first decoding step sees the same token in both runs (the prompt's logits agree).
    np.testing.assert_allclose(steered[1][0, -1].numpy(), plain[1][0, -1].numpy() + 3.0 * direction,
                               rtol=1e-4, atol=1e-4)
