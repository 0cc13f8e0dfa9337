"""`checkpoint_activations=true` recomputes every layer type's activations in the backward: the same loss, gradients
and batch-norm running statistics (dropout replayed, statistics not updated again by the recompute), and less kept
for the backward. What autograd keeps in the forward pass is counted with saved-tensor hooks: the activation memory a
training step holds when its backward starts (the recompute then holds one layer's at a time)."""

import pytest
import torch

from tests.conftest import LAYER_TYPES, tiny_model


def loss_gradients_and_saved_bytes(layer_type: str, checkpoint_activations: bool):
    model = tiny_model(layer_type, checkpoint_activations=checkpoint_activations, dropout=0.1, encoder_layers=3)
    model.train()
    frames = torch.randn(2, 200, 32, generator=torch.Generator().manual_seed(0))  # the encoder's input
    padding = torch.arange(200)[None, :] >= torch.tensor([200, 130])[:, None]
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    torch.manual_seed(1)  # the same dropout masks in both runs
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        features, _ = model.encoder(frames, padding_mask=padding)
    loss = features.square().mean()
    loss.backward()
    gradients = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), gradients, sum(saved.values()), dict(model.named_buffers())


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_same_loss_and_gradients_with_less_kept(layer_type):
    loss, gradients, kept, buffers = loss_gradients_and_saved_bytes(layer_type, False)
    loss_ckpt, gradients_ckpt, kept_ckpt, buffers_ckpt = loss_gradients_and_saved_bytes(layer_type, True)
    assert buffers_ckpt.keys() == buffers.keys()
    for name, buffer in buffers.items():  # batch-norm statistics updated once per step, not again when recomputed
        torch.testing.assert_close(buffers_ckpt[name], buffer, rtol=1e-6, atol=1e-7, msg=name)
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=1e-7)
    assert gradients_ckpt.keys() == gradients.keys()
    for name, grad in gradients.items():
        torch.testing.assert_close(gradients_ckpt[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert kept_ckpt < 0.5 * kept, f"{kept_ckpt} bytes kept with checkpointing, {kept} without"
