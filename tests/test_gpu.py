"""CUDA checks (``pytest -m gpu``; skipped without a CUDA device): the model computes on a GPU
what it computes on the CPU, trains under bf16 autocast, and its checkpoints cross devices."""

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def exact_fp32():
    """No TF32 in matrix products or convolutions: compare fp32 against fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def to_cuda(batch):
    return {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}


@pytest.mark.parametrize("variant", ["vae", "kl", "none"])
def test_forward_on_cuda_matches_cpu(make_model, tiny_batch, variant):
    model = make_model(seed=0, overrides=[f"alignment.variant={variant}"]).eval()
    with torch.no_grad():
        cpu = model(tiny_batch)
        gpu = model.cuda()(to_cuda(tiny_batch))
    assert set(gpu) == set(cpu)
    for key, value in cpu.items():
        assert gpu[key].device.type == "cuda", key
        torch.testing.assert_close(gpu[key].cpu(), value, rtol=1e-4, atol=1e-4, msg=key)


def test_greedy_and_beam_captions_on_cuda_match_cpu(make_model, tiny_batch):
    model = make_model(seed=0).eval()
    video, mask = tiny_batch["video"], tiny_batch["video_mask"]
    with torch.no_grad():
        cpu = [model.generate(video, mask, num_beams=beams, max_length=10) for beams in (1, 3)]
        model.cuda()
        gpu = [model.generate(video.cuda(), mask.cuda(), num_beams=beams, max_length=10) for beams in (1, 3)]
    for a, b in zip(cpu, gpu, strict=True):
        assert torch.equal(a["sequences"], b["sequences"].cpu())
        assert a["captions"] == b["captions"]
        torch.testing.assert_close(b["scores"].cpu(), a["scores"], rtol=1e-4, atol=1e-4)


def test_bf16_autocast_training_step_is_finite_and_learns(make_model, tiny_batch):
    from calmcap.losses import LOSS_TOTAL, CALMLoss, LossWeights

    model = make_model(seed=0).cuda().train()
    loss_fn = CALMLoss(LossWeights(), variant=model.variant)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = to_cuda(tiny_batch)
    losses = []
    for step in range(20):
        torch.manual_seed(step)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(batch))[LOSS_TOTAL]
        loss.backward()
        for name, param in model.named_parameters():
            if param.grad is not None:
                assert torch.isfinite(param.grad).all(), name
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(map(lambda x: x == x and abs(x) < float("inf"), losses))
    assert losses[-1] < 0.7 * losses[0], losses  # one batch, 20 steps: it must fit


def test_checkpoint_saved_from_cuda_loads_anywhere(make_model, tiny_batch, tmp_path):
    from calmcap.models.calm import CALMModel

    model = make_model(seed=3).cuda().eval()
    model.save_pretrained(tmp_path / "model")
    on_cpu = CALMModel.from_pretrained(tmp_path / "model")
    on_gpu = CALMModel.from_pretrained(tmp_path / "model", device="cuda")
    assert next(on_cpu.parameters()).device.type == "cpu"
    assert all(t.device.type == "cuda" for t in list(on_gpu.parameters()) + list(on_gpu.buffers()))
    with torch.no_grad():
        reference = model(to_cuda(tiny_batch))
        loaded = on_gpu(to_cuda(tiny_batch))
        cpu = on_cpu(tiny_batch)
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key
        torch.testing.assert_close(cpu[key], value.cpu(), rtol=1e-4, atol=1e-4, msg=key)
