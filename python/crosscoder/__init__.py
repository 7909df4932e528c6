"""crosscoder: sparse crosscoders for model diffing, from Python.

The C++ library (training, diff metrics, steering, splicing) as a Python package. Arrays go in
and out as NumPy arrays; torch CPU tensors are accepted through DLPack without a copy. Hugging
Face helpers (capture, steer, splice) are in :mod:`crosscoder.hf`, which needs torch and
transformers. The Python user's guide is docs/python.md.

    import crosscoder as cc
    data = cc.ActivationDataset.open("activations/manifest.json")
    model = cc.Crosscoder(cc.CrosscoderConfig(sources=data.sources, width=data.width,
                                              latents=4096, k=32))
    trainer = cc.Trainer(model, cc.TrainConfig(steps=2000, batch_size=1024))
    cc.train(trainer, data, checkpoint="run.train.safetensors")
    report = cc.diff(model, data)
    print(report.rank("relative_norm_1")[:10])
"""

from ._core import (
    ActivationDataset,
    ActivationWriter,
    Backend,
    Cancelled,
    Crosscoder,
    ConditionScores,
    CrosscoderConfig,
    DataMetrics,
    DiffReport,
    Error,
    Interval,
    Intervention,
    LanguageModelReport,
    LanguageModelScores,
    LatentContrast,
    LatentExamples,
    LatentScaling,
    MIXED_LATENT,
    SHARED_LATENT,
    SparseCodes,
    Splicer,
    Steerer,
    StepReport,
    TrainConfig,
    Trainer,
    Vocabulary,
    WeightMetrics,
    __version__,
    available_backends,
    best_backend,
    check_fits,
    diff,
    load_examples,
    make_backend,
    study_dfc_partition_l1,
    train,
)

__all__ = [
    "ActivationDataset",
    "ActivationWriter",
    "Backend",
    "Cancelled",
    "Crosscoder",
    "ConditionScores",
    "CrosscoderConfig",
    "DataMetrics",
    "DiffReport",
    "Error",
    "Interval",
    "Intervention",
    "LanguageModelReport",
    "LanguageModelScores",
    "LatentContrast",
    "LatentExamples",
    "LatentScaling",
    "MIXED_LATENT",
    "SHARED_LATENT",
    "SparseCodes",
    "Splicer",
    "Steerer",
    "StepReport",
    "TrainConfig",
    "Trainer",
    "Vocabulary",
    "WeightMetrics",
    "__version__",
    "available_backends",
    "best_backend",
    "check_fits",
    "diff",
    "load_examples",
    "make_backend",
    "study_dfc_partition_l1",
    "train",
]
