"""`repair_universal_load` undoes what DeepSpeed 0.19's ZeRO-3 universal load leaves in the optimizer:
one `step` tensor shared by every group's state, and the first group's settings on every group.
(The end-to-end check, a ZeRO-3 resume on another number of ranks, is in test_elastic_resume.py.)"""
from pathlib import Path

import pytest
import torch

from engine.training.checkpoints import CheckpointError
from engine.training.elastic import repair_universal_load


def loaded_as_deepspeed_leaves_it(tmp_path: Path):
    decay, no_decay = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([{"params": [decay], "weight_decay": 0.01},
                                   {"params": [no_decay], "weight_decay": 0.0}], lr=1e-3)
    saved_groups = [{k: v for k, v in group.items() if k != "params"} | {"params": [i]}
                    for i, group in enumerate(optimizer.param_groups)]
    step = torch.tensor(4.0)  # stage3.py: `self.optimizer.state[fp32_param]['step'] = state_step` for each group
    for param in (decay, no_decay):
        optimizer.state[param] = {"step": step, "exp_avg": torch.zeros_like(param),
                                  "exp_avg_sq": torch.zeros_like(param)}
    for group in optimizer.param_groups:  # and param_groups[0]'s settings onto every group
        group["weight_decay"] = 0.01
    (tmp_path / "zero").mkdir()
    torch.save({"param_groups": saved_groups}, tmp_path / "zero" / "optimizer_state.pt")
    return optimizer, (decay, no_decay)


def test_each_group_counts_its_own_steps_and_gets_back_its_own_weight_decay(tmp_path):
    optimizer, params = loaded_as_deepspeed_leaves_it(tmp_path)
    repair_universal_load(optimizer, tmp_path)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.01, 0.0]
    for param in params:
        param.grad = torch.ones_like(param)
    optimizer.step()
    assert [float(optimizer.state[param]["step"]) for param in params] == [5.0, 5.0]


def test_saved_groups_that_do_not_match_the_optimizer_are_refused(tmp_path):
    optimizer, _ = loaded_as_deepspeed_leaves_it(tmp_path)
    optimizer.param_groups.pop()
    with pytest.raises(CheckpointError, match="2 saved param groups, the optimizer has 1"):
        repair_universal_load(optimizer, tmp_path)
