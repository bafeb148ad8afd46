"""The shared ViT building blocks: the MLP that recomputes its GELU in the backward pass."""

import pytest
import torch

from transformers_mixedae.models.vit_layers import ViTMLP


def mlp_pair(hidden_act: str = "gelu") -> tuple[ViTMLP, ViTMLP]:
    """Two MLPs with the same random weights: the first recomputes its activation, the second is autograd's."""
    torch.manual_seed(0)
    recomputing = ViTMLP(8, 32, hidden_act)
    plain = ViTMLP(8, 32, hidden_act)
    plain.load_state_dict(recomputing.state_dict())
    plain.recompute_activation = False
    return recomputing, plain


def forward_backward(mlp: ViTMLP, inputs: torch.Tensor, autocast: bool = False):
    inputs = inputs.detach().clone().requires_grad_(inputs.requires_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        output = mlp(inputs)
    (output.float() * torch.linspace(-1, 1, output.shape[-1])).sum().backward()
    parameter_grads = {name: parameter.grad for name, parameter in mlp.named_parameters()}
    return output, inputs.grad, parameter_grads


@pytest.mark.parametrize("autocast", [False, True])
def test_recomputed_gelu_gives_autograds_values_and_gradients(autocast):
    recomputing, plain = mlp_pair()
    inputs = torch.randn(3, 5, 8, requires_grad=True)
    output, input_grad, grads = forward_backward(recomputing, inputs, autocast)
    expected_output, expected_input_grad, expected_grads = forward_backward(plain, inputs, autocast)
    assert output.dtype == expected_output.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert input_grad.dtype == torch.float32 and all(grad.dtype == torch.float32 for grad in grads.values())
    tolerance = dict(atol=1e-2, rtol=1e-2) if autocast else dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(output, expected_output, **tolerance)
    torch.testing.assert_close(input_grad, expected_input_grad, **tolerance)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], **tolerance, msg=lambda m: f"{name}: {m}")


def test_recomputed_gelu_keeps_one_intermediate_activation_instead_of_two():
    recomputing, plain = mlp_pair()
    inputs = torch.randn(3, 5, 8, requires_grad=True)
    parameters = {parameter.data_ptr() for mlp in (recomputing, plain) for parameter in mlp.parameters()}

    def saved_activation_elements(mlp: ViTMLP) -> int:
        saved = {}

        def pack(tensor):
            if tensor.data_ptr() not in parameters:
                saved[tensor.data_ptr()] = tensor.numel()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            mlp(inputs)
        return sum(saved.values())

    tokens = 3 * 5
    # Plain: the input, fc1's output (for the GELU) and the GELU's output (for fc2). Recomputing: the first two.
    assert saved_activation_elements(plain) == tokens * (8 + 32 + 32)
    assert saved_activation_elements(recomputing) == tokens * (8 + 32)


def test_frozen_weights_or_inputs_get_no_gradient_and_the_rest_is_unchanged():
    recomputing, plain = mlp_pair()
    for mlp in (recomputing, plain):
        mlp.fc1.requires_grad_(False)
    inputs = torch.randn(2, 4, 8)  # no gradient asked for the input either
    output, input_grad, grads = forward_backward(recomputing, inputs)
    expected_output, _, expected_grads = forward_backward(plain, inputs)
    assert input_grad is None and grads["fc1.weight"] is None and grads["fc1.bias"] is None
    torch.testing.assert_close(output, expected_output, atol=1e-6, rtol=1e-5)
    for name in ("fc2.weight", "fc2.bias"):
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-6, rtol=1e-5)


def test_other_activations_and_inference_take_autograds_path(monkeypatch):
    from transformers_mixedae.models import vit_layers

    def fail(*args):
        raise AssertionError("the recomputing path ran")

    monkeypatch.setattr(vit_layers.MLPWithRecomputedGELU, "apply", fail)
    relu, _ = mlp_pair("relu")
    assert not relu.recompute_activation
    relu(torch.randn(2, 8, requires_grad=True))
    gelu, _ = mlp_pair()
    with torch.no_grad():
        gelu(torch.randn(2, 8))
    gelu.requires_grad_(False)
    gelu(torch.randn(2, 8))  # nothing needs a gradient
    with pytest.raises(AssertionError, match="the recomputing path ran"):
        gelu.fc2.requires_grad_(True)
        gelu(torch.randn(2, 8))


class LowRankAdapted(torch.nn.Module):
    """A LoRA-style replacement of a Linear layer: the frozen layer plus a trainable low-rank update."""

    def __init__(self, base: torch.nn.Linear, rank: int = 2):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = torch.nn.Linear(base.in_features, rank, bias=False)
        self.up = torch.nn.Linear(rank, base.out_features, bias=False)
        torch.nn.init.normal_(self.up.weight)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.base(inputs) + self.up(self.down(inputs))


def test_hooks_and_adapted_layers_get_their_forward_called():
    mlp, _ = mlp_pair()
    calls = []
    mlp.fc1.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    mlp(torch.randn(2, 8, requires_grad=True)).sum().backward()
    assert calls == [(2, 32)]  # the hook ran, as it does under torch.no_grad()

    mlp, _ = mlp_pair()
    inputs = torch.randn(2, 8)
    with torch.no_grad():
        expected = mlp.fc2(mlp.activation_fn(mlp.fc1(inputs)))
    mlp.fc1 = LowRankAdapted(mlp.fc1)
    output = mlp(inputs)
    output.sum().backward()
    assert not torch.allclose(output, expected)  # the adapter's update is part of the output ...
    assert mlp.fc1.down.weight.grad is not None  # ... and is trained
