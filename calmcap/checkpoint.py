"""Self-contained checkpoint directories: ``config.json`` + ``model.safetensors`` + tokenizer + anchors.

Loading never unpickles (safetensors + JSON only) and never downloads: the model is built on
the meta device (no random init, no pretrained weights) and the saved tensors are assigned in.
A missing file, a truncated or corrupted weights file, or a config of another architecture
fails with a :class:`CheckpointError` naming the problem; there is no half-loaded model.

Layout::

    config.json        {"format": "calmcap-checkpoint", "format_version", "calmcap_version",
                        "model": ModelConfig, "weights": {"file", "num_bytes", "num_tensors"},
                        optional "generation": DecodeOptions, the decoding the model was
                        validated with (:func:`read_generation`; used when a caller sets none)}
    model.safetensors  parameters and buffers; tied weights stored once; non-persistent
                       buffers (e.g. open_clip's causal mask) stored under "__buffer__." so a
                       meta-device build can be filled in completely
    tokenizer.model    the SentencePiece caption tokenizer
    anchors.txt        the anchor labels, one per line (empty when the anchor branch is off)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from calmcap.atomic import atomic_path
from calmcap.config import CONFIG_FORMAT_VERSION, DecodeOptions, ModelConfig, from_dict
from calmcap.constants import (
    CHECKPOINT_ANCHORS_FILE as ANCHORS_FILE,
    CHECKPOINT_CONFIG_FILE as CONFIG_FILE,
    CHECKPOINT_TOKENIZER_FILE as TOKENIZER_FILE,
    CHECKPOINT_WEIGHTS_FILE as WEIGHTS_FILE,
)
from calmcap.errors import CheckpointError, ConfigError
from calmcap.version import __version__

logger = logging.getLogger(__name__)

FORMAT_NAME = "calmcap-checkpoint"
BUFFER_PREFIX = "__buffer__."


def _non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for module_name, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            buffer = module._buffers.get(name)
            if buffer is not None:
                out[f"{module_name}.{name}" if module_name else name] = buffer
    return out


def _alias_groups(model: nn.Module) -> dict[str, str]:
    """Map each state-dict key that shares storage with an earlier key to that earlier key."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = id(tensor)
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint needs, tied weights once, as contiguous CPU tensors."""
    aliases = _alias_groups(model)
    tensors = {k: v for k, v in model.state_dict().items() if k not in aliases}
    for name, buffer in _non_persistent_buffers(model).items():
        tensors[BUFFER_PREFIX + name] = buffer
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_pretrained(
    model: Any,
    path: str | os.PathLike,
    *,
    generation: DecodeOptions | None = None,
) -> Path:
    """Write ``model`` (a :class:`~calmcap.models.calm.CALMModel`: its ``config``, ``labels``,
    ``tokenizer`` and tensors) to directory ``path`` atomically (:func:`calmcap.atomic.atomic_path`).

    ``generation``: the decoding the model was validated with, saved as config.json's
    ``generation`` so that callers who set nothing decode the same way (:func:`read_generation`).
    """
    from safetensors.torch import save_file

    if model.tokenizer is None:
        raise ValueError("a checkpoint needs the caption tokenizer; build the model with one")
    if generation is not None:
        generation.check("generation")
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        tensors = model_tensors(model)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
        model.tokenizer.save(tmp / TOKENIZER_FILE)
        (tmp / ANCHORS_FILE).write_text("".join(f"{label}\n" for label in model.labels), encoding="utf-8")
        config = {
            "format": FORMAT_NAME,
            "format_version": CONFIG_FORMAT_VERSION,
            "calmcap_version": __version__,
            "model": model.config.to_json(),
            "weights": {
                "file": WEIGHTS_FILE,
                "num_bytes": (tmp / WEIGHTS_FILE).stat().st_size,
                "num_tensors": len(tensors),
            },
        }
        if generation is not None:
            config["generation"] = dataclasses.asdict(generation)
        # config.json is written last: a directory without it is never taken for a checkpoint.
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    logger.info("saved checkpoint to %s", path)
    return path


def parse_generation(settings: object, where: str) -> DecodeOptions:
    """A checkpoint's ``generation`` object as :class:`DecodeOptions`: known names, right kinds, possible values.

    Settings it leaves out take the type's defaults (checkpoints written before the sampling
    settings joined the type hold the five beam-search settings only).
    """
    if not isinstance(settings, dict):
        raise CheckpointError(f"{where}: 'generation' must be an object of decoding settings")
    known = {f.name: type(f.default) for f in dataclasses.fields(DecodeOptions)}
    values = {}
    for key, value in settings.items():
        if key not in known:
            raise CheckpointError(f"{where}: unknown generation setting {key!r} (known: {', '.join(known)})")
        kind = known[key]
        if kind is bool:
            right = isinstance(value, bool)
        else:
            right = not isinstance(value, bool) and isinstance(value, int if kind is int else (int, float))
        if not right:
            raise CheckpointError(f"{where}: generation setting {key!r} must be {kind.__name__}, got {value!r}")
        values[key] = float(value) if kind is float else value
    try:
        return DecodeOptions(**values).check("generation")
    except ConfigError as error:
        raise CheckpointError(f"{where}: {error}") from None


def read_generation(path: str | os.PathLike) -> DecodeOptions:
    """The decoding a checkpoint directory was validated with (the defaults when it records none)."""
    config_path = Path(path) / CONFIG_FILE
    read_checkpoint_config(path)  # a readable calmcap checkpoint of a supported version
    meta = json.loads(config_path.read_text(encoding="utf-8"))
    return parse_generation(meta.get("generation", {}), str(config_path))


def read_checkpoint_config(path: str | os.PathLike) -> ModelConfig:
    """The validated model config of a checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    if not path.is_dir():
        raise CheckpointError(f"{path}: a checkpoint is a directory (config.json, model.safetensors, ...)")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing (is {path} a calmcap checkpoint directory?)")
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{config_path}: not a calmcap checkpoint config (format != {FORMAT_NAME!r})")
    version = meta.get("format_version")
    if version != CONFIG_FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: checkpoint format version {version!r} is not supported by calmcap "
            f"{__version__} (expects {CONFIG_FORMAT_VERSION})"
        )
    try:
        return from_dict(ModelConfig, meta.get("model"), prefix="model")
    except ConfigError as error:
        raise CheckpointError(f"{config_path}: {error}") from None


def load_pretrained(
    path: str | os.PathLike,
    build: Callable[[ModelConfig, Sequence[str], Any], nn.Module],
    device: str | torch.device = "cpu",
) -> Any:
    """Rebuild a model from a checkpoint directory, exactly as it was saved.

    ``build(config, labels, tokenizer)`` makes the model, called on the meta device (no weights
    are initialised); the saved tensors are then assigned in. Use
    :meth:`calmcap.models.calm.CALMModel.from_pretrained`, which passes its own constructor.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from calmcap.labels import parse_labels
    from calmcap.tokenizer import CaptionTokenizer

    path = Path(path)
    config = read_checkpoint_config(path)
    meta = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: missing")
    expected_bytes = (meta.get("weights") or {}).get("num_bytes")
    actual_bytes = weights_path.stat().st_size
    if expected_bytes is not None and expected_bytes != actual_bytes:
        raise CheckpointError(
            f"{weights_path}: {actual_bytes} bytes but config.json records {expected_bytes} (truncated or replaced)"
        )
    parse_generation(meta.get("generation", {}), str(path / CONFIG_FILE))  # fail now, not at the first caption
    tokenizer = CaptionTokenizer.load(path / TOKENIZER_FILE)
    anchors_path = path / ANCHORS_FILE
    if not anchors_path.is_file():
        raise CheckpointError(f"{anchors_path}: missing")
    text = anchors_path.read_text(encoding="utf-8")
    labels = parse_labels(text, str(anchors_path)) if text.strip() else []
    if tokenizer.vocab_size != config.decoder.vocab_size:
        raise CheckpointError(
            f"{path / TOKENIZER_FILE}: {tokenizer.vocab_size} pieces but config.json says decoder.vocab_size="
            f"{config.decoder.vocab_size}"
        )
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights_path}: cannot be read as safetensors ({error})") from None

    with torch.device("meta"):
        model = build(config, labels, tokenizer)
    _assign_tensors(model, tensors, weights_path)
    model.to(device)
    model.eval()
    return model


def _assign_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Fill a meta-device model with ``tensors``; every tensor must match by name and shape."""
    aliases = _alias_groups(model)
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items() if k not in aliases}
    buffers = _non_persistent_buffers(model)
    state = {k: v for k, v in tensors.items() if not k.startswith(BUFFER_PREFIX)}
    extra_buffers = {k[len(BUFFER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(BUFFER_PREFIX)}

    missing = sorted(set(expected) - set(state)) + sorted(set(buffers) - set(extra_buffers))
    unexpected = sorted(set(state) - set(expected)) + sorted(set(extra_buffers) - set(buffers))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise CheckpointError(
            f"{source}: weights do not match the architecture in config.json: {'; '.join(parts)}"
        )
    for name, tensor in list(state.items()) + list(extra_buffers.items()):
        target = expected.get(name, buffers.get(name))
        if tuple(target.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)} but config.json's architecture "
                f"needs {tuple(target.shape)}"
            )

    model.load_state_dict(state, strict=False, assign=True)
    # Re-tie shared weights to the very same Parameter (one tensor, one optimizer entry).
    for alias, canonical in aliases.items():
        module_name, _, leaf = alias.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        canonical_tensor = model.get_parameter(canonical) if leaf in module._parameters else model.get_buffer(canonical)
        setattr(module, leaf, canonical_tensor)
    for name, tensor in extra_buffers.items():
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        module._buffers[leaf] = tensor
    still_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if still_meta:
        raise CheckpointError(f"{source}: {len(still_meta)} tensors were not filled (first: {still_meta[0]})")
