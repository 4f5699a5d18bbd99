"""Evaluation metrics: text-video retrieval (Recall@K, median and mean rank, chance) and captioning.

Retrieval conventions (stated in every report, docs/DESIGN.md section 5, "Evaluation"):

* ``t2v``: every caption is a query; its rank is the position of its own video among all
  videos.
* ``v2t``: every video is a query; with several captions per video its rank is the position of
  its *best-ranked* correct caption among all captions (the usual multi-caption convention).
* Ties count against the model: the rank is the number of candidates scoring at least as high
  as the correct one (a constant scorer gets the worst rank, never the best).
* A video that cannot be decoded stays in the gallery as a miss (:func:`rank_last`).
* Chance (:func:`chance_recall`) follows the same conventions: v2t R@1 is the chance that one of
  a video's own captions comes first, ``mean_v(n_v) / N_captions``.

Caption metrics are pycocoevalcap's scorers called directly (BLEU-1..4, METEOR, ROUGE-L,
CIDEr; x100 as in papers) after its PTB tokenizer. SPICE needs a download and is not run.
Java is needed by the tokenizer and METEOR: without it, a clear warning, a Python tokenizer
that mimics the PTB one (lower-case, punctuation split off and dropped), and no METEOR.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Fixed metric keys (STYLE.md): reports, logs and the best-checkpoint selector use these.
T2V_R1, T2V_R5, T2V_R10, T2V_MDR, T2V_MNR = "t2v/R@1", "t2v/R@5", "t2v/R@10", "t2v/MdR", "t2v/MnR"
V2T_R1, V2T_R5, V2T_R10, V2T_MDR, V2T_MNR = "v2t/R@1", "v2t/R@5", "v2t/R@10", "v2t/MdR", "v2t/MnR"
BLEU_1, BLEU_2, BLEU_3, BLEU_4 = "caption/BLEU-1", "caption/BLEU-2", "caption/BLEU-3", "caption/BLEU-4"
METEOR, ROUGE_L, CIDER = "caption/METEOR", "caption/ROUGE-L", "caption/CIDEr"
# Attribute accuracy of generated captions (percent; calmcap.attributes), for data whose manifest
# holds the ground truth (the embedded benchmark).
ATTR_SHAPE, ATTR_COLOUR, ATTR_SIZE, ATTR_ACTION = "attr/shape", "attr/colour", "attr/size", "attr/action"
ATTR_ALL = "attr/all"

RETRIEVAL_PROTOCOL = {
    "t2v": "each caption ranks all videos; rank of its own video",
    "v2t": "each video ranks all captions; rank of its best-ranked correct caption",
    "ties": "pessimistic: rank = number of candidates scoring >= the correct one",
    "undecodable": "a video that cannot be decoded stays in the gallery ranked last for every caption: "
                   "its captions (t2v) and the video as a query (v2t) count as misses; it is not captioned",
    "recall_unit": "percent",
}


def _summarise(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    return {
        f"{prefix}/R@1": float(100.0 * np.mean(ranks <= 1)),
        f"{prefix}/R@5": float(100.0 * np.mean(ranks <= 5)),
        f"{prefix}/R@10": float(100.0 * np.mean(ranks <= 10)),
        f"{prefix}/MdR": float(np.median(ranks)),
        f"{prefix}/MnR": float(np.mean(ranks)),
    }


def t2v_ranks(similarity: np.ndarray, text_to_video: Sequence[int]) -> np.ndarray:
    """Ranks (1 = best) of each caption's video: similarity [num_texts, num_videos]."""
    similarity = np.asarray(similarity, dtype=np.float64)
    index = np.asarray(text_to_video, dtype=np.int64)
    correct = similarity[np.arange(len(index)), index]
    return (similarity >= correct[:, None]).sum(axis=1)


def v2t_ranks(similarity: np.ndarray, text_to_video: Sequence[int]) -> np.ndarray:
    """Ranks of each video's best-ranked correct caption: similarity [num_texts, num_videos]."""
    similarity = np.asarray(similarity, dtype=np.float64)
    index = np.asarray(text_to_video, dtype=np.int64)
    num_videos = similarity.shape[1]
    scores = similarity.T  # [num_videos, num_texts]
    # The best correct score per video; its pessimistic rank among all captions.
    best = np.full(num_videos, -np.inf)
    np.maximum.at(best, index, scores[index, np.arange(len(index))])
    if np.isinf(best).any():
        missing = int(np.flatnonzero(np.isinf(best))[0])
        raise ValueError(f"video {missing} has no caption; v2t needs at least one per video")
    return (scores >= best[:, None]).sum(axis=1)


def rank_last(similarity: np.ndarray, videos: Sequence[int]) -> np.ndarray:
    """A copy of ``similarity [num_texts, num_videos]`` in which the ``videos`` columns score
    below every other entry, so that every caption ranks those videos last.

    How evaluation scores videos it cannot decode (issue #12): they stay in the gallery as
    misses instead of being dropped, which would shrink the gallery and raise R@K. With the
    pessimistic tie rule such a video's own captions rank it at ``num_videos``, and as a v2t
    query it ties with every caption and ranks its best one at ``num_texts``.
    """
    out = np.array(similarity, dtype=np.float64)
    videos = np.asarray(videos, dtype=np.int64)
    if videos.size:
        keep = np.setdiff1d(np.arange(out.shape[1]), videos)
        floor = out[:, keep].min() - 1.0 if keep.size and out.shape[0] else 0.0
        out[:, videos] = floor
    return out


def hit_probability(num_candidates: int, num_correct: int, k: int) -> float:
    """P(at least one of ``num_correct`` items is in the top ``k`` of ``num_candidates`` items
    ranked in random order), the hypergeometric complement."""
    if k >= num_candidates:
        return 1.0
    miss = 1.0
    for i in range(k):
        miss *= (num_candidates - num_correct - i) / (num_candidates - i)
        if miss <= 0.0:
            return 1.0
    return 1.0 - miss


def chance_recall(captions_per_video: Sequence[int], k: int) -> tuple[float, float]:
    """Expected t2v and v2t R@k (fractions) of a random ranker under this module's conventions.

    ``captions_per_video[v]`` is ``n_v``; ``N = sum(n_v)`` captions, ``V`` videos. t2v: each
    caption's one video among ``V``, ``min(1, k / V)``. v2t: a video counts its best-ranked own
    caption, so it scores if any of its ``n_v`` lands in the top k of ``N``, averaged over
    videos; for k = 1 that is ``mean_v(n_v) / N`` (= 1/V), not ``1 / N``.
    """
    counts = [int(n) for n in captions_per_video]
    if not counts:
        raise ValueError("no videos")
    num_captions = sum(counts)
    t2v = min(1.0, k / len(counts))
    v2t = float(np.mean([hit_probability(num_captions, n, k) for n in counts]))
    return t2v, v2t


def retrieval_metrics(similarity: np.ndarray, text_to_video: Sequence[int]) -> dict[str, float]:
    """t2v and v2t R@1/5/10 (percent), MdR and MnR from a [num_texts, num_videos] similarity."""
    similarity = np.asarray(similarity)
    if similarity.ndim != 2 or similarity.shape[0] != len(text_to_video):
        raise ValueError(f"similarity {similarity.shape} does not match {len(text_to_video)} captions")
    if not np.isfinite(similarity).all():
        raise ValueError("similarity contains NaN or infinite values")
    out = _summarise(t2v_ranks(similarity, text_to_video), "t2v")
    out.update(_summarise(v2t_ranks(similarity, text_to_video), "v2t"))
    return out


# --------------------------------------------------------------------------- captioning

_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def java_available() -> bool:
    return shutil.which("java") is not None


def simple_tokenize(text: str) -> str:
    """A Python stand-in for the PTB tokenizer: lower-case, split punctuation off, drop it."""
    tokens = _TOKEN.findall(text.lower().replace("\n", " "))
    return " ".join(t for t in tokens if t not in _PUNCTUATION)


@contextlib.contextmanager
def _stderr_to_log():
    """Catch what child processes (the Java tokenizer) write to stderr: its routine
    'PTBTokenizer tokenized N tokens at ...' line goes to the debug log, anything else is
    logged as a warning (so a Java problem is still seen)."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    level = logging.DEBUG if line.startswith("PTBTokenizer tokenized") else logging.WARNING
                    logger.log(level, "java tokenizer: %s", line)


def tokenize_captions(captions: Mapping[str, Sequence[str]], use_java: bool | None = None) -> dict[str, list[str]]:
    """PTB-tokenise ``{id: [caption, ...]}`` (Java), or the Python stand-in without Java."""
    if use_java is None:
        use_java = java_available()
    if not use_java:
        return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with _stderr_to_log():
        tokenized = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    # An empty caption at the very end can lose its (empty) output line: restore it.
    return {k: tokenized.get(k, [""] * len(v)) for k, v in captions.items()}


def caption_metrics(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    use_java: bool | None = None,
    meteor: bool = True,
) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (x100) of one prediction per id against its references.

    Ids must match exactly. Without Java, METEOR is left out (a warning says why) and the
    tokenizer is :func:`simple_tokenize`.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(predictions) != set(references):
        extra = sorted(set(predictions) - set(references))[:3]
        lacking = sorted(set(references) - set(predictions))[:3]
        raise ValueError(f"prediction and reference ids differ "
                         f"(only in predictions: {extra}; only in references: {lacking})")
    if not predictions:
        raise ValueError("no captions to score")
    for key, refs in references.items():
        if not refs:
            raise ValueError(f"id {key!r} has no reference captions")
    if use_java is None:
        use_java = java_available()
        if not use_java:
            logger.warning("java not found: METEOR skipped and a Python stand-in replaces the PTB tokenizer "
                           "(install Java 8+ for paper-comparable scores)")
    ids = sorted(predictions)
    res = tokenize_captions({k: [predictions[k]] for k in ids}, use_java)
    gts = tokenize_captions({k: list(references[k]) for k in ids}, use_java)
    out: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, value in enumerate(bleu, start=1):
        out[f"caption/BLEU-{n}"] = 100.0 * float(value)
    if use_java and meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            out[METEOR] = 100.0 * float(scorer.compute_score(gts, res)[0])
        finally:
            _close_meteor(scorer)
    out[ROUGE_L] = 100.0 * float(Rouge().compute_score(gts, res)[0])
    out[CIDER] = 100.0 * float(Cider().compute_score(gts, res)[0])
    return out


def _close_meteor(scorer) -> None:
    """Stop METEOR's Java subprocess (its __del__ is unreliable at interpreter exit)."""
    process = getattr(scorer, "meteor_p", None)
    if process is None:
        return
    with scorer.lock:
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream:
                stream.close()
        process.kill()
        process.wait()  # pycocoevalcap's __del__ repeats these steps harmlessly
