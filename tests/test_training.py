"""ur.training: the schedule against hand-computed values, specs that refuse unknown keys
and bad values, and typed options that catch a typo on the command line."""

import math

import pytest
import torch

from ur.cli import main
from ur.training import (
    OptimizerSpec,
    adamw_with_schedule,
    as_spec,
    parameter_groups,
    plain,
    warmup_cosine,
)


def test_warmup_then_cosine_by_hand():
    f = warmup_cosine(10, warmup_ratio=0.2, min_lr_ratio=0.1)  # 2 warmup steps, 8 of cosine
    assert [f(0), f(1)] == pytest.approx([1 / 3, 2 / 3])
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(10) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)


def test_parameter_groups_give_the_vision_parts_their_own_rate():
    named = [("visual.w", torch.nn.Parameter(torch.ones(1))),
             ("merger.w", torch.nn.Parameter(torch.ones(1))),
             ("lm.w", torch.nn.Parameter(torch.ones(1))),
             ("frozen", torch.nn.Parameter(torch.ones(1), requires_grad=False))]
    parts = {"visual.w": "vision", "merger.w": "projector", "lm.w": "language",
             "frozen": "language"}
    groups = parameter_groups(named, OptimizerSpec(lr=1e-3, vision_lr=5e-3), parts.__getitem__)
    assert [(g["lr"], len(g["params"])) for g in groups] == [(1e-3, 1), (5e-3, 2)]
    same = parameter_groups(named, OptimizerSpec(lr=1e-3), parts.__getitem__)
    assert [(g["lr"], len(g["params"])) for g in same] == [(1e-3, 3)]
    conf = adamw_with_schedule(groups, OptimizerSpec(lr=1e-3, vision_lr=5e-3, warmup_ratio=0.5), 4)
    assert [g["lr"] for g in conf["optimizer"].param_groups] == pytest.approx([1e-3 / 3, 5e-3 / 3])


def test_specs_round_trip_through_plain_dicts_and_refuse_unknown_keys():
    spec = OptimizerSpec(lr=1e-4, vision_lr=1e-5)
    assert as_spec(OptimizerSpec, plain(spec)) == spec
    assert as_spec(OptimizerSpec, None) is None
    with pytest.raises(ValueError, match="lroa"):
        as_spec(OptimizerSpec, {"lr": 1e-4, "lroa": 2})
    with pytest.raises(ValueError, match="lr must be positive"):
        OptimizerSpec(lr=0)


@pytest.mark.parametrize("option, value", [("--model.init_args.finetune", "lroa"),
                                           ("--model.init_args.judge.mode", "fats"),
                                           ("--pretrain.family", "qwen3")])
def test_a_typo_in_a_typed_option_is_refused_before_anything_runs(option, value, capsys,
                                                                  monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", "experiments/quickstart.yaml", option, value, "--print_config"])
    assert e.value.code not in (0, None)
    assert value in capsys.readouterr().err
