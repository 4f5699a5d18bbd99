import itertools

import numpy as np
import pytest

from calmcap.metrics import (
    CIDER,
    METEOR,
    caption_metrics,
    chance_recall,
    rank_last,
    retrieval_metrics,
    simple_tokenize,
    t2v_ranks,
    v2t_ranks,
)


def brute_force(similarity, text_to_video):
    """Independent reference: explicit loops, pessimistic ties, best correct caption for v2t."""
    num_texts, num_videos = similarity.shape
    t2v = []
    for t in range(num_texts):
        correct = similarity[t, text_to_video[t]]
        t2v.append(sum(1 for v in range(num_videos) if similarity[t, v] >= correct))
    v2t = []
    for v in range(num_videos):
        ranks = []
        for t in range(num_texts):
            if text_to_video[t] != v:
                continue
            ranks.append(sum(1 for u in range(num_texts) if similarity[u, v] >= similarity[t, v]))
        v2t.append(min(ranks))
    return np.array(t2v), np.array(v2t)


@pytest.mark.parametrize("seed", range(5))
def test_ranks_match_brute_force_with_ties_and_many_captions(seed):
    rng = np.random.default_rng(seed)
    num_videos = 7
    text_to_video = list(range(num_videos)) + list(rng.integers(0, num_videos, 9))  # 1-3 captions per video
    # Coarse values make ties frequent.
    similarity = rng.integers(0, 4, size=(len(text_to_video), num_videos)).astype(float)
    t2v, v2t = brute_force(similarity, text_to_video)
    assert np.array_equal(t2v_ranks(similarity, text_to_video), t2v)
    assert np.array_equal(v2t_ranks(similarity, text_to_video), v2t)
    metrics = retrieval_metrics(similarity, text_to_video)
    assert metrics["t2v/R@1"] == pytest.approx(100 * np.mean(t2v <= 1))
    assert metrics["t2v/R@5"] == pytest.approx(100 * np.mean(t2v <= 5))
    assert metrics["v2t/MdR"] == pytest.approx(np.median(v2t))
    assert metrics["v2t/MnR"] == pytest.approx(np.mean(v2t))


def test_perfect_and_constant_scorers():
    sim = np.eye(4)
    m = retrieval_metrics(sim, [0, 1, 2, 3])
    assert m["t2v/R@1"] == 100.0 and m["v2t/R@1"] == 100.0 and m["t2v/MdR"] == 1.0
    m = retrieval_metrics(np.zeros((4, 4)), [0, 1, 2, 3])
    assert m["t2v/R@1"] == 0.0 and m["t2v/MnR"] == 4.0  # ties never help


def test_v2t_uses_the_best_correct_caption():
    # Video 0 has captions 0 and 1; caption 1 is ranked first for video 0.
    sim = np.array([[0.1, 0.0], [0.9, 0.0], [0.5, 1.0]])
    assert list(v2t_ranks(sim, [0, 0, 1])) == [1, 1]
    assert list(t2v_ranks(sim, [0, 0, 1])) == [1, 1, 1]


def test_bad_retrieval_inputs():
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan]]), [0])


@pytest.mark.parametrize("captions_per_video", [[2, 2, 2], [1, 3, 1], [2, 1, 3, 1]])
def test_chance_matches_enumerating_every_ranking(captions_per_video):
    """A random ranker's expected R@K under the module's conventions, against all orderings."""
    owners = [v for v, n in enumerate(captions_per_video) for _ in range(n)]
    num_videos, num_captions = len(captions_per_video), len(owners)
    for k in (1, 2, 5):
        t2v_chance, v2t_chance = chance_recall(captions_per_video, k)
        # v2t: every order of the captions is equally likely; a video scores if one of its own is in the top k.
        orders = list(itertools.permutations(range(num_captions)))
        hits = [np.mean([any(owners[t] == v for t in order[:k]) for order in orders]) for v in range(num_videos)]
        assert v2t_chance == pytest.approx(np.mean(hits))
        assert t2v_chance == pytest.approx(min(1.0, k / num_videos))
    # At R@1 a video's chance is its share of the captions: mean_v(n_v) / N, not 1 / N.
    assert chance_recall(captions_per_video, 1)[1] == pytest.approx(np.mean(captions_per_video) / num_captions)


# A hand-built split: videos 0 and 1 decode, video 2 does not. Captions 0-1 are video 0's,
# 2-3 video 1's, 4-5 video 2's. Column 2 holds what a garbage embedding of the undecodable video
# would score (caption 4 would even find it first); the policy must ignore it.
HAND_SIMILARITY = np.array([
    [0.9, 0.1, 0.5],
    [0.2, 0.3, 0.4],
    [0.1, 0.8, 0.3],
    [0.3, 0.6, 0.2],
    [0.7, 0.2, 0.9],
    [0.4, 0.9, 0.1],
])
HAND_OWNERS = [0, 0, 1, 1, 2, 2]


def test_an_undecodable_video_is_ranked_last_and_counts_as_a_miss():
    sim = rank_last(HAND_SIMILARITY, [2])
    assert np.array_equal(sim[:, :2], HAND_SIMILARITY[:, :2]) and (sim[:, 2] < HAND_SIMILARITY[:, :2].min()).all()
    # t2v: captions of videos 0 and 1 keep their ranks; video 2's own captions rank it last (3 of 3).
    assert list(t2v_ranks(sim, HAND_OWNERS)) == [1, 2, 1, 1, 3, 3]
    # v2t: video 1 now also competes with caption 5 (0.9 > its best 0.8); video 2 ties with every caption.
    assert list(v2t_ranks(sim, HAND_OWNERS)) == [1, 2, 6]
    with_bad = retrieval_metrics(sim, HAND_OWNERS)
    assert with_bad["t2v/R@1"] == pytest.approx(100 * 3 / 6) and with_bad["v2t/R@1"] == pytest.approx(100 / 3)
    assert with_bad["v2t/R@5"] == pytest.approx(200 / 3) and with_bad["v2t/MnR"] == pytest.approx(3.0)
    # The same split without video 2 (and its captions): what dropping it used to report.
    without = retrieval_metrics(HAND_SIMILARITY[:4, :2], HAND_OWNERS[:4])
    assert without["t2v/R@1"] == pytest.approx(75.0) and without["v2t/R@1"] == pytest.approx(100.0)
    for direction in ("t2v", "v2t"):
        for k in (1, 5, 10):
            assert with_bad[f"{direction}/R@{k}"] <= without[f"{direction}/R@{k}"]
    assert rank_last(HAND_SIMILARITY, []).tolist() == HAND_SIMILARITY.tolist()


def test_evaluation_scores_the_undecodable_video_as_a_miss():
    """calmcap.evaluation applies the policy: the hand-built split through its scoring step."""
    torch = pytest.importorskip("torch")
    from calmcap.evaluation import _score

    def score(similarity, owners, is_valid, bad):
        # Text embeddings = rows of the matrix, video embeddings = the identity: text @ video.T = similarity.
        videos = torch.eye(similarity.shape[1], dtype=torch.float64)
        return _score(None, np.array(is_valid), videos, torch.tensor(similarity), owners,
                      [f"caption {i}" for i in range(len(owners))], None, None, bad, False, False)

    with_bad = score(HAND_SIMILARITY, HAND_OWNERS, [True, True, False], ["v2.mp4: truncated"])
    without = score(HAND_SIMILARITY[:4, :2], HAND_OWNERS[:4], [True, True], [])
    assert with_bad.counts == {"videos": 3, "videos_skipped": 1, "captions": 6}
    assert with_bad.t2v_ranks == [1, 2, 1, 1, 3, 3] and with_bad.v2t_ranks == [1, 2, 6]
    assert with_bad.metrics["t2v/R@1"] == pytest.approx(50.0) and with_bad.metrics["v2t/R@1"] == pytest.approx(100 / 3)
    assert without.metrics["t2v/R@1"] == pytest.approx(75.0) and without.metrics["v2t/R@1"] == pytest.approx(100.0)
    for direction in ("t2v", "v2t"):
        for k in (1, 5, 10):
            assert with_bad.metrics[f"{direction}/R@{k}"] <= without.metrics[f"{direction}/R@{k}"]
    assert with_bad.bad_videos == ["v2.mp4: truncated"]
    # Chance on the full gallery: 1/3 both ways (v2t: 2 own captions of 6).
    assert with_bad.chance["t2v/R@1"] == pytest.approx(100 / 3) and with_bad.chance["v2t/R@1"] == pytest.approx(100 / 3)


PREDICTIONS = {"v1": "A man is playing a guitar.", "v2": "a woman cooks food in a kitchen", "v3": "dogs run"}
REFERENCES = {
    "v1": ["a man plays the guitar", "someone is playing guitar", "a man is playing a guitar"],
    "v2": ["a woman is cooking", "a lady prepares food in the kitchen"],
    "v3": ["two dogs are running in a field", "dogs play outside"],
}


def test_caption_metrics_equal_pycocoevalcap_called_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in PREDICTIONS.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected = {f"caption/BLEU-{i + 1}": 100 * b for i, b in enumerate(bleu)}
    expected[METEOR] = 100 * Meteor().compute_score(gts, res)[0]
    expected["caption/ROUGE-L"] = 100 * Rouge().compute_score(gts, res)[0]
    expected[CIDER] = 100 * Cider().compute_score(gts, res)[0]
    ours = caption_metrics(PREDICTIONS, REFERENCES)
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key


def test_caption_metrics_without_java():
    ours = caption_metrics(PREDICTIONS, REFERENCES, use_java=False)
    assert METEOR not in ours and CIDER in ours
    with_java = caption_metrics(PREDICTIONS, REFERENCES, meteor=False)
    # The stand-in tokenizer agrees with PTB on plain captions like these.
    assert ours[CIDER] == pytest.approx(with_java[CIDER], rel=1e-6)
    assert simple_tokenize("A man's dog, running.") == "a man's dog running"


def test_perfect_captions_beat_a_constant_caption():
    perfect = caption_metrics({k: v[0] for k, v in REFERENCES.items()}, REFERENCES, meteor=False)
    constant = caption_metrics({k: "a man is playing" for k in REFERENCES}, REFERENCES, meteor=False)
    assert perfect[CIDER] > constant[CIDER] and perfect["caption/BLEU-4"] > constant["caption/BLEU-4"]


def test_caption_metric_inputs_must_match():
    with pytest.raises(ValueError, match="ids differ"):
        caption_metrics({"a": "x"}, {"b": ["x"]})


def test_java_tokenizer_chatter_goes_to_the_log_not_stderr(capfd, caplog):
    import logging

    from calmcap.metrics import tokenize_captions

    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="calmcap.metrics"):
        tokenized = tokenize_captions({"v1": ["A man, playing."]}, use_java=True)
    assert tokenized == {"v1": ["a man playing"]}
    assert "PTBTokenizer" not in capfd.readouterr().err
    assert any("PTBTokenizer tokenized" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
