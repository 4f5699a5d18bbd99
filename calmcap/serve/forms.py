"""The fields a request may send, checked as the CLI checks its options.

:class:`CaptionFields` are ``calmcap caption``'s options and :class:`ExplainFields`
``calmcap explain``'s, with the same names (``--num-beams`` is ``num_beams``) and defaults:
unset beam settings take the checkpoint's (``GET /v1/model`` lists them), sampling is off,
``seed`` is 0. The rules between settings are :class:`~calmcap.config.DecodeOptions`'s (the one
definition), so an impossible combination gets the CLI's one-line message. The pydantic models
only add what a shared server needs on top (:data:`MAX_NUM_BEAMS`, ...), and are the one source
of both the parsing and the OpenAPI schema of the multipart bodies (:func:`multipart_schema`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from calmcap.config import DecodeOptions
from calmcap.pipeline.caption import CaptionOptions
from calmcap.serve.uploads import FILE_FIELD

# What one request may ask of a shared model: beam search holds num_beams hypotheses per video
# through every step, so a request for 500 beams would stall every other client.
MAX_NUM_BEAMS = 16
MAX_RETURN_SEQUENCES = MAX_NUM_BEAMS
MAX_SEARCH_TOP_K = 100
MAX_QUERY_CHARS = 1000
MAX_CAPTION_CHARS = 1000

_BUILTIN = DecodeOptions()
_CHECKPOINT = "default: the checkpoint's, see GET /v1/model"

Fields = TypeVar("Fields", bound=BaseModel)


class FieldsRefused(Exception):
    """A form field that is unknown or of the wrong type: a one-line ``detail`` naming it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class CaptionFields(BaseModel):
    """The options of ``calmcap caption`` (and ``frames``, the page's view of what the model saw)."""

    model_config = ConfigDict(extra="forbid")

    num_beams: int | None = Field(None, le=MAX_NUM_BEAMS, description=f"beam size ({_CHECKPOINT})")
    max_length: int | None = Field(None, description=f"at most this many tokens ({_CHECKPOINT})")
    min_length: int | None = Field(None, description=f"at least this many tokens ({_CHECKPOINT})")
    length_penalty: float | None = Field(None, description=f"beam score = log p / length^X ({_CHECKPOINT})")
    no_repeat_ngram_size: int | None = Field(
        None, description=f"forbid repeating any n-gram of this size (0: off; {_CHECKPOINT})")
    sample: bool = Field(False, description="nucleus sampling instead of beam search")
    top_p: float = Field(_BUILTIN.top_p, description="nucleus mass when sampling")
    temperature: float = Field(_BUILTIN.temperature, description="temperature when sampling")
    seed: int = Field(0, description="random seed when sampling (the same caption as `calmcap caption --seed`)")
    num_return_sequences: int = Field(
        _BUILTIN.num_return_sequences, le=MAX_RETURN_SEQUENCES,
        description="the N best beams (or N samples); with N > 1 the answer lists them as `beams`")
    num_frames: int | None = Field(None, description="frames per video (default and maximum: the model's)")
    frames: bool = Field(False, description="also return the frames the model saw, as JPEG data URLs")

    def caption_options(self) -> CaptionOptions:
        """The decoding overrides, built and checked as ``calmcap caption`` builds them from its options."""
        return CaptionOptions(
            num_beams=self.num_beams, max_length=self.max_length, min_length=self.min_length,
            length_penalty=self.length_penalty, no_repeat_ngram_size=self.no_repeat_ngram_size,
            do_sample=self.sample, top_p=self.top_p, temperature=self.temperature,
            num_return_sequences=self.num_return_sequences,
        ).validate()


class ExplainFields(BaseModel):
    """The options of ``calmcap explain``."""

    model_config = ConfigDict(extra="forbid")

    caption: str | None = Field(None, max_length=MAX_CAPTION_CHARS,
                                description="the caption to explain (default: the model's own, generated)")
    top_k: int = Field(10, description="anchors per distribution")
    num_frames: int | None = Field(None, description="frames per video (default and maximum: the model's)")


def parse_fields(model: type[Fields], fields: dict[str, str]) -> Fields:
    """``fields`` (text, as sent) as ``model``; an empty value counts as not sent (what HTML forms send
    for an empty box). Raises :class:`FieldsRefused` naming the first bad field."""
    given = {name: value for name, value in fields.items() if value != ""}
    try:
        return model.model_validate(given)
    except ValidationError as error:
        first = error.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or "form"
        if first["type"] == "extra_forbidden":
            accepted = ", ".join([FILE_FIELD, *model.model_fields])
            raise FieldsRefused(f"unknown field {name!r} (accepted: {accepted})") from None
        raise FieldsRefused(f"{name}: {first['msg']}, got {first.get('input')!r}") from None


def multipart_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a multipart upload: the video as ``file`` plus ``model``'s fields."""
    schema = model.model_json_schema()
    properties = {FILE_FIELD: {"type": "string", "format": "binary", "description": "the video"},
                  **schema.get("properties", {})}
    return {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "title": schema.get("title", model.__name__), "properties": properties,
            "required": [FILE_FIELD], "additionalProperties": False,
        }}},
    }
