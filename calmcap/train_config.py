"""A training run's settings: the recipe YAML, mapped onto typed dataclasses.

Kept apart from the model's architecture (``calmcap.config.ModelConfig``): the YAML names an
architecture and may override its fields under ``model.overrides``; everything else here is
about the run. ``key.sub=value`` overrides from the command line are applied before the
dataclass check, so unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from calmcap.config import DecodeOptions, apply_overrides, from_dict, to_dict
from calmcap.errors import ConfigError
from calmcap.losses import LossWeights

# Experiment trackers a run can log to besides metrics.jsonl: the names accelerate's tracking API
# takes (``Accelerator(log_with=...)``; accelerate.utils.LoggerType without "all", which would pick
# whatever happens to be installed). tests/test_config.py checks the list against accelerate's.
Tracker = Literal["aim", "clearml", "comet_ml", "dvclive", "mlflow", "swanlab", "tensorboard", "trackio", "wandb"]


@dataclass
class ModelChoice:
    name: str = "calmcap-tiny"  # a registered architecture or a JSON file
    overrides: list[str] = field(default_factory=list)  # e.g. ["alignment.variant=kl"]
    init_from: str | None = None  # a checkpoint directory to start from (e.g. for SCST)


@dataclass
class SynthData:
    """Generate the embedded benchmark (or its pretraining corpus) into ``data.manifest``'s
    directory when it is missing."""

    enabled: bool = False
    # benchmark: train/val/test/test_ood/test_ood_visual/test_ood_text; pretrain: the pretraining
    # corpus (pretrain, pretrain_val).
    corpus: Literal["benchmark", "pretrain"] = "benchmark"
    seed: int = 0
    num_train: int = 3000
    num_val: int = 250
    num_test: int = 500
    num_test_ood: int = 500
    num_test_ood_visual: int = 500  # domain B rendering, domain A wording (issue #12)
    num_test_ood_text: int = 500  # domain A rendering, domain B wording
    num_videos: int = 20000  # corpus: pretrain only
    workers: int = 2


@dataclass
class DataConfig:
    manifest: str = "data/synth/manifest.jsonl"
    train_split: str = "train"
    val_split: str = "val"
    # all_pairs: every (video, caption) pair per epoch; one_per_video: one caption drawn per epoch.
    mode: Literal["all_pairs", "one_per_video"] = "one_per_video"
    num_workers: int = 2
    frame_cache: str | None = None
    feature_cache: str | None = None
    backend: Literal["auto", "decord", "pyav"] = "auto"
    max_side: int | None = 1280
    max_caption_length: int = 32
    tokenizer_vocab_size: int = 8000
    synth: SynthData = field(default_factory=SynthData)


@dataclass
class OptimConfig:
    lr: float = 1e-4  # new modules (fusion, anchors, VAE, decoder, retrieval head)
    clip_lr: float = 1e-5  # the CLIP towers (the paper's 1e-5)
    weight_decay: float = 0.05
    # Decoupled weight decay of the anchor offsets e_k alone: it pulls each anchor a_k = p_k + e_k
    # back towards its label prompt p_k (0: no pull; issue #11 measured the choice).
    anchor_offset_decay: float = 0.0
    # Learning rate of the anchor offsets e_k (null: optim.lr, that of the other new modules).
    anchor_offset_lr: float | None = None
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 1.0
    batch_size: int = 128  # per process
    grad_accum_steps: int = 1
    epochs: int = 20
    max_steps: int | None = None  # overrides epochs when set


@dataclass
class TrainSettings:
    task: Literal["caption", "retrieval"] = "caption"  # retrieval turns the caption loss off
    freeze_image_tower: bool = False
    freeze_text_tower: bool = False
    grad_checkpointing: bool = False
    # NaN/inf losses: the step is skipped and logged; this many in a row stop the run.
    max_bad_steps: int = 5


@dataclass
class EvalConfig:
    every_steps: int = 500
    at_end: bool = True
    metric: str = "caption/CIDEr"  # selects the best checkpoint (higher is better)
    max_videos: int | None = None  # evaluate on the first N validation videos (speed)
    batch_size: int = 64
    meteor: bool = False  # METEOR costs a JVM start per evaluation; final reports include it
    # How validation captions; saved into exported checkpoints as their "generation".
    decode: DecodeOptions = field(default_factory=DecodeOptions)

    def validate(self) -> None:
        self.decode.check("eval.decode")
        if self.decode.do_sample or self.decode.num_return_sequences != 1:
            raise ConfigError("eval.decode: evaluation decodes deterministically with one caption per video "
                              "(do_sample: false, num_return_sequences: 1)")


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    keep: int = 2  # resume states kept (oldest rotated out)


@dataclass
class SCSTConfig:
    """Self-critical sequence training: CIDEr-D reward, greedy baseline (optional stage).

    Starts from ``model.init_from`` (a cross-entropy-trained model) and fine-tunes the caption
    decoder only; the CLIP towers, anchor branch and retrieval head stay as they are, so the
    retrieval scores of the starting model are kept.
    """

    enabled: bool = False
    num_samples: int = 5
    max_length: int = 20
    top_p: float = 1.0
    temperature: float = 1.0


@dataclass
class ExportConfig:
    """Files written from the final model besides ``model/``."""

    # The CLIP towers as an open_clip-format safetensors file (the pretraining recipe's product:
    # the ``synth`` tag of calmcap-tiny-clip, issue #11); null: none.
    clip_weights: str | None = None
    clip_dtype: Literal["float16", "float32"] = "float16"


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 0
    model: ModelChoice = field(default_factory=ModelChoice)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    loss: LossWeights = field(default_factory=LossWeights)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    scst: SCSTConfig = field(default_factory=SCSTConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    log_every_steps: int = 10
    # Where the logged values go besides metrics.jsonl (always written): accelerate trackers, e.g.
    # [tensorboard] or [wandb, mlflow]; their files live under output_dir/trackers/ (issue #15).
    trackers: list[Tracker] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return to_dict(self)

    def tracker_config(self) -> dict[str, bool | int | float | str]:
        """The settings as one flat mapping for a tracker's hyperparameter table.

        Keys are dotted paths (``optim.lr``); values are what every tracker accepts there (TensorBoard's
        hparams take only scalars and strings): lists become their JSON text and null becomes "null".
        """
        flat: dict[str, bool | int | float | str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, sub in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, sub)
            elif isinstance(value, (bool, int, float, str)):
                flat[prefix] = value
            else:  # lists and None
                flat[prefix] = json.dumps(value)

        walk("", self.to_json())
        return flat


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a recipe YAML, apply ``key.sub=value`` overrides, check keys and types."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: malformed YAML ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return from_dict(TrainConfig, data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
