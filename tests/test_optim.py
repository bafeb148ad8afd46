"""LARS (MAE's linear-probe optimizer) and the --optimizer flag of image classification."""

import io

import pytest
import torch
from torch import nn

from transformers_mixedae.tasks.image_classification_args import (
    ClassificationArguments,
    parse_classification_arguments,
    resolve_recipe,
)
from transformers_mixedae.training.optim import LARS


def test_one_lars_step_on_a_matrix_matches_the_hand_computed_update():
    # ||p|| = 5; g + wd * p = [[0, 3], [4, 0]] has norm 5, so the trust ratio is 0.25 * 5 / 5 = 0.25.
    weight = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
    weight.grad = torch.tensor([[-1.5, 3.0], [4.0, -2.0]])
    optimizer = LARS([weight], lr=0.5, weight_decay=0.5, momentum=0.5, trust_coefficient=0.25)
    optimizer.step()
    # mu = 0.25 * [[0, 3], [4, 0]] = [[0, 0.75], [1, 0]]; p - 0.5 * mu
    assert torch.equal(optimizer.state[weight]["mu"], torch.tensor([[0.0, 0.75], [1.0, 0.0]]))
    assert torch.equal(weight.detach(), torch.tensor([[3.0, -0.375], [-0.5, 4.0]]))


def test_lars_with_the_default_trust_coefficient():
    weight = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
    weight.grad = torch.tensor([[0.0, 0.6], [0.8, 0.0]])  # norm 1: ratio 0.001 * 5 / 1 = 0.005
    optimizer = LARS([weight], lr=0.1)
    assert optimizer.defaults == dict(lr=0.1, weight_decay=0.0, momentum=0.9, trust_coefficient=0.001)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.tensor([[3.0, -0.0003], [-0.0004, 4.0]]), rtol=0, atol=1e-7)


def test_a_zero_matrix_gets_ratio_one():
    weight = nn.Parameter(torch.zeros(2, 2))
    weight.grad = torch.tensor([[1.0, 2.0], [0.5, 0.25]])
    LARS([weight], lr=0.5, momentum=0.5, trust_coefficient=0.25).step()
    assert torch.equal(weight.detach(), torch.tensor([[-0.5, -1.0], [-0.25, -0.125]]))


def test_biases_and_one_dimensional_parameters_get_plain_momentum_sgd_without_decay():
    bias = nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = LARS([bias], lr=0.5, weight_decay=0.5, momentum=0.5, trust_coefficient=0.25)
    for _ in range(2):
        bias.grad = torch.tensor([0.5, -1.0])
        optimizer.step()
    # mu1 = g = [0.5, -1] -> [0.75, 2.5]; mu2 = 0.5 * mu1 + g = [0.75, -1.5] -> [0.375, 3.25]
    assert torch.equal(bias.detach(), torch.tensor([0.375, 3.25]))

    torch.manual_seed(0)
    lars_bias = nn.Parameter(torch.randn(7))
    sgd_bias = nn.Parameter(lars_bias.detach().clone())
    lars = LARS([lars_bias], lr=0.1, weight_decay=0.3)
    sgd = torch.optim.SGD([sgd_bias], lr=0.1, momentum=0.9)
    for _ in range(4):
        gradient = torch.randn(7)
        lars_bias.grad, sgd_bias.grad = gradient.clone(), gradient.clone()
        lars.step()
        sgd.step()
        torch.testing.assert_close(lars_bias.detach(), sgd_bias.detach(), rtol=0, atol=1e-7)


def test_lars_state_is_checkpointed_like_any_optimizer():
    torch.manual_seed(0)
    first = nn.Linear(4, 3)
    second = nn.Linear(4, 3)
    second.load_state_dict(first.state_dict())
    optimizer = LARS(first.parameters(), lr=0.1)
    for parameter in first.parameters():
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    second.load_state_dict(first.state_dict())
    restored = LARS(second.parameters(), lr=0.1)
    buffer = io.BytesIO()  # through a file, as a checkpoint holds it
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    gradients = [torch.randn_like(parameter) for parameter in first.parameters()]
    for model, opt in ((first, optimizer), (second, restored)):
        for parameter, gradient in zip(model.parameters(), gradients):
            parameter.grad = gradient.clone()
        opt.step()
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_optimizer_flag_defaults_per_mode_and_validation():
    for mode, expected in (("finetune", "adamw"), ("linear_probe", "sgd")):
        _, _, training_args, args = parse_classification_arguments(["--mode", mode, "--output_dir", "x"])
        resolve_recipe(training_args, args, "mixedae")
        assert args.optimizer == expected
    _, _, training_args, args = parse_classification_arguments(
        ["--mode", "linear_probe", "--optimizer", "lars", "--output_dir", "x"])
    resolve_recipe(training_args, args, "mixedae")
    assert args.optimizer == "lars" and training_args.base_learning_rate == 0.1
    with pytest.raises(ValueError, match=r"--optimizer 'lamb' is not valid: choose one of \('sgd', 'adamw', 'lars'\)"):
        ClassificationArguments(optimizer="lamb")
    with pytest.raises(ValueError, match="LARS momentum -0.1 is not valid"):
        LARS([nn.Parameter(torch.zeros(1))], momentum=-0.1)
