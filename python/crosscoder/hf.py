"""Hugging Face models in the loop: capture paired activations, steer and splice with forward hooks.

Needs torch (and a transformers model, or any torch module with decoder blocks). Rows are the
residual stream *after* decoder block ``block`` (0-based), taken by a forward hook on the block:
``hidden_states[block + 1]`` of ``output_hidden_states=True`` for every block but the last, where
transformers applies the final norm and the hook does not. Sources are ordered model-major:
for models (base, tuned) and blocks (b0, b1), the sources are base@b0, base@b1, tuned@b0,
tuned@b1 (``CrosscoderConfig(source_models=[0, 0, 1, 1])`` for a crosscoder across layers).

    from crosscoder import hf
    batches = hf.stream_batches([base, tuned], token_batches, block=8, batch_size=1024)
    cc.train(trainer, batches)                                # no disk
    with hf.steer(tuned, model, source=1, block=8,
                  interventions=[cc.Intervention("scale", latent=317, strength=32)],
                  positions="last_prompt", paired_model=base):
        out = tuned.generate(**inputs, max_new_tokens=64)

Padding: the attention mask decides which tokens are real; padded positions are never captured
or steered, and positions count real tokens only (left or right padding give the same rows).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from . import _core

__all__ = [
    "blocks_of",
    "capture_rows",
    "capture_to_dataset",
    "stream_batches",
    "steer",
    "splice",
    "evaluate_splice",
]


def _torch():
    try:
        import torch
    except ImportError as error:  # pragma: no cover - exercised only without torch
        raise ImportError("crosscoder.hf needs torch: pip install 'crosscoder[hf]'") from error
    return torch


def blocks_of(model: Any) -> Sequence[Any]:
    """The decoder blocks of a transformers model (Llama/Qwen/Mistral/Gemma, GPT-2, GPT-NeoX,
    OPT), or of any module with a `layers` list (the llama2.c port), in order. Raises
    crosscoder.Error naming the model class when none is found."""
    for path in ("model.layers", "model.model.layers", "transformer.h", "gpt_neox.layers",
                 "model.decoder.layers", "layers"):
        node = model
        for name in path.split("."):
            node = getattr(node, name, None)
            if node is None:
                break
        if node is not None and hasattr(node, "__len__") and len(node) > 0:
            return node
    raise _core.Error(f"{type(model).__name__}: no decoder blocks found (looked for model.layers, "
                      "transformer.h, gpt_neox.layers, model.decoder.layers, layers)")


def _block(model: Any, block: int) -> Any:
    blocks = blocks_of(model)
    if not -len(blocks) <= block < len(blocks):
        raise _core.Error(f"{type(model).__name__} has {len(blocks)} blocks; block {block} does "
                          "not exist")
    return blocks[block]


def _hidden(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def _as_blocks(block: int | None, blocks: Sequence[int] | None) -> list[int]:
    if (block is None) == (blocks is None):
        raise _core.Error("give exactly one of block= and blocks=")
    chosen = [block] if blocks is None else list(blocks)
    if not chosen:
        raise _core.Error("blocks= is empty")
    return chosen


def _model_inputs(input_ids: Any, attention_mask: Any | None) -> dict[str, Any]:
    torch = _torch()
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids[None]
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask)
    if mask.shape != ids.shape:
        raise _core.Error(f"attention_mask has shape {tuple(mask.shape)}, input_ids "
                          f"{tuple(ids.shape)}")
    # Positions count real tokens only, so left and right padding give the same rows.
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}


def _run(model: Any, inputs: dict[str, Any]) -> Any:
    """One forward pass: a transformers model with input ids, attention mask and position ids;
    any other module (e.g. examples/organism/llama2c_torch.py) with the token ids alone, which
    then must be unpadded."""
    device = next(model.parameters()).device
    if hasattr(model, "generate"):
        return model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False)
    if not bool(inputs["attention_mask"].bool().all()):
        raise _core.Error(f"{type(model).__name__} is not a transformers model: it takes token "
                          "ids alone, so batches cannot be padded")
    return model(inputs["input_ids"].to(device))


def _logits(output: Any) -> Any:
    if hasattr(output, "logits"):
        return output.logits
    return output[0] if isinstance(output, tuple) else output


def _ids_and_mask(batch: Any) -> tuple[Any, Any | None]:
    """A token batch: a tensor of input ids, or a dict with input_ids and attention_mask."""
    if isinstance(batch, dict):
        return batch["input_ids"], batch.get("attention_mask")
    return batch, None


def _block_outputs(model: Any, inputs: dict[str, Any], blocks: list[int]) -> list[Any]:
    """The outputs [B, T, d] of the given blocks in one forward pass (hooks, no grad)."""
    torch = _torch()
    seen: dict[int, Any] = {}
    handles = []
    for b in blocks:
        def keep(_module, _args, output, b=b):
            seen[b] = _hidden(output).detach()
        handles.append(_block(model, b).register_forward_hook(keep))
    try:
        with torch.no_grad():
            _run(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[b] for b in blocks]


def capture_rows(models: Sequence[Any], input_ids: Any, attention_mask: Any | None = None, *,
                 block: int | None = None, blocks: Sequence[int] | None = None,
                 skip_first: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs every model on the same token batch and returns (rows, token_ids, sequence) for
    each real token: rows float32 [N, len(models)·len(blocks), d] (sources model-major),
    token_ids int32 [N], sequence int32 [N] (the batch row each token came from).
    skip_first drops each sequence's first real token (a BOS, whose activations are outliers)."""
    torch = _torch()
    chosen = _as_blocks(block, blocks)
    inputs = _model_inputs(input_ids, attention_mask)
    columns = []
    for model in models:
        for out in _block_outputs(model, inputs, chosen):
            columns.append(out.float().cpu())
    widths = {c.shape[-1] for c in columns}
    if len(widths) != 1:
        raise _core.Error(f"the models' blocks have different widths {sorted(widths)}")
    keep = inputs["attention_mask"].bool().clone()
    if skip_first:
        first = keep.long().argmax(-1)
        keep[torch.arange(keep.shape[0]), first] = False
    stacked = torch.stack(columns, dim=2)  # [B, T, S, d]
    rows = stacked[keep].contiguous().numpy()
    token_ids = inputs["input_ids"][keep].to(torch.int32).numpy()
    sequence = torch.arange(keep.shape[0])[:, None].expand_as(keep)[keep].to(torch.int32).numpy()
    return rows, token_ids, sequence


def capture_to_dataset(models: Sequence[Any], token_batches: Iterable[Any], directory: str, *,
                       block: int | None = None, blocks: Sequence[int] | None = None,
                       source_names: Sequence[str] | None = None,
                       labels: Sequence[int] | None = None, skip_first: bool = False,
                       dtype: str = "f32", shard_rows: int = 65536,
                       overwrite: bool = False) -> str:
    """Captures every batch (a tensor of input ids, or a dict with input_ids and attention_mask)
    and writes a sharded dataset with token ids and document ids (one document per sequence),
    and labels when given (one per sequence, in order). Returns the manifest's path."""
    chosen = _as_blocks(block, blocks)
    if source_names is None:
        names = ["base", "tuned"] if len(models) == 2 else [f"model{i}" for i in range(len(models))]
        source_names = [n if len(chosen) == 1 else f"{n}.block{b}" for n in names for b in chosen]
    writer = None
    documents = 0
    for batch in token_batches:
        ids, mask = _ids_and_mask(batch)
        rows, token_ids, sequence = capture_rows(models, ids, mask, blocks=chosen,
                                                 skip_first=skip_first)
        if writer is None:
            writer = _core.ActivationWriter(
                directory, source_names=list(source_names), width=rows.shape[2], dtype=dtype,
                shard_rows=shard_rows, labels=labels is not None, token_ids=True,
                document_ids=True, overwrite=overwrite)
        writer.append_all(rows)
        writer.append_token_ids(token_ids)
        writer.append_document_ids((sequence + documents).astype(np.int32))
        if labels is not None:
            per_sequence = np.asarray(labels[documents:documents + int(sequence.max()) + 1],
                                      dtype=np.int8)
            writer.append_labels(per_sequence[sequence])
        documents += int(sequence.max()) + 1 if len(sequence) else 0
    if writer is None:
        raise _core.Error("capture_to_dataset: no batches")
    if labels is not None and len(labels) != documents:
        raise _core.Error(f"capture_to_dataset: {len(labels)} labels for {documents} sequences")
    return writer.close()


def stream_batches(models: Sequence[Any], token_batches: Iterable[Any], *, batch_size: int,
                   block: int | None = None, blocks: Sequence[int] | None = None,
                   skip_first: bool = False, queue_size: int = 4,
                   shuffle_rows: int = 0, seed: int = 0) -> Iterator[np.ndarray]:
    """Paired rows for ``crosscoder.train`` straight from the models: a background thread runs
    the forward passes and fills a bounded queue of float32 [batch_size, S, d] batches while
    training consumes them, so inference and training overlap and nothing touches the disk.
    shuffle_rows > 0 keeps a buffer of that many rows and draws batches from it at random
    (tokens of one sequence are strongly correlated). The iterator ends when the token batches
    do; an exception in the capture thread is raised in the consumer."""
    chosen = _as_blocks(block, blocks)
    if batch_size <= 0:
        raise _core.Error(f"stream_batches: batch_size {batch_size} must be positive")
    out: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
    done = object()
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        rng = np.random.default_rng(seed)
        pending: list[np.ndarray] = []
        held = 0
        try:
            for batch in token_batches:
                ids, mask = _ids_and_mask(batch)
                rows, _, _ = capture_rows(models, ids, mask, blocks=chosen, skip_first=skip_first)
                pending.append(rows)
                held += len(rows)
                while held >= max(batch_size, shuffle_rows):
                    pool = np.concatenate(pending)
                    if shuffle_rows > 0:
                        pool = pool[rng.permutation(len(pool))]
                    if not put(np.ascontiguousarray(pool[:batch_size])):
                        return
                    pending, held = [pool[batch_size:]], len(pool) - batch_size
            put(done)
        except BaseException as error:  # handed to the consumer
            put(error)

    thread = threading.Thread(target=produce, name="crosscoder-capture", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


class _Rows:
    """Per-call bookkeeping for hooks during generate(): the prompt (ids and attention mask) and
    how many real tokens each sequence has seen, so that every row gets its position and its
    prompt / last-prompt flags."""

    def __init__(self) -> None:
        self.calls = 0  # forward passes of the model so far; 0 during the prompt's (prefill)
        self.mask = None
        self.prompt_ids = None
        self.current_batch = 0
        self.current_length = 0
        self.seen = None

    def pre_forward(self, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        shape = ids.shape if ids is not None else (embeds.shape[:2] if embeds is not None else None)
        self.current_batch = int(shape[0]) if shape is not None else 0
        self.current_length = int(shape[1]) if shape is not None else 0
        if self.calls == 0:
            self.mask = kwargs.get("attention_mask")
            self.prompt_ids = ids

    def infos(self, batch: int, length: int) -> list[tuple[np.ndarray, ...]]:
        """For each sequence: (row indices to touch, positions, prompt flags, last-prompt flags)."""
        torch = _torch()
        out = []
        for b in range(batch):
            if self.calls == 0:
                mask = (torch.ones(length, dtype=torch.bool) if self.mask is None
                        else self.mask[b, -length:].bool().cpu())
                index = torch.nonzero(mask).flatten().numpy()
                positions = np.arange(len(index), dtype=np.int64)
                prompt = np.ones(len(index), dtype=bool)
                last = np.zeros(len(index), dtype=bool)
                if len(index):
                    last[-1] = True
            else:
                index = np.arange(length)
                start = int(self.seen[b])
                positions = np.arange(start, start + length, dtype=np.int64)
                prompt = np.zeros(length, dtype=bool)
                last = np.zeros(length, dtype=bool)
            out.append((index, positions, prompt, last))
        return out

    def advance(self) -> None:
        """After a forward pass of the model: counts its tokens into each sequence's position."""
        if self.calls == 0:
            if self.mask is not None:
                self.seen = self.mask.long().sum(-1).cpu().numpy()
            else:
                self.seen = np.full(self.current_batch, self.current_length, dtype=np.int64)
        else:
            self.seen = self.seen + self.current_length
        self.calls += 1


def _apply_in_place(hidden: Any, b: int, index: np.ndarray, apply: Any) -> None:
    """Runs apply(rows float32 [n, d]) on hidden[b, index] and writes the result back; in place
    (no copy) when hidden is float32 on the CPU and the rows are contiguous."""
    torch = _torch()
    if len(index) == 0:
        return
    contiguous_span = index[-1] - index[0] + 1 == len(index)
    if hidden.dtype == torch.float32 and hidden.device.type == "cpu" and hidden.is_contiguous() \
            and contiguous_span:
        apply(hidden[b, int(index[0]):int(index[-1]) + 1])
        return
    idx = torch.as_tensor(index, device=hidden.device)
    rows = hidden[b, idx].float().cpu().contiguous()
    apply(rows)
    hidden[b, idx] = rows.to(hidden.device, hidden.dtype)


@contextlib.contextmanager
def _hooked(model: Any, block: int, tool: Any, source: int, sources: int,
            paired_model: Any | None, paired_block: int | None, prefill_only: bool):
    """Runs `tool` (a crosscoder.Steerer or Splicer of source `source`) on the output rows of
    `block` of `model` while the context is open, sequence by sequence, with each row's
    position and prompt flags, and with `paired_model`'s rows of the same prompt when given."""
    torch = _torch()
    if paired_model is not None and sources != 2:
        raise _core.Error("paired_model needs a crosscoder of two sources")
    rows = _Rows()
    target = _block(model, block)
    paired: dict[str, Any] = {}

    def pre(_module, args, kwargs):
        rows.pre_forward(args, kwargs)
        if paired_model is not None and rows.calls == 0:
            if rows.prompt_ids is None:
                raise _core.Error("paired steering needs input_ids (not inputs_embeds)")
            ids = rows.prompt_ids.cpu()
            mask = None if rows.mask is None else rows.mask[:, -ids.shape[1]:].cpu()
            paired["rows"] = _block_outputs(paired_model, _model_inputs(ids, mask),
                                            [block if paired_block is None else paired_block])[0]

    def post(_module, _args, _kwargs, _output):
        rows.advance()

    def hook(_module, _args, output):
        hidden = _hidden(output)
        if prefill_only and rows.calls > 0:
            return output
        batch, length = hidden.shape[0], hidden.shape[1]
        other = paired.get("rows") if rows.calls == 0 else None
        with torch.no_grad():
            for b, (index, positions, prompt, last) in enumerate(rows.infos(batch, length)):
                partner = None
                if other is not None and len(index):
                    partner = other[b, torch.as_tensor(index)].float().cpu().numpy()

                def apply(rows, positions=positions, prompt=prompt, last=last, partner=partner):
                    paired = None if partner is None else _paired_array(partner, rows, source,
                                                                        sources)
                    tool.apply(rows, position=positions, prompt=prompt, last_prompt=last,
                               paired=paired)

                _apply_in_place(hidden, b, index, apply)
        return output

    handles = [model.register_forward_pre_hook(pre, with_kwargs=True),
               model.register_forward_hook(post, with_kwargs=True),
               target.register_forward_hook(hook)]
    try:
        yield rows
    finally:
        for handle in handles:
            handle.remove()


def _check_width(crosscoder: Any, model: Any, block: int) -> None:
    config = getattr(model, "config", None)
    if isinstance(config, dict):  # e.g. the llama2.c port: {"dim": ...}
        width = config.get("hidden_size") or config.get("dim")
    else:
        width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if width is not None and width != crosscoder.config.width:
        raise _core.Error(f"the crosscoder's width is {crosscoder.config.width}, but "
                          f"{type(model).__name__} has hidden size {width}")
    _block(model, block)


def _paired_array(partner: np.ndarray, own: Any, source: int, sources: int) -> np.ndarray:
    """[n, M, d] with the other model's rows in the other source's slot (two sources)."""
    n, d = partner.shape
    out = np.empty((n, sources, d), dtype=np.float32)
    out[:] = partner[:, None, :]
    out[:, source] = own.numpy() if hasattr(own, "numpy") else own
    return out


@contextlib.contextmanager
def steer(model: Any, crosscoder: Any, *, source: int, block: int,
          interventions: Sequence[Any], positions: Any = "last_prompt",
          prefill_only: bool = True, paired_model: Any | None = None,
          paired_block: int | None = None):
    """Installs a crosscoder.Steerer as a forward hook on ``block`` of ``model`` (the model of
    crosscoder source ``source``) for the ``with`` block; usable with ``model.generate``.
    positions: 'last_prompt' (the study's choice), 'prompt', 'generated', 'all' or a list of
    token positions. prefill_only steers only the prompt's forward pass (as the study did).
    paired_model: the other model of a two-source crosscoder, run on the same prompt so its
    activations enter the encoder (paired steering, as in training); otherwise its mean is
    assumed (unpaired). Yields the Steerer."""
    _check_width(crosscoder, model, block)
    steerer = _core.Steerer(crosscoder, source, list(interventions), positions=positions)
    with _hooked(model, block, steerer, source, crosscoder.config.sources, paired_model,
                 paired_block, prefill_only):
        yield steerer


@contextlib.contextmanager
def splice(model: Any, crosscoder: Any, *, source: int, block: int,
           kind: str = "reconstruction", other_source: int = -1,
           latents: Sequence[int] = (), mean: np.ndarray | None = None, positions: Any = "all",
           paired_model: Any | None = None, paired_block: int | None = None):
    """Replaces the output of ``block`` by the crosscoder's reconstruction for source
    ``source`` (or another crosscoder.Splicer kind: 'reconstruction_plus_error', 'zero',
    'mean', 'add_latents_of', 'decoder_of') on every forward pass in the ``with`` block.
    paired_model supplies the other model's rows (needed by 'add_latents_of'; otherwise its
    mean is assumed). Yields the Splicer."""
    _check_width(crosscoder, model, block)
    splicer = _core.Splicer(crosscoder, source, kind, other_source=other_source,
                            latents=list(latents), mean=mean, positions=positions)
    with _hooked(model, block, splicer, source, crosscoder.config.sources, paired_model,
                 paired_block, prefill_only=False):
        yield splicer


def evaluate_splice(model: Any, crosscoder: Any, token_batches: Iterable[Any], *, source: int,
                    block: int, kinds: Sequence[str] = ("reconstruction",),
                    paired_model: Any | None = None, mean: np.ndarray | None = None,
                    reference_model: Any | None = None, resamples: int = 1000,
                    seed: int = 0) -> Any:
    """Next-token cross-entropy of ``model`` on its own text, clean and with block ``block``'s
    output spliced (each of ``kinds``, and 'zero'), KL of each from the clean logits (or from
    ``reference_model``'s, e.g. the other model for the diffing patches), and bootstrap 95%
    intervals over sequences: a crosscoder.LanguageModelReport whose
    ``recovered("reconstruction")`` is CE loss recovered. ``token_batches`` yield input ids or
    dicts with input_ids and attention_mask; padded targets are skipped."""
    torch = _torch()
    conditions = ["clean", *[k for k in kinds if k != "zero"], "zero"]
    scores = _core.LanguageModelScores(conditions)
    sequence = 0

    def logits_of(runner: Any, inputs: dict[str, Any]) -> np.ndarray:
        with torch.no_grad():
            return _logits(_run(runner, inputs)).float().cpu().numpy()

    for batch in token_batches:
        inputs = _model_inputs(*_ids_and_mask(batch))
        targets = inputs["input_ids"][:, 1:].clone().to(torch.int32)
        targets[inputs["attention_mask"][:, 1:] == 0] = -1
        targets = targets.numpy()
        clean = logits_of(model, inputs)
        reference = clean if reference_model is None else logits_of(reference_model, inputs)
        per_condition = {"clean": clean}
        for kind in conditions[1:]:
            with splice(model, crosscoder, source=source, block=block, kind=kind, mean=mean,
                        paired_model=paired_model):
                per_condition[kind] = logits_of(model, inputs)
        for b in range(targets.shape[0]):
            for index, name in enumerate(conditions):
                logits = np.ascontiguousarray(per_condition[name][b, :-1])
                kl = None if name == "clean" and reference_model is None \
                    else np.ascontiguousarray(reference[b, :-1])
                scores.add(sequence, index, logits, np.ascontiguousarray(targets[b]), kl)
            sequence += 1
    if sequence == 0:
        raise _core.Error("evaluate_splice: no batches")
    return scores.result(resamples, seed)
