import pytest
import torch

from calmcap.cider import CiderD
from calmcap.scst import rewards, sample_captions, scst_loss, teacher_forcing_inputs
from calmcap.tokenizer import BOS_ID, EOS_ID, PAD_ID

REFS = {
    "a": ["a man plays the guitar", "someone is playing guitar", "a man is playing a guitar"],
    "b": ["a woman is cooking", "a lady prepares food in the kitchen"],
    "c": ["two dogs are running in a field", "dogs play outside"],
}
HYPS = {"a": "a man is playing a guitar", "b": "a woman cooks food in a kitchen", "c": "dogs run"}


def test_cider_d_equals_pycocoevalcap_with_the_same_document_frequencies():
    from pycocoevalcap.cider.cider import Cider

    mean, per_item = Cider().compute_score(REFS, {k: [v] for k, v in HYPS.items()})
    cider = CiderD([REFS[k] for k in sorted(REFS)], pretokenized=True)
    ours = [cider.score(HYPS[k], REFS[k]) for k in sorted(REFS)]
    assert ours == pytest.approx(list(per_item), rel=1e-12)
    # A caption that copies a reference beats an unrelated one.
    assert cider.score(REFS["b"][0], REFS["b"]) > cider.score("two dogs", REFS["b"])


def test_teacher_forcing_inputs_stop_after_eos():
    sequences = torch.tensor([[5, 6, EOS_ID, 9, PAD_ID], [7, EOS_ID, PAD_ID, PAD_ID, PAD_ID], [5, 6, 7, 8, 9]])
    ids, mask = teacher_forcing_inputs(sequences)
    assert ids[:, 0].eq(BOS_ID).all()
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert ids[0].tolist() == [BOS_ID, 5, 6, EOS_ID, PAD_ID, PAD_ID]


def test_scst_loss_pushes_up_rewarded_samples():
    logits = torch.zeros(2, 3, 4, requires_grad=True)
    targets = torch.tensor([[1, 2, -100], [3, 3, 3]])
    loss = scst_loss(logits, targets, torch.tensor([1.0, -1.0]))
    loss.backward()
    # Gradient descent raises the logit of rewarded tokens and lowers the penalised ones.
    assert logits.grad[0, 0, 1] < 0 and logits.grad[1, 0, 3] > 0
    assert logits.grad[0, 2].abs().sum() == 0  # padding carries no gradient


def test_rewards_and_sampling_shapes(make_model, tiny_batch, tokenizer):
    model = make_model()
    model.train()
    model.clip.eval()  # a frozen part in inference mode, as the recipe's train_mode leaves it
    greedy, sampled = sample_captions(model, tiny_batch, num_samples=3, max_length=6)
    assert greedy.shape[0] == 4 and sampled.shape[0] == 12
    # Every module's mode restored: the decoder trains again, the frozen towers stay in inference mode.
    assert model.training and model.decoder.training
    assert not any(module.training for module in model.clip.modules())
    cider = CiderD([["a red circle moves to the left"], ["a blue square grows bigger"]])
    refs = [["a red circle moves to the left"]] * 4
    advantage, stats = rewards(cider, tokenizer, greedy, sampled, refs)
    assert advantage.shape == (12,) and advantage.dtype == torch.float32
    assert set(stats) == {"scst/greedy_cider", "scst/sample_cider"}
    # Gradients reach the decoder through forward() with caption_repeats.
    ids, mask = teacher_forcing_inputs(sampled)
    out = model({"video": tiny_batch["video"], "video_mask": tiny_batch["video_mask"], "caption_ids": ids,
                 "caption_mask": mask, "caption_repeats": 3, "sample_latent": False})
    assert out["caption_logits"].shape[0] == 12
    scst_loss(out["caption_logits"], out["caption_targets"], torch.ones(12)).backward()
    assert model.decoder.gpt.transformer.wte.weight.grad is not None
