#!/usr/bin/env python3
"""Converts crosscoder checkpoints between this library and its two peers.

  convert_checkpoint.py from-study DIR (--zscore STATS | --zscore-from-cache CACHE_DIR |
                                        --no-normalisation) --out X.safetensors [--rl-is a|b]
      DIR is a checkpoint of the study (arXiv 2606.26474, github.com/Antebe/
      model_diffing_crosscoders): DIR/model.pt (DFCCrossCoder's state dict) and DIR/config.json.
      The study z-scores activations per channel with statistics of its activation cache that
      the checkpoint does not hold: give them as STATS (.pt holding {"mean", "std"} or a pair
      (mean, std); or .npz with arrays "mean" and "std"; each [2, d] in the study's model order
      [A, B]), or let the converter compute them from the study's cache directory as cache.py
      does, or say that the run had normalize=False.
  convert_checkpoint.py from-dictionary-learning CKPT.pt --out X.safetensors
                                        [--exclusive N0,N1,...] [--source-models M0,M1,...]
                                        [--no-keep-relative-variance]
      CKPT.pt is the state dict of science-of-finetuning/dictionary_learning's CrossCoder
      (ReLU) or BatchTopKCrossCoder.
  convert_checkpoint.py to-dictionary-learning X.safetensors --out Y.pt
      Writes the state dict that the fork's CrossCoder.from_pretrained or
      BatchTopKCrossCoder.from_pretrained loads strictly, with the same encodings.

Only numpy and safetensors are needed for our files; torch reads and writes the peers' .pt
files. docs/interop.md says what maps exactly and what is a choice. Errors name the file and
the tensor; the exit status is 1 on an error, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

FORMAT = "crosscoder-checkpoint-1"
LIBRARY_VERSION = "0.1.0"  # the CMake project version the format was written against
STUDY_STD_FLOOR = 1e-6  # cache.py: std.clamp(min=1e-6)
FORK_STD_EPSILON = 1e-8  # dictionary.py: x / (activation_std + 1e-8)
# dictionary_learning's CodeNormalization values (enum.auto() starts at 1).
CODE_NORMALIZATIONS = {1: "CROSSCODER", 2: "SAE", 3: "MIXED", 4: "NONE", 5: "DECOUPLED"}
CROSSCODER_CODE_NORMALIZATION = 1


class ConvertError(Exception):
    """A refused conversion; the message names the file and the tensor."""


# ---- Files ------------------------------------------------------------------------------------


def torch_module() -> Any:
    try:
        import torch
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ConvertError(
            "reading and writing the peers' .pt files needs torch: "
            "run scripts/setup_python.sh --with-torch"
        ) from error
    return torch


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A .pt state dict as float64/int64 numpy arrays, torch.compile's prefix removed."""
    torch = torch_module()
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a bad file
        raise ConvertError(f"{path}: not a torch state dict ({error})") from error
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ConvertError(f"{path}: expected a state dict (a mapping of names to tensors)")
    out: dict[str, np.ndarray] = {}
    for name, tensor in raw.items():
        # dictionary_learning's loaders strip this prefix too (a torch.compile'd model's dict).
        name = name.split("_orig_mod.", 1)[1] if "_orig_mod." in name else name
        t = tensor.detach().cpu()
        out[name] = t.double().numpy() if t.is_floating_point() else t.long().numpy()
    return out


def tensor(
    state: dict[str, np.ndarray],
    name: str,
    shape: tuple[int, ...],
    path: Path,
    *,
    finite: bool = True,
) -> np.ndarray:
    if name not in state:
        raise ConvertError(f"{path}: tensor '{name}' is missing")
    value = state[name]
    if value.shape != shape:
        raise ConvertError(
            f"{path}: tensor '{name}' has shape {list(value.shape)}, expected {list(shape)}"
        )
    if finite and not np.all(np.isfinite(value)):
        raise ConvertError(f"{path}: tensor '{name}' holds NaN or Inf")
    return value


def refuse_unknown(state: dict[str, np.ndarray], known: set[str], path: Path, what: str) -> None:
    unknown = sorted(set(state) - known)
    if unknown:
        raise ConvertError(f"{path}: tensor(s) {unknown} are not part of {what}")


def write_ours(
    path: Path, config: dict[str, Any], tensors: dict[str, np.ndarray], source: str
) -> None:
    """Our checkpoint (docs/formats.md), float32 tensors, k as int64."""
    # np.array, not np.ascontiguousarray, which turns a 0-d threshold into [1].
    out = {name: np.array(value, dtype=np.float32, order="C") for name, value in tensors.items()}
    out["k"] = np.array(config["k"], dtype=np.int64)
    metadata = {
        "format": FORMAT,
        "library_version": LIBRARY_VERSION,
        "config": json.dumps(config),
        "normaliser_fitted": "true",
        "converted_from": source,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(out, str(path), metadata=metadata)


def make_config(
    sources: int,
    width: int,
    latents: int,
    activation: str,
    k: int,
    exclusive: list[int],
    normalisation: str,
) -> dict[str, Any]:
    return {
        "sources": sources,
        "width": width,
        "latents": latents,
        "activation": activation,
        "k": k,
        "exclusive": exclusive,
        "normalisation": normalisation,
        "jumprelu_initial_threshold": 0.001,
        "jumprelu_bandwidth": 0.001,
    }


def read_ours(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    try:
        with safetensors.safe_open(str(path), "np") as handle:
            metadata = handle.metadata() or {}
        tensors = safetensors.numpy.load_file(str(path))
    except Exception as error:
        raise ConvertError(f"{path}: not a safetensors file ({error})") from error
    if "config" not in metadata:
        raise ConvertError(f"{path}: not a crosscoder checkpoint (no 'config' in __metadata__)")
    config = json.loads(metadata["config"])
    return config, {name: value.astype(np.float64) for name, value in tensors.items()}


# ---- The study (DFCCrossCoder) ----------------------------------------------------------------


def study_partition_masks(latents: int, n_a: int, n_b: int) -> tuple[np.ndarray, np.ndarray]:
    """enc_mask [2, F] and dec_mask [F, 2] as dfc.py lays them out: [A-excl | B-excl | shared]."""
    enc = np.ones((2, latents))
    enc[1, :n_a] = 0
    enc[0, n_a : n_a + n_b] = 0
    return enc, enc.T.copy()


def study_zscore(args: argparse.Namespace, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) [2, d] in the study's model order, or None for normalize=False."""
    if args.no_normalisation:
        return None
    if args.zscore_from_cache:
        return zscore_from_cache(Path(args.zscore_from_cache), width)
    path = Path(args.zscore)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    if path.suffix == ".npz":
        with np.load(path) as stats:
            if "mean" not in stats or "std" not in stats:
                raise ConvertError(f"{path}: expected arrays 'mean' and 'std'")
            mean, std = stats["mean"].astype(np.float64), stats["std"].astype(np.float64)
    else:
        torch = torch_module()
        try:
            stats = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ConvertError(f"{path}: not a torch file ({error})") from error
        if isinstance(stats, dict) and "mean" in stats and "std" in stats:
            mean, std = stats["mean"], stats["std"]
        elif isinstance(stats, (tuple, list)) and len(stats) == 2:
            mean, std = stats
        else:
            raise ConvertError(
                f"{path}: expected {{'mean': ..., 'std': ...}} or a pair (mean, std)"
            )
        mean, std = mean.double().numpy(), std.double().numpy()
    for name, value in (("mean", mean), ("std", std)):
        if value.shape != (2, width):
            raise ConvertError(
                f"{path}: '{name}' has shape {list(value.shape)}, expected [2, {width}]"
            )
        if not np.all(np.isfinite(value)):
            raise ConvertError(f"{path}: '{name}' holds NaN or Inf")
    if np.any(std < 0):
        raise ConvertError(f"{path}: 'std' has negative entries")
    return mean, std


def zscore_from_cache(cache: Path, width: int) -> tuple[np.ndarray, np.ndarray]:
    """cache.py's CachedActivationDataset statistics: every shard as float32, concatenated, then
    mean and (unbiased) std over rows in float32, as the study computed them."""
    torch = torch_module()
    meta_path = cache / "meta.json"
    if not meta_path.is_file():
        raise ConvertError(f"{meta_path}: no such file (not a study activation cache)")
    meta = json.loads(meta_path.read_text())
    shards = []
    for name in meta.get("shards", []):
        shard_path = cache / name
        if not shard_path.is_file():
            raise ConvertError(f"{meta_path}: shard {shard_path} does not exist")
        shard = torch.load(shard_path, map_location="cpu", weights_only=True)
        if (
            not isinstance(shard, torch.Tensor)
            or shard.dim() != 3
            or tuple(shard.shape[1:]) != (2, width)
        ):
            raise ConvertError(f"{shard_path}: expected a tensor [rows, 2, {width}]")
        shards.append(shard.float())
    if not shards:
        raise ConvertError(f"{meta_path}: lists no shards")
    data = torch.cat(shards, dim=0)
    if data.shape[0] != meta.get("total_samples", data.shape[0]):
        raise ConvertError(
            f"{meta_path}: total_samples is {meta['total_samples']} but the shards hold {data.shape[0]} rows"
        )
    if data.shape[0] < 2:
        raise ConvertError(f"{meta_path}: fewer than 2 rows, no standard deviation")
    return data.mean(dim=0).double().numpy(), data.std(dim=0).double().numpy()


def from_study(args: argparse.Namespace) -> None:
    directory = Path(args.checkpoint)
    config_path, model_path = directory / "config.json", directory / "model.pt"
    if not config_path.is_file():
        raise ConvertError(
            f"{config_path}: no such file (a study checkpoint is DIR/model.pt + DIR/config.json)"
        )
    study = json.loads(config_path.read_text())
    for key in ("activation_dim", "dict_size", "k", "n_a", "n_b"):
        if not isinstance(study.get(key), int):
            raise ConvertError(f"{config_path}: '{key}' is missing or not an integer")
    d, F, k, n_a, n_b = (study[key] for key in ("activation_dim", "dict_size", "k", "n_a", "n_b"))
    if not (0 < k < F) or n_a < 0 or n_b < 0 or n_a + n_b > F:
        raise ConvertError(
            f"{config_path}: inconsistent k={k}, n_a={n_a}, n_b={n_b}, dict_size={F}"
        )
    state = load_state_dict(model_path)
    refuse_unknown(
        state,
        {"W_enc", "b_enc", "W_dec", "b_dec", "enc_mask", "dec_mask"},
        model_path,
        "DFCCrossCoder's state dict",
    )
    w_enc = tensor(state, "W_enc", (2, d, F), model_path)
    b_enc = tensor(state, "b_enc", (F,), model_path)
    w_dec = tensor(state, "W_dec", (F, 2, d), model_path)
    b_dec = tensor(state, "b_dec", (2, d), model_path)
    enc_mask, dec_mask = study_partition_masks(F, n_a, n_b)
    for name, expected in (("enc_mask", enc_mask), ("dec_mask", dec_mask)):
        if not np.array_equal(tensor(state, name, expected.shape, model_path), expected):
            raise ConvertError(
                f"{model_path}: tensor '{name}' does not match n_a={n_a}, n_b={n_b} of {config_path}"
            )
    # The study's forward multiplies by the masks; doing it here makes the forbidden weights
    # exactly zero, as our format requires of exclusive latents.
    w_enc = w_enc * enc_mask[:, None, :]
    w_dec = w_dec * dec_mask[:, :, None]
    stats = study_zscore(args, d)

    # Our source 0 is the base model. The study's model A is its RL fine-tune (cfg.model_a_name).
    order = [1, 0] if args.rl_is == "a" else [0, 1]
    exclusive_of_slot = {0: list(range(0, n_a)), 1: list(range(n_a, n_a + n_b))}
    latents = list(range(n_a + n_b, F)) + exclusive_of_slot[order[0]] + exclusive_of_slot[order[1]]
    tensors = {
        "encoder.weight": w_enc[order][:, :, latents],
        "encoder.bias": b_enc[latents],
        "decoder.weight": w_dec[latents][:, order, :].transpose(1, 0, 2),
        "decoder.bias": b_dec[order],
    }
    if stats is None:
        normalisation = "none"
        tensors["normaliser.scale"] = np.ones(2)
        tensors["normaliser.mean"] = np.zeros((2, d))
    else:
        mean, std = stats
        normalisation = "per_channel"
        tensors["normaliser.scale"] = 1.0 / np.maximum(std[order], STUDY_STD_FLOOR)
        tensors["normaliser.mean"] = mean[order]
    exclusive = [len(exclusive_of_slot[order[0]]), len(exclusive_of_slot[order[1]])]
    config = make_config(2, d, F, "topk", k, exclusive, normalisation)
    write_ours(
        Path(args.out), config, tensors, f"study DFCCrossCoder {directory} (rl-is {args.rl_is})"
    )
    print(
        f"{args.out}: topk k={k}, {F} latents (shared {F - n_a - n_b}, exclusive {exclusive}), "
        f"normalisation {normalisation}; source 0 = study model {'AB'[order[0]]}, source 1 = model {'AB'[order[1]]}"
    )


# ---- dictionary_learning (science-of-finetuning fork) -------------------------------------------

FORK_NORMALISER = ("target_rms", "activation_mean", "activation_std", "activation_global_scale")
FORK_WEIGHTS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")


def from_dictionary_learning(args: argparse.Namespace) -> None:
    path = Path(args.checkpoint)
    state = load_state_dict(path)
    if "encoder.weight" not in state:
        raise ConvertError(
            f"{path}: tensor 'encoder.weight' is missing (not a dictionary_learning CrossCoder)"
        )
    L, d, F = state["encoder.weight"].shape if state["encoder.weight"].ndim == 3 else (0, 0, 0)
    if L == 0:
        raise ConvertError(f"{path}: tensor 'encoder.weight' must be [layers, d, dict_size]")
    if "decoder.weight" in state and state["decoder.weight"].shape[:1] != (L,):
        raise ConvertError(
            f"{path}: tensor 'decoder.weight' decodes {state['decoder.weight'].shape[0]} layers but the "
            f"encoder reads {L}: our crosscoders decode every source they encode"
        )
    tensors = {
        "encoder.weight": tensor(state, "encoder.weight", (L, d, F), path),
        "encoder.bias": tensor(state, "encoder.bias", (F,), path),
        "decoder.weight": tensor(state, "decoder.weight", (L, F, d), path),
        "decoder.bias": tensor(state, "decoder.bias", (L, d), path),
    }
    known = set(FORK_WEIGHTS) | set(FORK_NORMALISER) | {"code_normalization_id"}
    code = (
        int(state["code_normalization_id"])
        if "code_normalization_id" in state
        else CROSSCODER_CODE_NORMALIZATION
    )
    if code not in CODE_NORMALIZATIONS:
        raise ConvertError(
            f"{path}: tensor 'code_normalization_id' is {code}, not one of {CODE_NORMALIZATIONS}"
        )
    batchtopk = "k" in state or "threshold" in state
    threshold = None
    if batchtopk:
        known |= {"k", "threshold"}
        k = int(tensor(state, "k", (), path))
        if not 0 < k < F:
            raise ConvertError(f"{path}: tensor 'k' is {k}, outside (0, {F})")
        if state.get("threshold", np.zeros(())).shape != ():
            raise ConvertError(
                f"{path}: tensor 'threshold' has shape {list(state['threshold'].shape)}: per-layer thresholds "
                "(code normalization DECOUPLED) have no counterpart in our BatchTopK"
            )
        if code != CROSSCODER_CODE_NORMALIZATION:
            raise ConvertError(
                f"{path}: tensor 'code_normalization_id' is {code} ({CODE_NORMALIZATIONS[code]}): our BatchTopK "
                "selects on activations weighted by the sum of per-source decoder norms, which is CROSSCODER (1) only"
            )
        threshold = float(tensor(state, "threshold", (), path))
        activation = "batchtopk"
    else:
        # The plain CrossCoder encodes with ReLU whatever its code normalization (that only
        # weighs its L1 penalty and get_activations), so every kind converts.
        activation = "relu"
        k = max(1, min(32, F - 1))  # unused by ReLU; our config wants a valid value
    refuse_unknown(state, known, path, "dictionary_learning's CrossCoder state dict")

    present = [name for name in FORK_NORMALISER if name in state]
    normalisation = "none"
    scale, mean = np.ones(L), np.zeros((L, d))
    if present and len(present) != len(FORK_NORMALISER):
        missing = sorted(set(FORK_NORMALISER) - set(present))
        raise ConvertError(f"{path}: normaliser tensor(s) {missing} are missing")
    if present:
        fork_mean = tensor(state, "activation_mean", (L, d), path, finite=False)
        fork_std = tensor(state, "activation_std", (L, d), path, finite=False)
        # The fork marks "no normaliser" with NaN mean and std (has_activation_normalizer).
        if not (np.isnan(fork_mean).any() or np.isnan(fork_std).any()):
            if not np.all(np.isfinite(fork_mean)) or not np.all(np.isfinite(fork_std)):
                raise ConvertError(f"{path}: tensors 'activation_mean'/'activation_std' hold Inf")
            mean = fork_mean
            if args.no_keep_relative_variance:
                # (x − mean) / (std + 1e-8): one scale per channel.
                normalisation = "per_channel"
                scale = 1.0 / (fork_std + FORK_STD_EPSILON)
            else:
                # from_pretrained's model: (x − mean) · activation_global_scale[layer].
                scale = tensor(state, "activation_global_scale", (L,), path)
                normalisation = "scalar" if not np.any(mean) else "mean_and_scale"
            if not np.all(scale > 0):
                raise ConvertError(f"{path}: the normaliser's scale is not positive")
    tensors["normaliser.scale"] = scale
    tensors["normaliser.mean"] = mean
    if threshold is not None:
        tensors["threshold"] = np.array(threshold)

    source_models = parse_source_models(args.source_models, L) if args.source_models else []
    models = max(source_models) + 1 if source_models else L
    exclusive = parse_exclusive(args.exclusive, models, F, path) if args.exclusive else []
    check_exclusive_zeros(tensors, exclusive, source_models or list(range(L)), F, path)
    config = make_config(L, d, F, activation, k, exclusive, normalisation)
    if source_models:
        config["source_models"] = source_models
    write_ours(Path(args.out), config, tensors, f"dictionary_learning {path}")
    print(
        f"{args.out}: {activation}"
        + (f" k={k} threshold={threshold}" if batchtopk else "")
        + f", {L} sources of width {d}, {F} latents, normalisation {normalisation}, code normalization "
        f"{CODE_NORMALIZATIONS[code]}"
    )


def parse_source_models(text: str, sources: int) -> list[int]:
    """Our CrosscoderConfig::source_models: the model of each source (layer), 0 … models − 1."""
    try:
        models = [int(part) for part in text.split(",")]
    except ValueError as error:
        raise ConvertError(f"--source-models: expected {sources} comma-separated models") from error
    if len(models) != sources or min(models) < 0 or set(models) != set(range(max(models) + 1)):
        raise ConvertError(
            f"--source-models: expected the model of each of {sources} sources, numbered 0, 1, ... "
            f"with each used, got '{text}'"
        )
    return models


def parse_exclusive(text: str, sources: int, latents: int, path: Path) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError as error:
        raise ConvertError(
            f"--exclusive: expected {sources} comma-separated counts, got '{text}'"
        ) from error
    if len(counts) != sources or any(c < 0 for c in counts) or sum(counts) > latents:
        raise ConvertError(
            f"--exclusive: expected {sources} non-negative counts summing to at most {latents}, got '{text}'"
        )
    return counts


def check_exclusive_zeros(
    tensors: dict[str, np.ndarray],
    exclusive: list[int],
    model_of: list[int],
    latents: int,
    path: Path,
) -> None:
    """Our exclusive latents (the last blocks, one per model) must have exactly zero weights for
    the sources of every other model."""
    start = latents - sum(exclusive)
    for owner, count in enumerate(exclusive):
        block = slice(start, start + count)
        for m in range(len(model_of)):
            if model_of[m] == owner:
                continue
            for name, part in (
                ("encoder.weight", tensors["encoder.weight"][m, :, block]),
                ("decoder.weight", tensors["decoder.weight"][m, block, :]),
            ):
                if np.any(part):
                    raise ConvertError(
                        f"{path}: tensor '{name}' is not zero for source {m} on latents [{start}, {start + count}) "
                        f"that --exclusive makes exclusive to model {owner}"
                    )
        start += count


def to_dictionary_learning(args: argparse.Namespace) -> None:
    torch = torch_module()
    path = Path(args.checkpoint)
    config, t = read_ours(path)
    M, d, F = config["sources"], config["width"], config["latents"]
    activation, normalisation = config["activation"], config["normalisation"]
    if activation in ("topk", "jumprelu"):
        raise ConvertError(
            f"{path}: activation '{activation}' has no counterpart in dictionary_learning's crosscoders "
            "(CrossCoder is ReLU, BatchTopKCrossCoder batch top-k with one threshold)"
        )
    enc = tensor(t, "encoder.weight", (M, d, F), path).copy()
    dec = tensor(t, "decoder.weight", (M, F, d), path).copy()
    b_dec = tensor(t, "decoder.bias", (M, d), path).copy()
    mean = tensor(t, "normaliser.mean", (M, d), path)
    per_channel = normalisation == "per_channel"
    scale = tensor(t, "normaliser.scale", (M, d) if per_channel else (M,), path)
    if per_channel:
        if activation == "batchtopk":
            raise ConvertError(
                f"{path}: tensor 'normaliser.scale' is per channel, which the fork's from_pretrained "
                "normaliser (one scale per layer) cannot hold, and folding it into the weights would "
                "change the decoder norms that BatchTopK's threshold weighs"
            )
        # Fold the per-channel scale into the weights; the fork then only subtracts the mean.
        enc *= scale[:, :, None]
        dec /= scale[:, None, :]
        b_dec /= scale
        global_scale = np.ones(M)
    else:
        global_scale = scale
    state = {
        "encoder.weight": enc,
        "encoder.bias": tensor(t, "encoder.bias", (F,), path),
        "decoder.weight": dec,
        "decoder.bias": b_dec,
    }
    as_float = {name: torch.tensor(value, dtype=torch.float32) for name, value in state.items()}
    if normalisation == "none":
        as_float["activation_mean"] = torch.full((M, d), float("nan"))
        as_float["activation_std"] = torch.full((M, d), float("nan"))
    else:
        as_float["activation_mean"] = torch.tensor(mean, dtype=torch.float32)
        # Only activation_global_scale acts in a from_pretrained model; the std is chosen so that
        # the fork's own formula target_rms/sqrt(Σ std²) gives that scale back.
        as_float["activation_std"] = torch.tensor(
            np.broadcast_to(1.0 / (global_scale[:, None] * np.sqrt(d)), (M, d)), dtype=torch.float32
        )
    as_float["activation_global_scale"] = torch.tensor(global_scale, dtype=torch.float32)
    as_float["target_rms"] = torch.tensor(1.0)
    as_float["code_normalization_id"] = torch.tensor(CROSSCODER_CODE_NORMALIZATION)
    if activation == "batchtopk":
        as_float["k"] = torch.tensor(int(config["k"]), dtype=torch.int)
        threshold = float(tensor(t, "threshold", (), path))
        as_float["threshold"] = torch.tensor(threshold, dtype=torch.float32)
        if threshold < 0:
            print(
                f"{path}: warning: no learnt threshold: the fork's encode(use_threshold=True) would "
                "keep every positive activation; encode(use_threshold=False) gives our batch top-k",
                file=sys.stderr,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(as_float, out)
    kind = "BatchTopKCrossCoder" if activation == "batchtopk" else "CrossCoder"
    note = (
        f"; exclusive latents {config.get('exclusive')} stay zero-masked (re-import with --exclusive)"
        if config.get("exclusive")
        else ""
    )
    if config.get("source_models"):
        note += f"; re-import with --source-models {','.join(map(str, config['source_models']))}"
    print(
        f"{out}: dictionary_learning {kind}, {M} layers of width {d}, {F} latents, "
        f"normalisation {normalisation}{' folded into the weights' if per_channel else ''}{note}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    study = commands.add_parser("from-study", help="the study's DFCCrossCoder DIR to ours")
    study.add_argument("checkpoint", metavar="DIR")
    stats = study.add_mutually_exclusive_group(required=True)
    stats.add_argument(
        "--zscore", metavar="STATS", help=".pt or .npz with mean and std [2, d], order [A, B]"
    )
    stats.add_argument(
        "--zscore-from-cache", metavar="CACHE_DIR", help="the study's activation cache"
    )
    stats.add_argument(
        "--no-normalisation", action="store_true", help="the run had normalize=False"
    )
    study.add_argument(
        "--rl-is",
        choices=["a", "b"],
        default="a",
        help="which study model is the fine-tune (default a, as the study's config)",
    )
    study.add_argument("--out", required=True)
    fork = commands.add_parser("from-dictionary-learning", help="a dictionary_learning .pt to ours")
    fork.add_argument("checkpoint", metavar="CKPT.pt")
    fork.add_argument("--out", required=True)
    fork.add_argument(
        "--exclusive", metavar="N0,N1,...", help="the last latents are exclusive partitions"
    )
    fork.add_argument(
        "--source-models",
        metavar="M0,M1,...",
        help="the model of each layer (a crosscoder across models and layers); --exclusive is then per model",
    )
    fork.add_argument(
        "--no-keep-relative-variance",
        action="store_true",
        help="the model was built with keep_relative_variance=False (per-channel std)",
    )
    export = commands.add_parser("to-dictionary-learning", help="ours to a dictionary_learning .pt")
    export.add_argument("checkpoint", metavar="X.safetensors")
    export.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        {
            "from-study": from_study,
            "from-dictionary-learning": from_dictionary_learning,
            "to-dictionary-learning": to_dictionary_learning,
        }[args.command](args)
    except ConvertError as error:
        print(f"convert_checkpoint.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
