"""Half precision on the CPU (bfloat16 here, float16 on a GPU), for what `make gpu-check` runs without matplotlib:
a pretraining step under autocast (fairseq's `common.amp`) for every layer type, whose span masking wrote the float32
mask embedding into half-precision features, which torch refused for an in-place write ("Index put requires the
source and destination dtypes match"); and the I(X;T) capture from a half-precision model."""

import numpy as np
import torch

from mamba_hubert.analysis.capture import capture_layer_frames
from tests.conftest import tiny_model


def test_masked_pretraining_step_under_autocast(layer_type):
    model = tiny_model(layer_type, mask_prob=0.5, mask_channel_prob=0.2, mask_channel_length=4).train()
    source = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    padding = torch.arange(8000)[None, :] >= torch.tensor([8000, 6000])[:, None]
    targets = [torch.randint(0, 10, (2, 25), generator=torch.Generator().manual_seed(1))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net_output = model(source, target_list=targets, padding_mask=padding)
        logits = model.get_logits(net_output, is_masked=True)
    assert logits[0].numel() > 0  # masked frames were scored
    torch.nn.functional.cross_entropy(logits[0].float(), model.get_targets(net_output, is_masked=True)[0]).backward()
    assert model.mask_emb.grad is not None and torch.isfinite(model.mask_emb.grad).all()


def test_capture_runs_in_the_model_dtype():
    """The training hook captures from the model being trained, which may be half precision (on a GPU, also on its
    device): the audio goes in in the model's dtype, the frames come back as float32 arrays close to a float32
    model's."""
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9000, 12345)]
    full = capture_layer_frames(tiny_model("conbimamba").eval(), waves)
    half = capture_layer_frames(tiny_model("conbimamba").eval().to(torch.bfloat16), waves)
    for expected, got in zip([full.inputs, *full.layers], [half.inputs, *half.layers]):
        for a, b in zip(expected, got):
            assert b.dtype == np.float32 and b.shape == a.shape
            np.testing.assert_allclose(b, a, atol=0.1 * np.abs(a).max())
