import pytest

from calmcap.errors import CheckpointError
from calmcap.tokenizer import BOS_ID, EOS_ID, PAD_ID, CaptionTokenizer
from tests.conftest import CAPTIONS


def test_training_is_deterministic(tokenizer):
    again = CaptionTokenizer.train(CAPTIONS * 4, vocab_size=64)
    assert again.model_proto == tokenizer.model_proto


def test_encode_decode_round_trip(tokenizer):
    ids = tokenizer.encode("A Red circle moves to the left")
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert tokenizer.decode(ids) == "a red circle moves to the left"
    assert tokenizer.decode(ids + [PAD_ID, PAD_ID, 7]) == "a red circle moves to the left"


def test_truncation_keeps_eos(tokenizer):
    ids = tokenizer.encode(CAPTIONS[0], max_length=4)
    assert len(ids) == 4 and ids[0] == BOS_ID and ids[-1] == EOS_ID


def test_batch_encode_pads(tokenizer):
    ids, mask = tokenizer.batch_encode(["a red circle", "a blue square grows bigger"], max_length=30)
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[0].sum() < mask[1].sum()
    assert (ids[mask == 0] == PAD_ID).all()


def test_save_load(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "t.model")
    loaded = CaptionTokenizer.load(tmp_path / "t.model")
    assert loaded.encode(CAPTIONS[3]) == tokenizer.encode(CAPTIONS[3])
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="bad.model"):
        CaptionTokenizer.load(tmp_path / "bad.model")
