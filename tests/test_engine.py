"""Trainer parts: schedules, optimiser defaults, per-parameter clipping, deterministic views, atomic writes."""

import numpy as np
import pytest
import torch

from sslkd.config import OptimConfig
from sslkd.data.sampling import EpochSampler, SeededViews
from sslkd.core.checkpoint import atomic_write
from sslkd.engine.optim import LARS, clip_per_parameter, load_optimizer_state, param_groups, resolve_optim
from sslkd.core.schedules import (
    cosine,
    ema_momentum,
    linear_warmup_then_constant,
    per_epoch_warmup_then_constant,
    warmup_cosine,
)


def test_schedules_are_functions_of_the_step():
    dino_warmup = np.linspace(0.0, 1.0, 10)  # DINO's cosine_scheduler: base reached at the last warm-up step
    for step in range(10):
        assert warmup_cosine(step, 100, 1.0, 0.1, 10) == pytest.approx(dino_warmup[step], abs=1e-15)
    assert warmup_cosine(10, 100, 1.0, 0.1, 10) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 1.0, 0.1, 10) == pytest.approx(0.1)
    assert cosine(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert ema_momentum(0, 100, 0.996) == pytest.approx(0.996) and ema_momentum(100, 100, 0.996) == pytest.approx(1.0)
    authors = np.concatenate([np.linspace(0.04, 0.07, 3), np.full(5, 0.07)])  # DINO/MOKD code, per epoch
    assert [per_epoch_warmup_then_constant(e, 3, 0.04, 0.07) for e in range(8)] == pytest.approx(authors, abs=1e-15)
    assert per_epoch_warmup_then_constant(0, 1, 0.04, 0.07) == 0.04  # linspace(a, b, 1) == [a]
    assert per_epoch_warmup_then_constant(1, 1, 0.04, 0.07) == 0.07
    assert linear_warmup_then_constant(0, 30, 0.04, 0.07) == 0.04
    assert linear_warmup_then_constant(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup_then_constant(30, 30, 0.04, 0.07) == 0.07


def test_auto_optimiser_follows_mokd_per_backbone_kind():
    cnn = resolve_optim(OptimConfig(), "cnn")
    vit = resolve_optim(OptimConfig(lr=1e-3), "vit")
    assert (cnn.name, cnn.lr, cnn.weight_decay, cnn.weight_decay_end, cnn.min_lr) == ("sgd", 0.1, 1e-4, 1e-4, 0.0048)
    assert (vit.name, vit.lr, vit.weight_decay, vit.weight_decay_end, vit.min_lr) == ("adamw", 1e-3, 0.04, 0.4, 1e-5)
    assert resolve_optim(OptimConfig(name="sgd", weight_decay=5e-4), "cnn").weight_decay_end == 5e-4


def test_clipping_is_per_parameter_like_dino():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    params[0].grad = torch.tensor([3.0, 4.0, 0.0])  # norm 5 -> clipped to 1
    params[1].grad = torch.tensor([0.3, 0.4])  # norm 0.5 -> untouched
    clip_per_parameter(params, 1.0)
    assert params[0].grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert params[1].grad.tolist() == pytest.approx([0.3, 0.4])


def test_biases_and_norms_get_no_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    regularized, plain = param_groups(model.named_parameters())
    assert [p.shape for p in regularized["params"]] == [torch.Size([4, 3])]
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0.0


def test_lars_scales_weight_updates_by_trust_ratio():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    weight.grad, bias.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    LARS([weight, bias], lr=1.0, weight_decay=0.0, momentum=0.0, eta=0.001).step()
    assert weight[0].tolist() == pytest.approx([3.0, 4.0 - 0.001 * 5.0])  # eta * ||w|| / ||g|| * g
    assert bias.tolist() == pytest.approx([-1.0])  # 1-D: plain SGD


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.full((3, 8, 8), float(i)), i % 2, i


@pytest.mark.parametrize("saved_layout, param_layout", [(torch.channels_last, torch.contiguous_format),
                                                        (torch.contiguous_format, torch.channels_last)])
def test_optimizer_state_saved_in_another_layout_resumes_exactly(saved_layout, param_layout):
    """Fused AdamW reads a parameter and its moments as flat memory: moments saved where the parameter had another
    layout (an older version, another device or channels-last setting) are put in the parameter's layout on load,
    so the next step is the step of a run that never changed layout."""
    generator = torch.Generator().manual_seed(0)
    weight, grads = torch.randn(8, 6, 3, 3, generator=generator), torch.randn(3, 8, 6, 3, 3, generator=generator)

    def run(first_layout, second_layout, reload):
        param = torch.nn.Parameter(weight.clone().contiguous(memory_format=first_layout))
        optimizer = torch.optim.AdamW([param], lr=0.1, fused=True)
        for grad in grads[:2]:
            param.grad = grad.contiguous(memory_format=first_layout)
            optimizer.step()
        state = optimizer.state_dict()
        param.data = param.data.contiguous(memory_format=second_layout)
        optimizer = torch.optim.AdamW([param], lr=0.1, fused=True)
        reload(optimizer, state)
        param.grad = grads[2].contiguous(memory_format=second_layout)
        optimizer.step()
        return param.detach().contiguous(), optimizer.state[param]["exp_avg"]

    expected, _ = run(param_layout, param_layout, torch.optim.AdamW.load_state_dict)
    resumed, moment = run(saved_layout, param_layout, load_optimizer_state)
    assert moment.is_contiguous(memory_format=param_layout)
    torch.testing.assert_close(resumed, expected, rtol=1e-6, atol=1e-7)
    unaligned, _ = run(saved_layout, param_layout, torch.optim.AdamW.load_state_dict)
    assert not torch.allclose(unaligned, expected)  # what the realignment prevents


def test_views_depend_only_on_seed_epoch_and_index():
    dataset = SeededViews(Images(), lambda image: image + torch.rand(1))
    sampler = EpochSampler(6, seed=3)
    sampler.set_epoch(2)
    keys = list(sampler)
    first = [dataset[k][0] for k in keys]
    again = [dataset[k][0] for k in reversed(keys)][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    sampler.set_epoch(3)
    later = {k[0]: dataset[k][0] for k in sampler}
    assert all(not torch.equal(later[k[0]], view) for k, view in zip(keys, first))


def test_sampler_shards_disjointly():
    shards = [list(EpochSampler(10, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert not {i for i, _ in shards[0]} & {i for i, _ in shards[1]} and len(shards[0]) == len(shards[1]) == 5


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"good")

    def failing(handle):
        handle.write(b"half")
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume():
    from sslkd.engine.trainer import _record_step

    assert _record_step('{"step": 7, "loss": 1.0}') == 7
    assert _record_step('{"step": 8, "lo') == float("inf")  # half-written when the process was killed
    assert _record_step("") == float("inf")


def test_every_trainable_parameter_has_exactly_one_optimiser(tiny_cfg, tmp_path):
    """A trainable module kept outside the members' students would never be updated: the trainer refuses it."""
    from sslkd.engine.optim import check_every_parameter_optimised
    from sslkd.engine.trainer import Trainer

    trainer = Trainer(tiny_cfg("dino"), tmp_path)
    check_every_parameter_optimised(trainer.strategy, trainer.optimizers)
    trainer.strategy.stray = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match=r"never updated: \['stray.weight', 'stray.bias'\]"):
        check_every_parameter_optimised(trainer.strategy, trainer.optimizers)
    del trainer.strategy.stray
    first = next(iter(trainer.optimizers.values()))
    first.params.append(first.params[0])
    with pytest.raises(RuntimeError, match="in more than one optimiser"):
        check_every_parameter_optimised(trainer.strategy, trainer.optimizers)


def test_clipping_and_the_last_layer_freeze_are_dinos_defaults_not_every_methods():
    """A method's optimiser defaults live with it: DINO and MOKD clip at 3 and freeze their heads' last layers
    for an epoch; a method that sets nothing (SimCLR here) gets neither."""
    from sslkd.registry import STRATEGIES

    for method, clip, freeze in (("dino", 3.0, 1), ("mokd", 3.0, 1), ("simclr", 0.0, 0), ("mcl", 0.0, 0)):
        resolved = resolve_optim(OptimConfig(), "cnn", STRATEGIES.get(method).optimizer_defaults)
        assert (resolved.clip_grad, resolved.freeze_last_layer_epochs) == (clip, freeze), method


def test_declared_last_layers_are_the_ones_frozen(tiny_cfg, tmp_path):
    from sslkd.engine.trainer import Trainer

    trainer = Trainer(tiny_cfg("mokd"), tmp_path)
    for name, member in trainer.strategy.members.items():
        frozen = {id(p) for p in trainer.optimizers[name].last_layer}
        expected = {id(p) for n, p in member.student.named_parameters()
                    if n.startswith(("dino.last_layer.", "thead.last_layer."))}
        assert frozen == expected and expected


def test_a_fixed_lr_module_keeps_its_base_lr_while_the_rest_follows_the_schedule(tiny_cfg, tmp_path):
    """SimSiam's predictor with ``predictor_lr: fixed``: its groups hold lr x batch/256 at every step, the rest
    warms up and decays; with the default it is scheduled like the rest (one pair of groups)."""
    from sslkd.config import load_config
    from sslkd.engine.trainer import Trainer
    from sslkd.strategies.base import StepInfo

    overrides = ["members.cnn.backbone_args={widths: [4, 8, 8]}", "strategy={hidden_dim: 16, out_dim: 16, "
                 "pred_hidden_dim: 8, predictor_lr: fixed}", "data.train_subset=32", "data.num_workers=0",
                 "train.batch_size=16", "members.cnn.optimizer.warmup_epochs=1", "members.cnn.optimizer.min_lr=0", "train.epochs=4"]
    trainer = Trainer(load_config("simsiam", None, overrides), tmp_path / "fixed")
    part = trainer.optimizers["cnn"]
    predictor = {id(p) for p in trainer.strategy.members["cnn"].student["predictor"].parameters()}
    base = part.cfg.lr * 16 / 256
    for step in (0, 3, 7):
        trainer.set_schedules(StepInfo(step=step, epoch=step // 2, steps_per_epoch=2, total_steps=8))
        for group in part.optimizer.param_groups:
            ids = {id(p) for p in group["params"]}
            assert ids <= predictor if group["fixed_lr"] else not ids & predictor
            if group["fixed_lr"]:
                assert group["lr"] == pytest.approx(base)
            else:
                assert group["lr"] < base
    assert sum(len(g["params"]) for g in part.optimizer.param_groups if g["fixed_lr"]) == len(predictor)
    scheduled = Trainer(load_config("simsiam", None, [o.replace("predictor_lr: fixed", "predictor_lr: scheduled")
                                                      for o in overrides]), tmp_path / "scheduled")
    assert len(scheduled.optimizers["cnn"].optimizer.param_groups) == 2
    unscaled = Trainer(load_config("simsiam", None, [*overrides, "members.cnn.optimizer.lr_scaling=none"]),
                       tmp_path / "unscaled")
    unscaled.set_schedules(StepInfo(step=0, epoch=0, steps_per_epoch=2, total_steps=8))
    fixed = [g["lr"] for g in unscaled.optimizers["cnn"].optimizer.param_groups if g["fixed_lr"]]
    assert fixed and all(lr == pytest.approx(part.cfg.lr) for lr in fixed)  # the lr as given, not x 16/256
