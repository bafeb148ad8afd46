"""evaluation.eval_mode: the model is evaluated in eval mode and every submodule is handed back in the mode it had."""

import pytest
from torch import nn

from transformers_mixedae.evaluation import eval_mode


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_switches_every_submodule_and_restores_the_callers_mode(training):
    model = _model().train(training)
    with eval_mode(model) as inside:
        assert inside is model
        assert not any(module.training for module in model.modules())
    assert all(module.training is training for module in model.modules())


def test_eval_mode_restores_training_when_the_evaluation_raises():
    model = _model().train()
    with pytest.raises(RuntimeError, match="evaluation failed"):
        with eval_mode(model):
            raise RuntimeError("evaluation failed")
    assert all(module.training for module in model.modules())


def test_eval_mode_gives_back_mixed_modes_as_they_were():
    # A linear probe holds its frozen encoder in eval mode while the head trains; evaluating must keep it so.
    model = _model().train()
    model[0].eval()
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
    assert [module.training for module in model.modules()] == [True, False, True]
