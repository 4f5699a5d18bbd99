"""CIDEr-D with document frequencies fixed from a corpus: the reward of self-critical training.

pycocoevalcap's ``Cider`` recomputes document frequencies from the references it is given,
so a reward from it would depend on the batch. Here the frequencies come once from the
training captions (as in Rennie et al., 2017, and the self-critical.pytorch reference), and
each call scores hypotheses against their references with the same formula as pycocoevalcap's
CIDEr-D: n = 1..4 tf-idf vectors, clipped hypothesis counts, a Gaussian length penalty
(sigma = 6), mean over references, times 10. With the frequencies taken from the evaluated
references themselves it equals pycocoevalcap's ``Cider`` exactly (tested).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from calmcap.metrics import simple_tokenize

MAX_N = 4
SIGMA = 6.0


def _ngrams(tokens: Sequence[str]) -> Counter:
    counts: Counter = Counter()
    for n in range(1, MAX_N + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


class CiderD:
    """Score captions with document frequencies from ``corpus`` (a list of reference lists).

    Texts are tokenised with :func:`calmcap.metrics.simple_tokenize` unless ``pretokenized``.
    """

    def __init__(self, corpus: Iterable[Sequence[str]], pretokenized: bool = False) -> None:
        self.pretokenized = pretokenized
        self.document_frequency: defaultdict[tuple[str, ...], float] = defaultdict(float)
        num_documents = 0
        for references in corpus:
            num_documents += 1
            seen = set()
            for ref in references:
                seen.update(_ngrams(self._tokens(ref)))
            for ngram in seen:
                self.document_frequency[ngram] += 1
        if num_documents == 0:
            raise ValueError("CIDEr-D needs a non-empty corpus of references")
        self.log_num_documents = math.log(float(num_documents))

    def _tokens(self, text: str) -> list[str]:
        return (text if self.pretokenized else simple_tokenize(text)).split()

    def _vector(self, counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(MAX_N)]
        norm = [0.0] * MAX_N
        length = 0
        for ngram, tf in counts.items():
            n = len(ngram) - 1
            df = math.log(max(1.0, self.document_frequency.get(ngram, 0.0)))
            vec[n][ngram] = float(tf) * (self.log_num_documents - df)
            norm[n] += vec[n][ngram] ** 2
            if n == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    @staticmethod
    def _similarity(vec_h, vec_r, norm_h, norm_r, len_h, len_r) -> list[float]:
        delta = float(len_h - len_r)
        val = [0.0] * MAX_N
        for n in range(MAX_N):
            for ngram, count in vec_h[n].items():
                if ngram in vec_r[n]:
                    val[n] += min(count, vec_r[n][ngram]) * vec_r[n][ngram]
            if norm_h[n] != 0 and norm_r[n] != 0:
                val[n] /= norm_h[n] * norm_r[n]
            val[n] *= math.e ** (-(delta**2) / (2 * SIGMA**2))
        return val

    def score(self, hypothesis: str, references: Sequence[str]) -> float:
        """CIDEr-D of one hypothesis against its references (x10 scale, like pycocoevalcap)."""
        vec_h, norm_h, len_h = self._vector(_ngrams(self._tokens(hypothesis)))
        total = [0.0] * MAX_N
        for ref in references:
            vec_r, norm_r, len_r = self._vector(_ngrams(self._tokens(ref)))
            for n, value in enumerate(self._similarity(vec_h, vec_r, norm_h, norm_r, len_h, len_r)):
                total[n] += value
        return sum(total) / MAX_N / len(references) * 10.0

    def scores(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
        return [self.score(h, r) for h, r in zip(hypotheses, references, strict=True)]
