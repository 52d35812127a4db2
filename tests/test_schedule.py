"""The learning-rate schedule (visionllm/engine/optim.py): warmup then cosine, and with
``trainer.restart`` a warm restart, a second stage inside one run."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from visionllm.engine.optim import build_optimizer, lr_lambda, restart_of
from visionllm.engine.tasks import loss_weights_at


def test_warmup_then_cosine_to_zero():
    f = lr_lambda(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_a_restart_ends_the_first_cosine_and_warms_up_again():
    f, plain = lr_lambda(10, 300, (200, 0.6, 20)), lr_lambda(10, 200)
    assert all(f(s) == plain(s) for s in range(200))  # the first stage: a whole schedule to step 200
    assert f(199) < 1e-3
    assert f(200) == pytest.approx(0.6 / 20) and f(219) == pytest.approx(0.6)
    assert f(260) == pytest.approx(0.6 * 0.5 * (1 + math.cos(math.pi * 40 / 80)))
    assert f(300) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="restart"):
        lr_lambda(10, 300, (300, 0.6, 20))


def test_the_trainer_config_sets_it():
    tc = OmegaConf.create({"lr": 5e-4, "backbone_lr_mult": 0.1, "weight_decay": 0.05, "warmup_steps": 2,
                           "max_steps": 30, "restart": {"at": 0.8, "lr": 3e-4, "warmup_steps": 2}})
    assert restart_of(tc) == (24, pytest.approx(0.6), 2)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    opt, sched = build_optimizer(model, tc)
    for _ in range(25):  # to step 25: the restart's warmup done
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(3e-4)
    assert restart_of(OmegaConf.create({"lr": 5e-4, "max_steps": 30, "restart": None})) is None
    with pytest.raises(ValueError, match="trainer.restart"):
        restart_of(OmegaConf.create({"lr": 5e-4, "max_steps": 30, "restart": {"at": 0.8, "rate": 1e-4}}))


def test_it_restarts_at_the_step_a_phase_from_the_same_fraction_begins():
    for at, total in ((0.9, 2725), (0.8333333333, 3000), (0.5, 7)):
        step = restart_of(OmegaConf.create({"lr": 1.0, "max_steps": total, "restart": {"at": at, "lr": 0.5}}))[0]
        begun = [s for s in range(total) if loss_weights_at({"loss_x": 0.0}, [(at, {"loss_x": 1.0})], s / total)["loss_x"]]
        assert step == begun[0], (at, total)
