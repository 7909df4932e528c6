"""PyTorch re-implementations of the training steps researchers run, for side-by-side timing and
loss comparison with crosscoder's Trainer (benchmarks/peer/README.md). Written for this project
from reading the code below; nothing is copied. Each class performs the same tensor computation
as the original, in the same order, with the same dense/sparse choices (that is what is timed).

What was read (repository @ commit, file: functions):

* science-of-finetuning/dictionary_learning @ 173f7fa (the crosscoder fork of
  saprmarks/dictionary_learning, continued from jkminder/dictionary_learning):
  - dictionary_learning/dictionary.py: CrossCoderEncoder.forward (einsum "bld,ldf->blf", sum over
    layers, + bias, ReLU), CrossCoderDecoder.forward (einsum "bf,lfd->bld", + bias),
    CrossCoder.get_code_normalization (CodeNormalization.CROSSCODER: Σ_l ‖W_dec[l, f]‖),
    BatchTopKCrossCoder.encode (use_threshold=False, return_active=True: flatten the scaled
    activations, topk(k·B), scatter the unscaled values into a dense zero B×F buffer),
    NormalizableMixin.normalize_activations.
  - dictionary_learning/trainers/crosscoder.py: BatchTopKCrossCoderTrainer.__init__ (Adam
    betas (0.9, 0.999), top_k_aux = activation_dim // 2, dead_feature_threshold = 10M tokens),
    .loss, .get_auxiliary_loss, .update_threshold, .update (geometric-median b_dec at step 0,
    backward, clip_grad_norm_(1.0), Adam step, zero_grad, LambdaLR step).
  - dictionary_learning/trainers/trainer.py: get_lr_schedule.
  - dictionary_learning/trainers/batch_top_k.py: BatchTopKTrainer.update (the SAE trainer's
    decoder-norm handling, which the crosscoder trainer does not have).
  - dictionary_learning/utils.py: set_decoder_norm_to_unit_norm,
    remove_gradient_parallel_to_decoder_directions.
* jbloomAus/SAELens @ 91ca16cc (v6.18.0):
  - sae_lens/saes/topk_sae.py: TopK.forward (topk per row, ReLU, scatter into dense zeros),
    TopKTrainingSAE.encode_with_hidden_pre (rescale_acts_by_decoder_norm), .decode (dense
    feature_acts @ W_dec), .calculate_topk_aux_loss, _calculate_topk_aux_acts.
  - sae_lens/saes/sae.py: TrainingSAE.training_forward_pass (mse summed over d, mean over rows),
    process_sae_in (apply_b_dec_to_input, default True).
  - sae_lens/training/sae_trainer.py: SAETrainer._train_step (dead mask from forward passes
    since fired, act_freq_scores, backward, clip_grad_norm_(1.0), Adam).
* EleutherAI/sparsify @ 9d3b136:
  - sparsify/fused_encoder.py: FusedEncoder.forward/backward (F.linear + ReLU + per-row topk;
    backward by embedding_bag for the input and index_add_ for weight and bias; the gradient
    of the returned pre-activations is ignored).
  - sparsify/utils.py: eager_decode (embedding_bag with per_sample_weights, mode="sum").
  - sparsify/sparse_coder.py: SparseCoder.encode (x − b_dec), .decode, .forward (FVU, AuxK with
    scale min(dead/k_aux, 1)), set_decoder_norm_to_unit_norm,
    remove_gradient_parallel_to_decoder_directions.
  - sparsify/trainer.py: Trainer.fit (decoder renormalised before each forward, dead mask
    `tokens since fired > threshold`, loss = fvu + auxk_alpha·auxk, gradient projection, no
    clipping, optimizer step; `optimizer: adam` is one of its choices, the default is signum).

Differences from crosscoder's definitions (docs/training.md) that matter for equivalence. Every
class takes `library=True`, which switches exactly these to the library's definition; the
equivalence check (run_peer_benchmark.py --check) uses it. Timing uses library=False (faithful)
unless asked otherwise.

dictionary_learning BatchTopKCrossCoderTrainer:
  1. Loss: the reference optimises l2_loss = mean over rows *and layers* of ‖e_bm‖ (the norm, not
     squared); its logged mse_loss is also averaged over layers. The library minimises
     Σ_m (1/B) Σ_b ‖e_bm‖².
  2. Decoder: the crosscoder trainer neither projects the decoder gradient nor renormalises
     decoder rows; selection uses the decoder-norm-weighted scores instead. The library keeps
     every decoder row (all M·d columns) at unit norm: parallel gradient removed before
     clipping, rows renormalised after the step (as dictionary_learning's BatchTopKTrainer and
     sparsify do for SAEs).
  3. AuxK picks the dead latents by the decoder-norm-weighted score; the library by max(pre, 0).
     k_aux = min(activation_dim // 2, dead) with activation_dim = d (one layer); the library's
     default is D/2 = M·d/2 (the runner passes the same aux_k to both).
  4. Dead latents: the reference adds this batch to the counters, and zeroes those that fired in
     it, *before* AuxK, so a latent firing in this batch is never dead in this step; the
     library decides from the counters before the step and updates them after it.
  5. Not part of the compared steps (both start from the same weights file): the reference sets
     b_dec to the geometric median of the first batch at step 0 and initialises with kaiming
     uniform weights; it starts the BatchTopK threshold EMA after threshold_start_step (1000);
     the library updates it every step (it never enters the training loss). Learning-rate
     schedules are set constant in both.
SAELens TopKTrainingSAE (compared with the library's topk crosscoder, which is an SAE on the
concatenated M·d input: per-row TopK, unit-norm rows over all D columns, Σ_m MSE_m):
  1. x − b_dec before the encoder (apply_b_dec_to_input=True); the library has no
     pre-encoder bias.
  2. rescale_acts_by_decoder_norm=True: TopK on pre·‖W_dec[f]‖, decode divides by the norm; no
     decoder renormalisation. The library: TopK on max(pre, 0), unit-norm rows.
  3. AuxK: coefficient 1 times min(dead/k_aux, 1), *not* divided by the residual variance,
     reconstruction includes b_dec, dead = more than N forward passes (steps) since fired.
     Library: (1/32)·‖ê − e‖²/Var(e) (Gao et al.), no b_dec in ê, dead in tokens.
sparsify SparseCoder (+ Trainer with optimizer=adam):
  1. x − b_dec before the encoder, as SAELens.
  2. Loss FVU = Σ‖e‖² / Σ‖x − x̄‖² (per batch) instead of a per-row mean.
  3. AuxK: the dead latents' activations come from pre_acts, whose gradient FusedEncoder's
     backward drops, so AuxK trains the decoder only; scale min(dead/k_aux, 1); ê includes b_dec;
     auxk_alpha defaults to 0 in sparsify (the runner sets 1/32 so that AuxK runs in both).
  4. No gradient clipping (the library clips at 1.0). Decoder renormalised at the start of each
     forward instead of after the step (the same sequence of losses).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class StepOptions:
    """Optimisation settings shared by the peers; the runner passes the same to the library."""

    k: int
    lr: float = 5e-4
    aux_k: int | None = None  # None: the reference's own heuristic
    auxk_alpha: float = 1.0 / 32
    dead_after_tokens: int = 10_000_000
    gradient_clip: float = 1.0
    threshold_start_step: int = 0  # dictionary_learning: steps before the threshold EMA starts
    library: bool = False  # use docs/training.md's definitions where the reference differs


def _adam(params, lr):
    # Constant learning rate: the runner sets warm-up and decay off in the library too.
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)


@torch.no_grad()
def _project_out_parallel(weight: torch.Tensor, grad: torch.Tensor, row_dims) -> None:
    """grad −= (grad·ŵ) ŵ for every latent's decoder row ŵ (the norm taken over row_dims)."""
    unit = weight / (weight.norm(dim=row_dims, keepdim=True) + 1e-6)
    grad -= (grad * unit).sum(dim=row_dims, keepdim=True) * unit


@torch.no_grad()
def _renormalise(weight: torch.Tensor, row_dims) -> None:
    weight /= weight.norm(dim=row_dims, keepdim=True) + torch.finfo(weight.dtype).eps


class _StepBase:
    def __init__(self, options: StepOptions, latents: int):
        self.o = options
        self.tokens_since_fired = torch.zeros(latents, dtype=torch.long)
        self.steps_done = 0

    def _dead_before_step(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.o.dead_after_tokens

    def _count_fired(self, fired: torch.Tensor, rows: int) -> None:
        self.tokens_since_fired += rows
        self.tokens_since_fired[fired] = 0


# ---- dictionary_learning: BatchTopKCrossCoder + BatchTopKCrossCoderTrainer ---------------------


class DictionaryLearningBatchTopK(_StepBase):
    """One BatchTopKCrossCoderTrainer.update on x [B, M, d] (activations already normalised)."""

    def __init__(self, weights: dict, options: StepOptions, dtype=torch.float32):
        enc = weights["encoder.weight"]  # [M, d, F] (dictionary_learning's own layout)
        super().__init__(options, enc.shape[2])
        self.M, self.d, self.F = enc.shape
        p = lambda name: torch.nn.Parameter(weights[name].to(dtype).clone())  # noqa: E731
        self.W_enc = p("encoder.weight")
        self.b_enc = p("encoder.bias")  # [F]
        self.W_dec = p("decoder.weight")  # [M, F, d]
        self.b_dec = p("decoder.bias")  # [M, d]
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        self.optimizer = _adam(self.params, options.lr)
        self.threshold = -1.0
        # the reference: top_k_aux = activation_dim // 2, activation_dim being one layer's d
        self.aux_k = options.aux_k if options.aux_k is not None else self.d // 2

    def code_normalization(self) -> torch.Tensor:
        return self.W_dec.norm(dim=2).sum(dim=0, keepdim=True)  # [1, F]

    def step(self, x: torch.Tensor) -> dict:
        o = self.o
        B = x.shape[0]
        dead_before = self._dead_before_step()
        # encode: per-layer einsum, sum, bias, ReLU; weighted scores; flat top-k over the batch
        post_relu = F.relu(torch.einsum("bld,ldf->blf", x, self.W_enc).sum(dim=1) + self.b_enc)
        weight = self.code_normalization()
        scaled = post_relu * weight
        flat = scaled.flatten()
        top = flat.topk(o.k * B, sorted=False, dim=-1)
        values = post_relu.flatten()[top.indices]
        f = torch.zeros_like(flat).scatter_(-1, top.indices, values).reshape(post_relu.shape)
        f_scaled = f * weight
        fired = f.sum(0) > 0
        if self.steps_done + 1 > o.threshold_start_step:
            self._update_threshold(f_scaled)
        # dense decode
        x_hat = torch.einsum("bf,lfd->bld", f, self.W_dec) + self.b_dec
        e = x - x_hat
        if o.library:
            dead = dead_before
        else:  # the reference counts this batch before AuxK
            self._count_fired(fired, B)
            dead = self._dead_before_step()
        mse = e.pow(2).sum(dim=-1).mean()  # the reference's logged mse_loss (mean over layers too)
        if o.library:
            reconstruction = e.pow(2).sum(dim=(1, 2)).mean()
        else:
            reconstruction = torch.linalg.norm(e, dim=-1).mean()  # l2_loss: what it optimises
        auxk = self._auxk(e.detach(), post_relu, scaled, dead)
        loss = reconstruction + o.auxk_alpha * auxk
        loss.backward()
        if o.library:
            _project_out_parallel(self.W_dec.data, self.W_dec.grad, row_dims=(0, 2))
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, o.gradient_clip)
        self.optimizer.step()
        self.optimizer.zero_grad()
        if o.library:
            _renormalise(self.W_dec.data, row_dims=(0, 2))
            self._count_fired(fired, B)
        self.steps_done += 1
        return {
            "loss": loss.item(),
            "reconstruction": reconstruction.item(),
            "auxk": (o.auxk_alpha * auxk).item(),
            "mse": mse.item(),
            "gradient_norm": grad_norm.item(),
            "dead": int(dead.sum()),
        }

    def _auxk(self, residual, post_relu, scaled, dead) -> torch.Tensor:
        B = residual.shape[0]
        residual = residual.reshape(B, -1)
        n_dead = int(dead.sum())
        if n_dead == 0:
            return residual.new_zeros(())
        k_aux = min(self.aux_k, n_dead)
        score = post_relu if self.o.library else scaled
        masked = torch.where(dead[None], score, -torch.inf).detach()
        _, idx = masked.topk(k_aux, sorted=False)
        rows = torch.arange(B).view(-1, 1).expand(-1, idx.shape[1])
        acts = torch.zeros_like(post_relu).scatter_(-1, idx, post_relu[rows, idx])
        recon = torch.einsum("bf,lfd->bld", acts, self.W_dec).reshape(B, -1)  # no bias
        numerator = (residual - recon).pow(2).sum(dim=-1).mean()
        mean = residual.mean(dim=0)[None, :].broadcast_to(residual.shape)
        denominator = (residual - mean).pow(2).sum(dim=-1).mean()
        return (numerator / denominator).nan_to_num(0.0)

    @torch.no_grad()
    def _update_threshold(self, f_scaled) -> None:
        active = f_scaled[f_scaled > 0]
        smallest = active.min().item() if active.numel() else 0.0
        beta = 0.999
        self.threshold = smallest if self.threshold < 0 else beta * self.threshold + (1 - beta) * smallest


# ---- TopK SAEs on the concatenated input (D = M·d) -------------------------------------------


def sae_weights(weights: dict, dtype) -> dict:
    """The crosscoder file's tensors as an SAE on the concatenation: W_enc [D, F], W_dec [F, D]."""
    enc = weights["encoder.weight"]  # [M, d, F]
    M, d, F_ = enc.shape
    return {
        "W_enc": enc.reshape(M * d, F_).to(dtype).clone(),
        "b_enc": weights["encoder.bias"].to(dtype).clone(),
        "W_dec": weights["decoder.weight"].permute(1, 0, 2).reshape(F_, M * d).to(dtype).clone(),
        "b_dec": weights["decoder.bias"].reshape(M * d).to(dtype).clone(),
    }


class SAELensTopK(_StepBase):
    """One SAETrainer._train_step of a TopKTrainingSAE on x [B, D] (dense scatter, dense decode)."""

    def __init__(self, weights: dict, options: StepOptions, dtype=torch.float32,
                 dead_feature_window: int | None = None):
        w = sae_weights(weights, dtype)
        super().__init__(options, w["W_enc"].shape[1])
        self.D, self.F = w["W_enc"].shape
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = (
            torch.nn.Parameter(w[n]) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
        self.params = [self.W_dec, self.W_enc, self.b_enc, self.b_dec]
        self.optimizer = _adam(self.params, options.lr)
        self.aux_k = options.aux_k if options.aux_k is not None else self.D // 2
        # SAELens counts forward passes (steps), not tokens
        self.dead_feature_window = dead_feature_window
        self.passes_since_fired = torch.zeros(self.F)
        self.act_freq_scores = torch.zeros(self.F)

    def step(self, x: torch.Tensor) -> dict:
        o = self.o
        B = x.shape[0]
        if o.library:
            dead = self._dead_before_step()
            sae_in = x
        else:
            dead = self.passes_since_fired > self.dead_feature_window
            sae_in = x - self.b_dec  # apply_b_dec_to_input
        hidden_pre = sae_in @ self.W_enc + self.b_enc
        if not o.library:  # rescale_acts_by_decoder_norm
            hidden_pre = hidden_pre * self.W_dec.norm(dim=-1)
            topk = torch.topk(hidden_pre, k=o.k, dim=-1, sorted=False)
            values = topk.values.relu()
        else:
            topk = torch.topk(F.relu(hidden_pre), k=o.k, dim=-1, sorted=False)
            values = topk.values
        feature_acts = torch.zeros_like(hidden_pre).scatter_(-1, topk.indices, values)
        sae_out = self._decode(feature_acts, bias=True)
        reconstruction = F.mse_loss(sae_out, x, reduction="none").sum(dim=-1).mean()
        auxk = self._auxk(x, sae_out, hidden_pre, dead)
        loss = reconstruction + auxk
        with torch.no_grad():
            firing = feature_acts.bool().float()
            fired = firing.sum(-2).bool()
            self.passes_since_fired += 1
            self.passes_since_fired[fired] = 0
            self.act_freq_scores += firing.sum(0)
        loss.backward()
        if o.library:
            _project_out_parallel(self.W_dec.data, self.W_dec.grad, row_dims=1)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, o.gradient_clip)
        self.optimizer.step()
        self.optimizer.zero_grad()
        if o.library:
            _renormalise(self.W_dec.data, row_dims=1)
            self._count_fired(fired, B)
        self.steps_done += 1
        return {"loss": loss.item(), "reconstruction": reconstruction.item(),
                "auxk": auxk.item(), "gradient_norm": grad_norm.item(), "dead": int(dead.sum())}

    def _decode(self, acts, bias: bool):
        if not self.o.library:
            acts = acts * (1 / self.W_dec.norm(dim=-1))
        out = acts @ self.W_dec
        return out + self.b_dec if bias else out

    def _auxk(self, x, sae_out, hidden_pre, dead):
        n_dead = int(dead.sum())
        if n_dead == 0:
            return sae_out.new_zeros(())
        residual = (x - sae_out).detach()
        k_aux = self.aux_k
        scale = min(n_dead / k_aux, 1.0)
        k_aux = min(k_aux, n_dead)
        score = F.relu(hidden_pre) if self.o.library else hidden_pre
        masked = torch.where(dead[None], score, -torch.inf)
        top = masked.topk(k_aux, sorted=False)
        acts = torch.zeros_like(hidden_pre).scatter_(-1, top.indices, top.values)
        if not self.o.library:
            recons = self._decode(acts, bias=True)
            return 1.0 * scale * (recons - residual).pow(2).sum(dim=-1).mean()
        recons = self._decode(acts, bias=False)
        numerator = (recons - residual).pow(2).sum(dim=-1).mean()
        denominator = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean()
        return self.o.auxk_alpha * numerator / denominator


class _FusedTopKEncoder(torch.autograd.Function):
    """sparsify's encoder: dense F.linear + ReLU + per-row topk forward; sparse backward
    (embedding_bag for the input, index_add_ for weight and bias). The gradient reaching the
    returned pre-activations is ignored, as in sparsify."""

    @staticmethod
    def forward(ctx, x, weight, bias, k: int):
        pre = F.relu(F.linear(x, weight, bias))
        values, indices = torch.topk(pre, k, dim=-1, sorted=False)
        ctx.save_for_backward(x, weight, indices)
        return values, indices, pre

    @staticmethod
    def backward(ctx, grad_values, grad_indices, grad_pre):
        x, weight, indices = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, weight, mode="sum",
                                     per_sample_weights=grad_values.type_as(weight))
        if ctx.needs_input_grad[1]:
            contributions = (grad_values.unsqueeze(2) * x.unsqueeze(1)).reshape(-1, x.shape[-1])
            grad_weight = torch.zeros_like(weight)
            grad_weight.index_add_(0, indices.flatten(), contributions.type_as(weight))
        if ctx.needs_input_grad[2]:
            grad_bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
            grad_bias.index_add_(0, indices.flatten(), grad_values.flatten().type_as(weight))
        return grad_x, grad_weight, grad_bias, None


class SparsifyTopK(_StepBase):
    """One sparsify Trainer step (optimizer=adam) of a SparseCoder on x [B, D]: sparse encoder
    backward and embedding_bag decoder."""

    def __init__(self, weights: dict, options: StepOptions, dtype=torch.float32):
        w = sae_weights(weights, dtype)
        super().__init__(options, w["W_enc"].shape[1])
        self.D, self.F = w["W_enc"].shape
        self.enc_weight = torch.nn.Parameter(w["W_enc"].T.contiguous())  # nn.Linear: [F, D]
        self.enc_bias = torch.nn.Parameter(w["b_enc"])
        self.W_dec = torch.nn.Parameter(w["W_dec"])  # [F, D]
        self.b_dec = torch.nn.Parameter(w["b_dec"])
        self.params = [self.enc_weight, self.enc_bias, self.W_dec, self.b_dec]
        self.optimizer = _adam(self.params, options.lr)
        self.aux_k = options.aux_k if options.aux_k is not None else self.D // 2

    def _decode(self, acts, indices, bias: bool):
        # eager_decode(top_indices, top_acts, W_dec.mT) = embedding_bag(indices, W_dec, ...)
        out = F.embedding_bag(indices, self.W_dec, per_sample_weights=acts, mode="sum")
        return out + self.b_dec if bias else out

    def step(self, x: torch.Tensor) -> dict:
        o = self.o
        B = x.shape[0]
        _renormalise(self.W_dec.data, row_dims=1)  # before every forward, as sparsify
        dead = self._dead_before_step() if o.library else (
            self.tokens_since_fired > o.dead_after_tokens)
        sae_in = x if o.library else x - self.b_dec
        top_acts, top_idx, pre = _FusedTopKEncoder.apply(sae_in, self.enc_weight, self.enc_bias,
                                                         o.k)
        sae_out = self._decode(top_acts, top_idx, bias=True)
        e = x - sae_out
        total_variance = (x - x.mean(0)).pow(2).sum()
        auxk = self._auxk(sae_in, e, pre, dead, total_variance)
        if o.library:
            reconstruction = e.pow(2).sum() / B
        else:
            reconstruction = e.pow(2).sum() / total_variance  # fvu
        loss = reconstruction + o.auxk_alpha * auxk
        fired = torch.zeros(self.F, dtype=torch.bool)
        fired[top_idx.flatten()] = True
        loss.backward()
        _project_out_parallel(self.W_dec.data, self.W_dec.grad, row_dims=1)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.params, o.gradient_clip) if o.library
                     else torch.tensor(float("nan")))  # sparsify does not clip
        self.optimizer.step()
        self.optimizer.zero_grad()
        self._count_fired(fired, B)
        self.steps_done += 1
        return {"loss": loss.item(), "reconstruction": reconstruction.item(),
                "auxk": (o.auxk_alpha * auxk).item(), "gradient_norm": grad_norm.item(),
                "dead": int(dead.sum())}

    def _auxk(self, sae_in, e, pre, dead, total_variance):
        n_dead = int(dead.sum())
        if n_dead == 0:
            return e.new_zeros(())
        k_aux = self.aux_k
        scale = min(n_dead / k_aux, 1.0)
        k_aux = min(k_aux, n_dead)
        if self.o.library:
            # gradient reaches the encoder through the dead latents' activations (dense here:
            # this path only serves the equivalence check)
            pre = F.relu(F.linear(sae_in, self.enc_weight, self.enc_bias))
        masked = torch.where(dead[None], pre, -torch.inf)
        acts, idx = masked.topk(k_aux, sorted=False)
        if self.o.library:
            e_hat = self._decode(acts, idx, bias=False)
            numerator = (e_hat - e.detach()).pow(2).sum(dim=-1).mean()
            denominator = (e.detach() - e.detach().mean(0)).pow(2).sum(dim=-1).mean()
            return numerator / denominator
        e_hat = self._decode(acts, idx, bias=True)
        return scale * (e_hat - e.detach()).pow(2).sum() / total_variance


PEERS = {
    "dictionary_learning": DictionaryLearningBatchTopK,
    "saelens": SAELensTopK,
    "sparsify": SparsifyTopK,
}
# The library's activation each peer is compared with.
LIBRARY_ACTIVATION = {"dictionary_learning": "batchtopk", "saelens": "topk", "sparsify": "topk"}


def make_peer(name: str, weights: dict, options: StepOptions, dtype=torch.float32, **kwargs):
    if name == "saelens" and "dead_feature_window" not in kwargs:
        raise ValueError("saelens needs dead_feature_window (steps)")
    return PEERS[name](weights, options, dtype=dtype, **kwargs)


def peer_input(name: str, x: torch.Tensor) -> torch.Tensor:
    """x [B, M, d] in the layout the peer takes: [B, M, d] for the crosscoder, [B, M·d] for SAEs."""
    return x if name == "dictionary_learning" else x.reshape(x.shape[0], -1)


