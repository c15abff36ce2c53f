"""The optimizer and schedule RewardSFTModule builds from its YAML spec."""

import lightning as L
import pytest

from ur.models import build_tiny_vlm
from ur.models.loading import part_of
from ur.reward.sft import RewardSFTModule
from ur.training import OptimizerSpec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("opt") / "q", texts=["a red circle", "Image 1"],
                          num_layers=1, vision_depth=1)


def _optimizer(tiny, spec):
    module = RewardSFTModule(checkpoint=str(tiny), export=False, optimizer=spec)
    module.trainer = L.Trainer(max_steps=100, logger=False, enable_checkpointing=False)
    return module, module.configure_optimizers()


def test_vision_lr_puts_tower_and_projector_in_their_own_group(tiny):
    module, conf = _optimizer(tiny, OptimizerSpec(lr=1e-3, vision_lr=5e-3, warmup_ratio=0.1))
    groups = conf["optimizer"].param_groups
    assert sorted(g["initial_lr"] for g in groups) == [1e-3, 5e-3]
    by_id = {id(p): name for name, p in module.model.named_parameters()}
    for g in groups:
        parts = {part_of(by_id[id(p)]) for p in g["params"]}
        assert parts == ({"vision", "projector"} if g["initial_lr"] == 5e-3 else {"language"})
    # linear warmup over the first 10 of 100 steps, then cosine
    sched = conf["lr_scheduler"]["scheduler"]
    assert sched.lr_lambdas[0](0) == pytest.approx(1 / 11)
    assert sched.lr_lambdas[0](10) == pytest.approx(1.0)


def test_one_group_without_vision_lr(tiny):
    _, conf = _optimizer(tiny, OptimizerSpec(lr=1e-3))
    assert [g["initial_lr"] for g in conf["optimizer"].param_groups] == [1e-3]
