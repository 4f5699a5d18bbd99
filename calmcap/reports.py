"""Evaluation reports: ``report.json`` (machine), ``report.md`` (human), predictions and plots.

One :class:`BenchmarkReport` holds one checkpoint evaluated on one or several (manifest,
split) pairs; each pair is an :class:`EvalRow`. Several rows read as the paper's cross-domain
tables (rows: datasets / splits, e.g. the embedded benchmark's ``test`` vs ``test_ood``).

Files written by :meth:`BenchmarkReport.write` into the output folder:

* ``report.json``: format ``calmcap-eval-report`` v1. ``model`` (checkpoint path, config
  name, sha256 of ``model.safetensors``), ``settings``, and per row ``data`` (manifest path +
  sha256, split), ``metrics`` (fixed keys of :mod:`calmcap.metrics`: ``caption/CIDEr``,
  ``t2v/R@1``, ``attr/shape``, ...; x100 / percent), ``chance`` (a random ranker's R@K on the
  same gallery), ``counts``, ``protocol`` (frame sampling, decoding, the t2v and v2t conventions
  incl. multi-caption handling and undecodable videos, caption scorer, attribute parsing),
  ``bad_videos``, ``ranks`` (``t2v`` per caption, ``v2t`` per video: every retrieval metric can
  be recomputed) and the name of its predictions file.
* ``report.md``: the cross-domain tables, attribute accuracy, protocol, data identity, plots,
  sample captions.
* predictions, COCO style ``[{"image_id": video_id, "caption": ...}]``: ``predictions.json``
  for a single row; ``predictions-<data>-<split>.json`` per row when there are several
  (video ids of different datasets may collide, so they are never mixed in one file).
* ``recall_at_k.png`` (Recall@K against K, t2v and v2t, one curve per row) and
  ``rank_histogram.png`` (distribution of the correct item's rank).

Plots use matplotlib's object API with the Agg canvas (no pyplot global state, no display).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calmcap.atomic import atomic_write_text
from calmcap.constants import CHECKPOINT_CONFIG_FILE, CHECKPOINT_WEIGHTS_FILE
from calmcap.metrics import (
    ATTR_ACTION,
    ATTR_ALL,
    ATTR_COLOUR,
    ATTR_SHAPE,
    ATTR_SIZE,
    BLEU_1,
    BLEU_2,
    BLEU_3,
    BLEU_4,
    CIDER,
    METEOR,
    RETRIEVAL_PROTOCOL,
    ROUGE_L,
)
from calmcap.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from calmcap.data.manifest import ManifestEntry
    from calmcap.evaluation import EvalResult
    from calmcap.models.calm import CALMModel

logger = logging.getLogger(__name__)

REPORT_FORMAT = "calmcap-eval-report"
REPORT_VERSION = 1
REPORT_JSON, REPORT_MD = "report.json", "report.md"
PREDICTIONS_JSON = "predictions.json"
RECALL_PNG, RANK_PNG = "recall_at_k.png", "rank_histogram.png"

CAPTION_COLUMNS: list[tuple[str, str]] = [
    (BLEU_1, "BLEU-1"), (BLEU_2, "BLEU-2"), (BLEU_3, "BLEU-3"), (BLEU_4, "BLEU-4"),
    (METEOR, "METEOR"), (ROUGE_L, "ROUGE-L"), (CIDER, "CIDEr"),
]
RETRIEVAL_STATS = ("R@1", "R@5", "R@10", "MdR", "MnR")
ATTRIBUTE_COLUMNS: list[tuple[str, str]] = [
    (ATTR_SHAPE, "shape"), (ATTR_COLOUR, "colour"), (ATTR_SIZE, "size"), (ATTR_ACTION, "action"), (ATTR_ALL, "all 4"),
]


# ============================================================================ identities


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 8 << 20) -> str:
    """Hex sha256 of a file (~1 GB/s; cached per path, size and mtime within the process)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(chunk_bytes):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def config_fingerprint(model: CALMModel) -> str:
    """sha256 of the model's architecture config as canonical JSON (computable without a file)."""
    return hashlib.sha256(json.dumps(model.config.to_json(), sort_keys=True).encode()).hexdigest()


def model_identity(
    model: CALMModel, path: str | os.PathLike | None = None, hash_weights: bool = True
) -> dict[str, Any]:
    """What model a report or index was made with.

    ``path`` is the checkpoint directory the model was loaded from
    (:attr:`calmcap.pipeline.LoadedModel.path`); the identity then records its weights file.
    A model built in memory has ``path=None``.
    """
    identity: dict[str, Any] = {
        "path": str(Path(path).resolve()) if path is not None else None,
        "name": model.config.name,
        "config_sha256": config_fingerprint(model),
        "alignment": model.variant,
        "num_anchors": len(model.labels) if model.anchor_bank is not None else 0,
        "num_frames": int(model.config.num_frames),
        "image_size": int(model.config.image_size),
        "embed_dim": int(model.embed_dim),
        "sha256": None,
    }
    if path is not None:
        weights = Path(path) / CHECKPOINT_WEIGHTS_FILE
        stat = weights.stat()
        identity["weights"] = {"file": weights.name, "num_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if hash_weights:
            identity["sha256"] = file_sha256(weights)
        try:
            meta = json.loads((Path(path) / CHECKPOINT_CONFIG_FILE).read_text(encoding="utf-8"))
            identity["calmcap_version"] = meta.get("calmcap_version")
        except (OSError, ValueError):
            pass
    return identity


def same_model(stored: dict[str, Any], model: CALMModel, path: str | os.PathLike | None = None) -> bool:
    """Whether ``model``, loaded from checkpoint ``path``, is the one ``stored`` (a :func:`model_identity`) describes.

    Cheap when possible: a different architecture config is a mismatch; the same weights file
    (size and mtime) is a match; otherwise the weights are hashed and compared. A model built
    in memory (no checkpoint) can only be compared by architecture (and says so in the log).
    """
    if stored.get("config_sha256") and stored["config_sha256"] != config_fingerprint(model):
        return False
    if path is None or not stored.get("sha256"):
        logger.warning("cannot compare model weights (no checkpoint file on one side); trusting the architecture match")
        return True
    weights = Path(path) / CHECKPOINT_WEIGHTS_FILE
    stat = weights.stat()
    recorded = stored.get("weights") or {}
    if str(Path(path).resolve()) == stored.get("path") and recorded.get("num_bytes") == stat.st_size \
            and recorded.get("mtime_ns") == stat.st_mtime_ns:
        return True
    return file_sha256(weights) == stored["sha256"]


def dataset_name(manifest: str | os.PathLike) -> str:
    """A short name for a manifest: its folder for ``.../NAME/manifest.jsonl``, else the file stem."""
    path = Path(manifest).resolve()
    return path.parent.name if path.stem == "manifest" else path.stem


def data_identity(manifest: str | os.PathLike, split: str, num_videos: int, num_evaluated: int) -> dict[str, Any]:
    """Manifest path + sha256, the split, and how many of its videos were evaluated."""
    return {
        "name": dataset_name(manifest),
        "manifest": str(Path(manifest).resolve()),
        "sha256": file_sha256(manifest),
        "split": split,
        "num_videos": num_videos,
        "num_evaluated": num_evaluated,
    }


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "_", text).strip("_") or "data"


# ============================================================================ rows and reports


@dataclass
class EvalRow:
    """One (manifest, split) evaluation: metrics, counts, protocol and what is needed to show its work."""

    dataset: str
    split: str
    data: dict[str, Any]
    metrics: dict[str, float]
    counts: dict[str, int]
    protocol: dict[str, Any]
    domain: str | None = None
    bad_videos: list[str] = field(default_factory=list)
    predictions: dict[str, str] = field(default_factory=dict)
    references: dict[str, list[str]] = field(default_factory=dict)
    t2v_ranks: list[int] = field(default_factory=list)
    v2t_ranks: list[int] = field(default_factory=list)
    seconds: float = 0.0
    predictions_file: str | None = None
    chance: dict[str, float] = field(default_factory=dict)  # a random ranker's R@K (percent)

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.split}"

    @classmethod
    def from_result(
        cls,
        result: EvalResult,
        *,
        manifest: str | os.PathLike,
        split: str,
        entries: Sequence[ManifestEntry],
        identity: dict[str, Any],
        seconds: float = 0.0,
    ) -> EvalRow:
        """Wrap :class:`calmcap.evaluation.EvalResult`; the domain is the split's ``extra.domain`` when all agree."""
        domains = {e.extra.get("domain") for e in entries}
        domain = next(iter(domains)) if len(domains) == 1 else None
        protocol = dict(result.protocol)
        protocol.setdefault("frame_sampling", "uniform: the middle frame of T equal segments")
        if result.t2v_ranks:
            protocol["retrieval"] = dict(RETRIEVAL_PROTOCOL)
        return cls(
            dataset=identity.get("name") or dataset_name(manifest), split=split, data=identity,
            metrics=dict(result.metrics), counts=dict(result.counts), protocol=protocol,
            domain=str(domain) if domain is not None else None, bad_videos=list(result.bad_videos),
            predictions=dict(result.predictions), references=dict(result.references),
            t2v_ranks=list(result.t2v_ranks), v2t_ranks=list(result.v2t_ranks), seconds=seconds,
            chance=dict(result.chance),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "split": self.split, "domain": self.domain, "data": self.data,
            "metrics": self.metrics, "chance": self.chance, "counts": self.counts, "protocol": self.protocol,
            "bad_videos": self.bad_videos, "predictions_file": self.predictions_file,
            "seconds": round(self.seconds, 3),
            "ranks": {"t2v": self.t2v_ranks, "v2t": self.v2t_ranks},
        }


@dataclass
class BenchmarkReport:
    """A checkpoint's evaluation over one or several (manifest, split) rows."""

    model: dict[str, Any]
    rows: list[EvalRow] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    files: dict[str, Path] = field(default_factory=dict)  # what the last write() wrote, by kind

    def add(self, row: EvalRow) -> None:
        labels = {r.label for r in self.rows}
        if row.label in labels:  # two manifests in folders of the same name
            row.dataset = f"{row.dataset}#{sum(1 for r in self.rows if r.split == row.split) + 1}"
        self.rows.append(row)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "format_version": REPORT_VERSION,
            "calmcap_version": __version__,
            "created": self.created,
            "model": self.model,
            "settings": self.settings,
            "evaluations": [row.to_json() for row in self.rows],
        }

    # ------------------------------------------------------------------ tables

    def summary_table(self, markdown: bool = False) -> str:
        """The cross-domain table: one row per (data, split); CIDEr/BLEU-4/METEOR/ROUGE-L, R@K / MdR
        and, where the data has ground-truth attributes, attribute accuracy (percent)."""
        header = ["data", "split", "domain", "videos"]
        has_caption = any(CIDER in r.metrics for r in self.rows)
        has_retrieval = any("t2v/R@1" in r.metrics for r in self.rows)
        has_attributes = any(ATTR_ALL in r.metrics for r in self.rows)
        if has_caption:
            header += ["CIDEr", "BLEU-4", "METEOR", "ROUGE-L"]
        if has_retrieval:
            header += ["t2v R@1", "R@5", "R@10", "MdR", "v2t R@1", "R@5", "R@10", "MdR"]
        if has_attributes:
            header += [f"attr {name}" for _, name in ATTRIBUTE_COLUMNS]
        body = []
        for r in self.rows:
            line = [r.dataset, r.split, r.domain or "-", str(r.counts.get("videos", "-"))]
            if has_caption:
                line += [_fmt(r.metrics.get(k)) for k in (CIDER, BLEU_4, METEOR, ROUGE_L)]
            if has_retrieval:
                line += [_fmt(r.metrics.get(f"{d}/{s}")) for d in ("t2v", "v2t") for s in ("R@1", "R@5", "R@10", "MdR")]
            if has_attributes:
                line += [_fmt(r.metrics.get(k)) for k, _ in ATTRIBUTE_COLUMNS]
            body.append(line)
        return format_table(header, body, markdown=markdown)

    def markdown(self, files: dict[str, str] | None = None) -> str:
        """``report.md``: tables a person reads."""
        files = files or {}
        m = self.model
        lines = [
            "# calmcap evaluation",
            "",
            f"Model `{m.get('path') or '(in memory)'}`: {m.get('name')}, alignment `{m.get('alignment')}`, "
            f"{m.get('num_anchors')} anchors; weights sha256 `{(m.get('sha256') or 'n/a')[:16]}`. "
            f"calmcap {__version__}, {self.created}.",
            "",
            "## Summary",
            "",
            self.summary_table(markdown=True),
            "",
        ]
        caption_rows = [r for r in self.rows if CIDER in r.metrics]
        if caption_rows:
            lines += ["## Captioning (x100)", "",
                      format_table(["data", "split", "videos"] + [name for _, name in CAPTION_COLUMNS],
                                   [[r.dataset, r.split,
                                     str(r.counts.get("videos", 0) - r.counts.get("videos_skipped", 0))]
                                    + [_fmt(r.metrics.get(k)) for k, _ in CAPTION_COLUMNS] for r in caption_rows],
                                   markdown=True), ""]
        attribute_rows = [r for r in self.rows if ATTR_ALL in r.metrics]
        if attribute_rows:
            lines += ["## Attribute accuracy (%)", "",
                      ("Share of generated captions that name the video's shape, colour, size, action, and all four "
                       "(a caption naming two values of an attribute, or none, is wrong for it)."), "",
                      format_table(["data", "split", "videos scored"] + [name for _, name in ATTRIBUTE_COLUMNS],
                                   [[r.dataset, r.split, str(r.protocol.get("attributes", {}).get("videos", "-"))]
                                    + [_fmt(r.metrics.get(k)) for k, _ in ATTRIBUTE_COLUMNS] for r in attribute_rows],
                                   markdown=True), ""]
        retrieval_rows = [r for r in self.rows if "t2v/R@1" in r.metrics]
        for direction, title, unit in (("t2v", "Text-to-video retrieval", "captions"),
                                       ("v2t", "Video-to-text retrieval", "videos")):
            if not retrieval_rows:
                break
            body = []
            for r in retrieval_rows:
                queries = r.counts.get("captions") if direction == "t2v" else r.counts.get("videos")
                candidates = r.counts.get("videos") if direction == "t2v" else r.counts.get("captions")
                # calmcap.metrics.chance_recall: for v2t (best of a video's own captions) it is
                # mean captions per video / #captions, not 1/#captions.
                chance = r.chance.get(f"{direction}/R@1", float("nan"))
                body.append([r.dataset, r.split, str(queries), str(candidates)] +
                            [_fmt(r.metrics.get(f"{direction}/{s}")) for s in RETRIEVAL_STATS] + [_fmt(chance, 2)])
            lines += [f"## {title}", "",
                      format_table(["data", "split", f"queries ({unit})", "candidates", *RETRIEVAL_STATS, "chance R@1"],
                                   body, markdown=True),
                      ""]
        lines += ["## Protocol", ""]
        lines += [f"- **{key}**: {value}" for key, value in RETRIEVAL_PROTOCOL.items()]
        undecodable = {r.label: r.counts["videos_skipped"] for r in self.rows if r.counts.get("videos_skipped")}
        if undecodable:
            per_row = ", ".join(f"{label}: {n}" for label, n in undecodable.items())
            lines.append(f"- **undecodable videos in this report**: {sum(undecodable.values())} ({per_row}); "
                         "retrieval scores them as misses, caption metrics cover the decoded videos")
        if attribute_rows:
            lines.append(f"- **attribute accuracy**: {attribute_rows[0].protocol['attributes']['rule']}")
        first = self.rows[0].protocol if self.rows else {}
        if first.get("decode"):
            d = first["decode"]
            lines.append(f"- **decoding**: beam {d.get('num_beams')}, max length {d.get('max_length')}, min length "
                         f"{d.get('min_length')}, length penalty {d.get('length_penalty')}, "
                         f"no-repeat n-gram {d.get('no_repeat_ngram_size')}")
        lines.append(f"- **frames**: {first.get('num_frames', self.settings.get('num_frames'))} per video, "
                     f"{first.get('frame_sampling', 'uniform')}; {self.settings.get('image_size')} px, "
                     "CLIP preprocessing")
        if first.get("caption_metrics"):
            c = first["caption_metrics"]
            meteor = "on" if c["meteor"] else "off"
            lines.append(f"- **caption metrics**: {c['scorer']}; tokenizer {c['tokenizer']}; "
                         f"METEOR {meteor}; SPICE off")
        if self.settings.get("max_videos"):
            lines.append(f"- **subset**: the first {self.settings['max_videos']} videos of each split")
        lines += ["", "## Data", "",
                  format_table(["data", "split", "manifest", "sha256", "videos in split", "evaluated", "undecodable",
                                "seconds"],
                               [[r.dataset, r.split, f"`{r.data.get('manifest')}`",
                                 f"`{str(r.data.get('sha256'))[:16]}`",
                                 str(r.data.get("num_videos")), str(r.data.get("num_evaluated")),
                                 str(r.counts.get("videos_skipped", 0)), f"{r.seconds:.1f}"] for r in self.rows],
                               markdown=True),
                  ""]
        if files.get("recall") or files.get("ranks"):
            lines += ["## Plots", ""]
            if files.get("recall"):
                lines.append(f"![Recall@K]({files['recall']})")
            if files.get("ranks"):
                lines.append(f"![rank histogram]({files['ranks']})")
            lines.append("")
        for r in caption_rows:
            lines += [f"## Sample captions: {r.label}", "",
                      format_table(["video", "prediction", "a reference"],
                                   [[k, _md(r.predictions[k]), _md(r.references.get(k, [""])[0])]
                                    for k in sorted(r.predictions)[:8]],
                                   markdown=True),
                      ""]
            if r.predictions_file:
                lines += [f"All predictions: `{r.predictions_file}`.", ""]
        bad = [(r, v) for r in self.rows for v in r.bad_videos]
        if bad:
            lines += ["## Undecodable videos (retrieval misses, not captioned)", ""]
            lines += [f"- {r.label}: {_md(v)}" for r, v in bad[:50]]
            if len(bad) > 50:
                lines.append(f"- ... and {len(bad) - 50} more (report.json lists them all)")
            lines.append("")
        return "\n".join(lines)

    # ------------------------------------------------------------------ files

    def write(self, out: str | os.PathLike, plots: bool = True) -> dict[str, Path]:
        """Write report.json, report.md, predictions and plots into ``out``; returns the paths by kind."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        for row in self.rows:
            if not row.predictions:
                continue
            name = (PREDICTIONS_JSON if len(self.rows) == 1
                    else f"predictions-{_safe(row.dataset)}-{_safe(row.split)}.json")
            write_predictions(out / name, row.predictions)
            row.predictions_file = name
            written[f"predictions:{row.label}"] = out / name
        files: dict[str, str] = {}
        ranked = [r for r in self.rows if r.t2v_ranks]
        if plots and ranked:
            plot_recall_at_k(ranked, out / RECALL_PNG)
            plot_rank_histogram(ranked, out / RANK_PNG)
            files = {"recall": RECALL_PNG, "ranks": RANK_PNG}
            written["recall_at_k"] = out / RECALL_PNG
            written["rank_histogram"] = out / RANK_PNG
        atomic_write_text(out / REPORT_JSON, json.dumps(self.to_json(), indent=2) + "\n")
        atomic_write_text(out / REPORT_MD, self.markdown(files) + "\n")
        written["report.json"] = out / REPORT_JSON
        written["report.md"] = out / REPORT_MD
        self.files = written
        return written


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``report.json`` (a folder holding one, or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != REPORT_FORMAT:
        raise ValueError(f"{path}: not a calmcap evaluation report")
    return data


# ============================================================================ helpers


def write_predictions(path: str | os.PathLike, predictions: dict[str, str]) -> Path:
    """COCO-style captions ``[{"image_id": id, "caption": text}]``, sorted by id."""
    path = Path(path)
    items = [{"image_id": key, "caption": predictions[key]} for key in sorted(predictions)]
    atomic_write_text(path, json.dumps(items, indent=1, ensure_ascii=False) + "\n")
    return path


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_table(header: Sequence[str], rows: Iterable[Sequence[str]], markdown: bool = False) -> str:
    """A table with aligned columns: plain text (two-space gaps) or Markdown (pipes)."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]

    def numeric(i: int) -> bool:
        return bool(rows) and all(re.fullmatch(r"-?[\d.]+%?|-", r[i] or "-") for r in rows)

    def cell(text: str, i: int) -> str:
        return text.rjust(widths[i]) if numeric(i) else text.ljust(widths[i])

    if markdown:
        lines = ["| " + " | ".join(cell(str(h), i) for i, h in enumerate(header)) + " |",
                 "|" + "|".join(("-" * (widths[i] + 1) + ":") if numeric(i) else ("-" * (widths[i] + 2))
                                for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(cell(c, i) for i, c in enumerate(r)) + " |" for r in rows]
    else:
        lines = ["  ".join(cell(str(h), i) for i, h in enumerate(header)).rstrip()]
        lines += ["  ".join(cell(c, i) for i, c in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines)


def caption_metrics_table(metrics: dict[str, float], markdown: bool = False) -> str:
    """Caption metrics as a two-column table in the usual order (metrics absent, e.g. METEOR without Java,
    are skipped)."""
    return format_table(["metric", "score"],
                        [[name, _fmt(metrics[key], 2)] for key, name in CAPTION_COLUMNS if key in metrics],
                        markdown=markdown)


# ============================================================================ plots


def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure drawn off-screen (Agg), ``width`` x ``height`` inches at 110 dpi."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _plain_ticks(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def _recall_curve(ranks: Sequence[int], num_candidates: int) -> tuple[list[int], list[float]]:
    import numpy as np

    ranks_array = np.asarray(ranks)
    ks = np.unique(np.clip(np.round(np.geomspace(1, max(1, num_candidates), 200)).astype(int), 1, None))
    return ks.tolist(), [float(100.0 * np.mean(ranks_array <= k)) for k in ks]


def plot_recall_at_k(rows: Sequence[EvalRow], path: str | os.PathLike) -> Path:
    """Recall@K (percent) against K on a log axis: text-to-video and video-to-text panels, a curve per row."""
    figure = new_figure(10, 4)
    for i, (direction, title) in enumerate((("t2v", "text-to-video"), ("v2t", "video-to-text"))):
        ax = figure.add_subplot(1, 2, i + 1)
        for row in rows:
            ranks = row.t2v_ranks if direction == "t2v" else row.v2t_ranks
            candidates = row.counts.get("videos" if direction == "t2v" else "captions") or max(ranks or [1])
            ks, recall = _recall_curve(ranks, int(candidates))
            r_at_1 = row.metrics.get(direction + "/R@1", float("nan"))
            ax.plot(ks, recall, drawstyle="steps-post", label=f"{row.label} (R@1 {r_at_1:.1f})")
        for k in (1, 5, 10):
            ax.axvline(k, color="0.85", linewidth=0.8, zorder=0)
        ax.set_xscale("log")
        _plain_ticks(ax)
        ax.set_ylim(0, 101)
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K (%)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


def plot_rank_histogram(rows: Sequence[EvalRow], path: str | os.PathLike) -> Path:
    """Histogram of the correct item's rank (log-spaced bins), t2v and v2t panels, one outline per row."""
    import numpy as np

    figure = new_figure(10, 4)
    panels = (("t2v", "text-to-video: rank of the video"), ("v2t", "video-to-text: rank of the best caption"))
    for i, (direction, title) in enumerate(panels):
        ax = figure.add_subplot(1, 2, i + 1)
        largest = max((max(r.t2v_ranks if direction == "t2v" else r.v2t_ranks, default=1) for r in rows), default=1)
        # Few candidates: one bar per rank on a linear axis; many: log-spaced bins on a log axis.
        linear = largest <= 40
        if linear:
            bins = np.arange(1, largest + 2)
        else:
            bins = np.unique(np.round(np.geomspace(1, largest + 1, 30)).astype(int))
        for row in rows:
            ranks = np.asarray(row.t2v_ranks if direction == "t2v" else row.v2t_ranks)
            if ranks.size == 0:
                continue
            ax.hist(ranks, bins=bins, histtype="step", linewidth=1.5, align="left" if linear else "mid",
                    weights=np.full(ranks.size, 100.0 / ranks.size), label=f"{row.label} (MdR {np.median(ranks):g})")
        if not linear:
            ax.set_xscale("log")
            _plain_ticks(ax)
        ax.set_xlabel("rank (1 = best)")
        ax.set_ylabel("% of queries")
        ax.set_title(title)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


__all__ = [
    "BenchmarkReport",
    "EvalRow",
    "caption_metrics_table",
    "config_fingerprint",
    "data_identity",
    "dataset_name",
    "file_sha256",
    "format_table",
    "model_identity",
    "new_figure",
    "plot_rank_histogram",
    "plot_recall_at_k",
    "read_report",
    "same_model",
    "write_predictions",
]
