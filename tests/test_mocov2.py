"""MoCo v2 (``mocov2``): its symmetric loss against MoCo Eq. (1) computed by hand, a key encoder that gets no gradient
and follows the EMA, queues written only by accepted steps, and a run that resumes to the uninterrupted run's state."""

import json
import math

import pytest
import torch
from conftest import fit_until_stopped_inside

from sslkd.cli import main
from sslkd.config import load_config
from sslkd.core.rundir import RunDir
from sslkd.core.schedules import ema_momentum
from sslkd.data import DatasetInfo
from sslkd.engine.trainer import Trainer
from sslkd.registry import STRATEGIES
from sslkd.strategies.base import StepInfo
from sslkd.strategies.objectives import PairOutputs

INFO = DatasetInfo("fake", 10, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(str(i) for i in range(10)))
TINY = ["train.epochs=1", "train.batch_size=8", "train.log_every=1", "data.train_subset=24", "data.num_workers=0",
        "eval.knn_k=[5]", "members.cnn.backbone_args={widths: [4, 8, 8]}", "strategy.proj_hidden_dim=16",
        "strategy.out_dim=8", "strategy.queue_size=12"]


def tiny_strategy(extra=()):
    torch.manual_seed(0)
    return STRATEGIES.get("mocov2")(load_config("mocov2", None, [*TINY, *extra]), INFO)


def queue_state(strategy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in strategy.state_dict().items() if k.startswith("queues.")}


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def infonce_by_hand(q, k, negatives, tau):
    """-log exp(q.k / tau) / (exp(q.k / tau) + sum_n exp(q.n / tau)) (MoCo Eq. 1), averaged over the rows."""
    rows = []
    for qi, ki in zip(q.tolist(), k.tolist()):
        positive = math.exp(dot(qi, ki) / tau)
        rows.append(-math.log(positive / (positive + sum(math.exp(dot(qi, n) / tau) for n in negatives.tolist()))))
    return sum(rows) / len(rows)


def test_loss_is_the_symmetric_moco_infonce_over_each_views_queue_and_defers_the_enqueue():
    strategy = tiny_strategy(["strategy.out_dim=2", "strategy.queue_size=3", "strategy.temperature=0.5"])
    c = 1 / math.sqrt(2)
    q1, q2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[c, c], [c, -c]])
    k1, k2 = torch.tensor([[0.0, 1.0], [c, c]]), torch.tensor([[1.0, 0.0], [-c, c]])
    queue_1, queue_2 = strategy.queues["cnn"]
    queue_1.keys.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]]))
    queue_2.keys.copy_(torch.tensor([[c, -c], [0.0, 1.0], [-c, -c]]))
    before = queue_state(strategy)
    losses = strategy.losses({"cnn": PairOutputs(z=(q1, q2), k=(k1, k2))}, None, None, StepInfo(0, 0, 1, 1))
    expected = (infonce_by_hand(q1, k2, queue_2.keys, 0.5) + infonce_by_hand(q2, k1, queue_1.keys, 0.5)) / 2
    assert losses["cnn/loss"].item() == pytest.approx(expected, abs=1e-6)
    assert losses["loss"].item() == pytest.approx(expected, abs=1e-6)
    assert all(torch.equal(v, queue_state(strategy)[k]) for k, v in before.items())  # nothing written yet
    strategy.apply_deferred()
    for view, keys in ((0, k1), (1, k2)):
        prefix = f"queues.cnn.{view}."
        assert torch.equal(strategy.queues["cnn"][view].keys, torch.cat([keys, before[prefix + "keys"][2:]]))
        assert int(strategy.queues["cnn"][view].pointer) == 2


def test_key_encoder_is_the_members_ema_teacher_without_gradient():
    strategy = tiny_strategy().train()
    member = strategy.members["cnn"]
    assert set(member.teacher.module) == set(member.student) == {"backbone", "embed"}
    views = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    strategy(views, torch.zeros(8), torch.arange(8), StepInfo(0, 0, 10, 10))["loss"].backward()
    assert all(p.grad is None for p in member.teacher.parameters())
    assert all(p.grad is not None for p in member.student.parameters())
    with torch.no_grad():
        for p in member.student.parameters():
            p.add_(1.0)
    teacher_before = [p.clone() for p in member.teacher.parameters()]
    step = StepInfo(4, 0, 10, 10)
    strategy.after_step(step)
    m = ema_momentum(4, 10, 0.99, 0.999)  # the default config's momentum_teacher -> momentum_teacher_end
    assert (strategy.options.momentum_teacher, strategy.options.momentum_teacher_end) == (0.99, 0.999)
    for old, new, student in zip(teacher_before, member.teacher.parameters(), member.student.parameters()):
        torch.testing.assert_close(new, m * old + (1 - m) * student)


def test_a_skipped_step_leaves_the_queues_untouched(tmp_path):
    trainer = Trainer(load_config("mocov2", None, [*TINY, "train.epochs=2", "train.on_nonfinite=skip"]),
                      tmp_path / "run")
    strategy = trainer.strategy
    seen, forward, network_outputs = [], strategy.forward, strategy.network_outputs

    def queries_nan_at_step_one(views):
        outputs = network_outputs(views)
        if len(seen) == 2:
            outputs["cnn"].z = tuple(q * float("nan") for q in outputs["cnn"].z)
        return outputs

    def recording_forward(views, labels, indices, step):
        seen.append(queue_state(strategy))
        return forward(views, labels, indices, step)

    strategy.network_outputs = queries_nan_at_step_one
    strategy.forward = recording_forward
    trainer.fit(stop_at_epoch=1)
    assert trainer.skipped_steps == 1 and len(seen) == 3
    assert any(not torch.equal(seen[0][k], seen[1][k]) for k in seen[0])  # the accepted step 0 wrote both queues
    assert all(torch.equal(seen[1][k], seen[2][k]) for k in seen[1])


def test_a_resumed_run_ends_with_the_uninterrupted_runs_state(tmp_path):
    overrides = [*TINY, "train.epochs=3", "train.checkpoint_every_steps=1"]
    assert main(["train", "--method", "mocov2", "--output-dir", str(tmp_path / "straight"), *overrides]) == 0
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["method"] == "mocov2" and summary["protocol"]["encoder"] == "student"
    fit_until_stopped_inside(Trainer(load_config("mocov2", None, overrides), tmp_path / "resumed"), 4)
    torch.manual_seed(12345)  # whatever the process did meanwhile
    assert main(["train", "--resume", str(tmp_path / "resumed")]) == 0
    straight = torch.load(tmp_path / "straight" / RunDir.CHECKPOINT, weights_only=True)["strategy"]
    resumed = torch.load(tmp_path / "resumed" / RunDir.CHECKPOINT, weights_only=True)["strategy"]
    assert any(key.startswith("queues.cnn.1.") for key in straight)
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
