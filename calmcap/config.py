"""Typed configuration: a strict dict -> dataclass builder and the model architecture config.

Two kinds of config are never mixed (STYLE.md): the model's architecture (this module's
``ModelConfig``, JSON, saved in every checkpoint) and a run's settings (a recipe's YAML).
Both are dataclasses built by :func:`from_dict`, which rejects unknown keys and wrong types
with the dotted name of the offending key.

Architectures are data: ``calmcap/model_configs/*.json`` fill the registry read by
:func:`get_model_config`; small open_clip towers used by the tiny models are registered with
open_clip from ``calmcap/clip_configs/*.json`` (see ``calmcap.models.encoders``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from calmcap.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
MODEL_CONFIG_DIR = PACKAGE_DIR / "model_configs"
CLIP_CONFIG_DIR = PACKAGE_DIR / "clip_configs"
ANCHOR_DIR = PACKAGE_DIR / "anchors"
# Weights shipped with the package as open_clip pretrained tags (tags.json lists them).
PRETRAINED_DIR = PACKAGE_DIR / "pretrained"

# Bumped when the meaning of a saved config changes; checkpoints record it.
CONFIG_FORMAT_VERSION = 1

T = TypeVar("T")
_FLOAT_SPELLING = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


# --------------------------------------------------------------------------- strict builder


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{key}: must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_type, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads "1e-5" (no dot) as a string; accept that spelling of a number.
        if isinstance(value, str) and _FLOAT_SPELLING.match(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"config field {key} has an unsupported annotation {tp!r}")


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are ConfigErrors."""
    where = prefix or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown config key {name!r} (known keys here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key {key!r}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain JSON-able data."""
    return dataclasses.asdict(obj)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse a command-line override ``a.b.c=value``; the value is read as YAML (numbers, bools, lists)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested mapping (the dataclass check comes after)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


# --------------------------------------------------------------------------- model config

AlignmentVariant = Literal["vae", "kl", "ce", "mse", "none"]


@dataclass
class ClipConfig:
    """The CLIP towers: an open_clip architecture name and where its weights come from."""

    arch: str = "ViT-B-32"
    # An open_clip pretrained tag (e.g. "openai", downloaded and cached by open_clip when
    # online), a local weights file, or null for random initialisation.
    pretrained: str | None = None


@dataclass
class FusionConfig:
    """Temporal fusion of frame features into one video vector."""

    type: Literal["mean", "transformer"] = "mean"
    num_layers: int = 1
    num_heads: int = 8

    def validate(self) -> None:
        if self.num_layers < 1 or self.num_heads < 1:
            raise ConfigError("fusion.num_layers and fusion.num_heads must be positive")


@dataclass
class AnchorConfig:
    """Class anchors (docs/DESIGN.md section 1, "The method", steps 2-3)."""

    # A label file shipped in calmcap/anchors (by stem, e.g. "charades_157", "coco_80",
    # "synth_concepts") or a path to a text file with one label per line.
    label_set: str = "charades_157"
    # null: every label of the file; 0 disables the anchor branch (the baseline); N: the first N.
    num_anchors: int | None = None
    prompt_template: str = "The content of {label}"
    # Scale of the cosine similarities before the softmax (the paper's tau; ~1/0.07).
    tau: float = 1.0 / 0.07
    learn_tau: bool = False
    pos_embed_std: float = 0.02

    def validate(self) -> None:
        if self.num_anchors is not None and self.num_anchors < 0:
            raise ConfigError("anchors.num_anchors must be null (all labels), 0 (disabled) or positive")
        if "{label}" not in self.prompt_template:
            raise ConfigError("anchors.prompt_template must contain '{label}'")
        if self.tau <= 0:
            raise ConfigError("anchors.tau must be positive")


@dataclass
class AlignmentConfig:
    """How the video's anchor distribution is aligned to the text's (docs/DESIGN.md sections 1 and 2)."""

    # vae: the cross-modal VAE (CALM); kl/ce/mse: direct alignment of V_p to S_p (paper
    # Table 7); none: no anchor branch.
    variant: AlignmentVariant = "vae"
    hidden_dim: int = 384
    latent_dim: int = 256
    # The paper's objective is an ELBO on p(S_p | V_p): S_p is the observed target, so neither
    # L_rec nor L_KL sends gradient into the text tower through it (true, the default). false
    # lets L_rec move S_p, an ablation only: then one constant one-hot S_p is the optimum and
    # the anchor branch collapses (docs/STUDY.md; issue #11).
    detach_text_dist: bool = True
    # What the VAE's encoder reads of V_p (our choice; the paper feeds "V_p"): "prob", the
    # distribution itself (entries ~1/K, varying by little when the cosines are close), or
    # "log_prob", its logarithm centred over the anchors (= tau * (cos - mean cos), scale-free in K).
    vae_input: Literal["prob", "log_prob"] = "prob"

    def validate(self) -> None:
        if self.hidden_dim < 1 or self.latent_dim < 1:
            raise ConfigError("alignment.hidden_dim and alignment.latent_dim must be positive")


@dataclass
class DecoderConfig:
    """The caption decoder: a GPT-2-style transformer with cross-attention."""

    width: int = 512
    num_layers: int = 4
    num_heads: int = 8
    # Set from the SentencePiece tokenizer trained on the training captions.
    vocab_size: int = 8000
    max_positions: int = 64
    # Tokens projected from the anchor-aligned latent and added to the decoder's memory.
    num_latent_tokens: int = 4
    # Without a latent (the baseline: alignment.variant=none or no anchors), the memory still gets
    # num_latent_tokens tokens, learned constants, so that the baseline's decoder has CALM's memory
    # size and a variant differs from it in the alignment only (issue #12; our choice, the paper
    # does not say how its baseline's decoder is sized). false: the frames alone.
    constant_tokens_without_latent: bool = True
    dropout: float = 0.1

    def validate(self) -> None:
        if self.width % self.num_heads:
            raise ConfigError(f"decoder.width ({self.width}) must be divisible by decoder.num_heads ({self.num_heads})")
        if self.vocab_size < 8:
            raise ConfigError("decoder.vocab_size must be at least 8")
        if self.num_latent_tokens < 0:
            raise ConfigError(f"decoder.num_latent_tokens must be at least 0, got {self.num_latent_tokens}")


@dataclass
class RetrievalConfig:
    """Retrieval head: cosine similarity with a learnable temperature."""

    init_logit_scale: float = 1.0 / 0.07
    max_logit_scale: float = 100.0


@dataclass
class ModelConfig:
    """The architecture of a calmcap model; saved as ``config.json`` in every checkpoint."""

    name: str
    clip: ClipConfig = field(default_factory=ClipConfig)
    num_frames: int = 12
    image_size: int = 224
    fusion: FusionConfig = field(default_factory=FusionConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)

    def validate(self) -> None:
        if self.num_frames < 1:
            raise ConfigError("num_frames must be positive")
        if self.image_size < 8:
            raise ConfigError("image_size must be at least 8")

    @property
    def use_anchors(self) -> bool:
        """Whether the anchor branch exists (K > 0 and an alignment other than 'none')."""
        return self.alignment.variant != "none" and self.anchors.num_anchors != 0

    def to_json(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True)
class DecodeOptions:
    """How captions are decoded: the one definition of the settings, their defaults and limits.

    Used by :meth:`calmcap.models.decoder.CaptionDecoder.generate` (which has no defaults of its
    own), a recipe's ``eval.decode``, a checkpoint's ``generation`` (what its training validated
    with), the pipeline's :class:`~calmcap.pipeline.CaptionOptions` (overrides of a checkpoint's
    settings) and the CLI's decoding options and their help.

    ``max_length`` / ``min_length`` count generated tokens. Beam search keeps ``num_beams``
    hypotheses and ranks them by ``log p / length ** length_penalty``; ``no_repeat_ngram_size``
    (0: off) forbids repeating any n-gram of that size. ``do_sample`` switches to nucleus
    sampling (``top_p``, ``temperature``). ``num_return_sequences`` captions come back per video.
    """

    num_beams: int = 3
    max_length: int = 20
    min_length: int = 0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    do_sample: bool = False
    top_p: float = 1.0
    temperature: float = 1.0
    num_return_sequences: int = 1

    # Not named ``validate``: from_dict would call that without the key's place in the config,
    # and the message must name it (``eval.decode.num_beams``); the owners call check(prefix).
    def check(self, prefix: str = "") -> DecodeOptions:
        """Raise :class:`ConfigError` naming the setting (``prefix.name``) if any is impossible; else self."""
        self.check_values(dataclasses.asdict(self), prefix)
        return self

    @staticmethod
    def check_values(values: dict[str, Any], prefix: str = "") -> None:
        """:meth:`check` for the settings present in ``values`` (missing or None: not checked).

        A rule between several settings waits until all of them are present, so a partial set
        (a checkpoint's overrides before they meet the defaults) is checked as far as it goes.
        """

        def given(*names: str) -> bool:
            return all(values.get(n) is not None for n in names)

        def key(name: str) -> str:
            return f"{prefix}.{name}" if prefix else name

        v = values
        rules = [
            (not given("num_beams") or v["num_beams"] >= 1,
             f"{key('num_beams')} must be at least 1, got {v.get('num_beams')}"),
            (not given("max_length") or v["max_length"] >= 1,
             f"{key('max_length')} must be at least 1, got {v.get('max_length')}"),
            (not given("min_length") or v["min_length"] >= 0,
             f"{key('min_length')} must be >= 0, got {v.get('min_length')}"),
            (not given("min_length", "max_length") or v["min_length"] <= v["max_length"],
             f"{key('min_length')} must be between 0 and {key('max_length')} ({v.get('max_length')}), "
             f"got {v.get('min_length')}"),
            (not given("length_penalty") or math.isfinite(v["length_penalty"]),
             f"{key('length_penalty')} must be a finite number, got {v.get('length_penalty')}"),
            (not given("no_repeat_ngram_size") or v["no_repeat_ngram_size"] >= 0,
             f"{key('no_repeat_ngram_size')} must be >= 0, got {v.get('no_repeat_ngram_size')}"),
            (not given("top_p") or 0.0 < v["top_p"] <= 1.0, f"{key('top_p')} must be in (0, 1], got {v.get('top_p')}"),
            (not given("temperature") or v["temperature"] > 0.0,
             f"{key('temperature')} must be positive, got {v.get('temperature')}"),
            (not given("num_return_sequences") or v["num_return_sequences"] >= 1,
             f"{key('num_return_sequences')} must be at least 1, got {v.get('num_return_sequences')}"),
            (not given("do_sample", "num_beams", "num_return_sequences") or v["do_sample"]
             or v["num_return_sequences"] <= v["num_beams"],
             f"{key('num_return_sequences')} ({v.get('num_return_sequences')}) cannot exceed {key('num_beams')} "
             f"({v.get('num_beams')}) with beam search; raise num_beams or sample"),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)


def list_models() -> list[str]:
    """Names of the architectures shipped in ``calmcap/model_configs``."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def get_model_config(name_or_path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """A registered architecture by name, or a JSON file by path, with optional overrides."""
    path = Path(name_or_path)
    if not path.suffix == ".json":
        path = MODEL_CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ConfigError(f"unknown model {name_or_path!r}; known: {', '.join(list_models())}")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: model config not found") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: malformed JSON ({error.msg}, line {error.lineno})") from None
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return from_dict(ModelConfig, data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
