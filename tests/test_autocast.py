"""A pretraining step under autocast (fairseq's `common.amp`: bfloat16 here on CPU, float16 on a GPU) for every layer
type: span masking writes the float32 mask embedding into half-precision features, which torch refused for an
in-place write ("Index put requires the source and destination dtypes match")."""

import torch

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
