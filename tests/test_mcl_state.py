"""MCL state through the trainer: a step skipped for a non-finite value (a NaN in a key or an embedding, not only in
the loss) leaves the MoCo queues and the memory banks untouched; memory-bank mining draws random samples, so a run
stopped mid-way resumes to exactly the uninterrupted run only because the RNG state is restored."""

import pytest
import torch
from conftest import fit_until_stopped_inside
from test_mcl import TINY

import sslkd.engine.trainer as trainer_module
from sslkd.config import load_config
from sslkd.core.rundir import RunDir
from sslkd.engine.trainer import Trainer

MEMORY = ["strategy.mining=memory", "strategy.memory={momentum: 0.5, negatives: 6}"]


def tiny_mcl(extra=(), epochs=1):
    return load_config("mcl", None, [
        f"train.epochs={epochs}", "train.batch_size=8", "data.train_subset=24", "data.num_workers=0", "eval.knn_k=[5]",
        "train.log_every=1", "eval.every_epochs=0", f"members.small.backbone_args={TINY}",
        f"members.large.backbone_args={TINY}", "strategy.embed_dim=8", *extra])


def state_of(strategy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in strategy.state_dict().items() if "queues" in k or "banks" in k}


def poison_at_step(strategy, step_to_poison: int, output: str, member: str) -> list[dict[str, torch.Tensor]]:
    """Make ``outputs[output][member]`` NaN at one step; return the queue/bank state seen at the start of each step."""
    seen, forward, network_outputs = [], strategy.forward, strategy.network_outputs
    poisoned = {"now": False}

    def outputs_with_nan(views):
        outputs = network_outputs(views)
        if poisoned["now"]:
            outputs[output][member] = outputs[output][member] * float("nan")
        return outputs

    def recording_forward(views, labels, indices, step):
        seen.append(state_of(strategy))
        poisoned["now"] = step.step == step_to_poison
        return forward(views, labels, indices, step)

    strategy.network_outputs = outputs_with_nan
    strategy.forward = recording_forward
    return seen


@pytest.mark.parametrize("form, output, member", [
    (["strategy.form=moco", "strategy.moco={queue_size: 16, momentum: 0.9}", "data.augment.global_size=32"],
     "keys", "large"),
    (MEMORY, "embeddings", "small"),
])
def test_a_skipped_step_leaves_queues_and_banks_untouched(tmp_path, form, output, member):
    trainer = Trainer(tiny_mcl([*form, "train.on_nonfinite=skip"], epochs=2), tmp_path / "run")
    seen = poison_at_step(trainer.strategy, 1, output, member)
    trainer.fit(stop_at_epoch=1)  # the state after the first epoch is what matters here: no final evaluation
    assert trainer.skipped_steps == 1 and len(seen) == 3
    assert any(not torch.equal(seen[0][k], seen[1][k]) for k in seen[0])  # the accepted step 0 wrote
    for key in seen[1]:
        assert torch.equal(seen[1][key], seen[2][key]), f"skipped step 1 changed {key}"
        assert torch.isfinite(seen[2][key]).all()


def stopped_and_resumed(tmp_path, name):
    """Stopped inside step 4 (epoch 1 of 3), resumed from the checkpoint of step 3, stopped after epoch 2 (before
    the final evaluation, which this test does not need)."""
    extra = [*MEMORY, "train.checkpoint_every_steps=1"]
    fit_until_stopped_inside(Trainer(tiny_mcl(extra, epochs=3), tmp_path / name), 4)
    torch.manual_seed(12345)  # whatever the process did meanwhile
    resumed = Trainer(tiny_mcl(extra, epochs=3), tmp_path / name, resume=True)
    assert resumed.step == 4
    resumed.fit(stop_at_epoch=2)
    return torch.load(tmp_path / name / RunDir.CHECKPOINT, weights_only=True)["strategy"]


def test_memory_mining_resumes_exactly_because_the_rng_state_is_restored(tmp_path, monkeypatch):
    straight_run = Trainer(tiny_mcl([*MEMORY, "train.checkpoint_every_steps=1"], epochs=3), tmp_path / "straight")
    straight_run.fit(stop_at_epoch=2)
    straight = torch.load(tmp_path / "straight" / RunDir.CHECKPOINT, weights_only=True)["strategy"]
    resumed = stopped_and_resumed(tmp_path, "resumed")
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    monkeypatch.setattr(trainer_module, "set_rng_state", lambda state: None)
    without_rng = stopped_and_resumed(tmp_path, "without_rng")
    assert any(not torch.equal(value, without_rng[key]) for key, value in straight.items()), \
        "mining draws no random samples after the resume point: this test would not see a lost RNG state"
