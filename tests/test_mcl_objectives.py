"""MCL as a coupling over its members' objectives (issue 15): ``form`` picks the objective in one place, the
objectives keep the checkpoint layout of the strategy before the split (old checkpoints load), refuse the options
that do not apply to them with the same messages, and memory-based mining and MoCo build their logits the same way."""

import pytest
import torch
from test_mcl import build

from sslkd.errors import UserError
from sslkd.losses.mcl import dictionary_contrastive_logits, memory_contrast
from sslkd.strategies.mcl import SupervisedObjective
from sslkd.strategies.mocov2 import MoCoV2Objective

MOCO = ["strategy.form=moco", "strategy.moco={queue_size: 16, momentum: 0.9}"]


def prefixes(strategy) -> set[str]:
    """Checkpoint keys outside the members' students, cut after the member name (``queues.small``)."""
    return {".".join(key.split(".")[:2]) for key in strategy.state_dict() if not key.startswith("members.")}


@pytest.mark.parametrize("extra, objective, layout", [
    ([], SupervisedObjective, set()),
    (["strategy.mining=memory"], SupervisedObjective, {"contrast.banks"}),
    (MOCO, MoCoV2Objective, {"key_encoders.small", "key_encoders.large", "queues.small", "queues.large"}),
])
def test_form_picks_the_objective_and_the_checkpoint_layout_stays(extra, objective, layout):
    strategy = build("mcl", extra)
    assert type(strategy.objective) is objective
    assert prefixes(strategy) == layout
    if objective is MoCoV2Objective:
        assert {"queues.small.keys", "queues.small.pointer"} <= set(strategy.state_dict())
        assert "key_encoders.small.module.embed.0.weight" in strategy.state_dict()
    assert list(strategy.members["small"].student) == ["backbone", "embed", *(["classifier"] if extra != MOCO else [])]


def test_a_state_dict_of_one_strategy_loads_into_another_of_its_form():
    for extra in (MOCO, ["strategy.mining=memory"]):
        saved = build("mcl", extra).state_dict()
        assert str(build("mcl", extra).load_state_dict(saved, strict=True)) == "<All keys matched successfully>"


@pytest.mark.parametrize("extra, message", [
    ([*MOCO, "strategy.mining=memory"], "strategy.form=moco mines its negatives from each member's MoCo queue: "
                                        "drop strategy.mining=memory"),
    ([*MOCO, "strategy.soft_anchor_column=keep"], "soft_anchor_column=keep applies to batch-based mining only"),
    ([*MOCO, "strategy.mining=memory", "strategy.soft_anchor_column=keep"], "soft_anchor_column=keep applies"),
    (["strategy.mining=memory", "strategy.soft_anchor_column=keep"], "soft_anchor_column=keep applies"),
])
def test_options_an_objective_does_not_take_are_refused(extra, message):
    with pytest.raises(UserError, match=message):
        build("mcl", extra)


def test_dictionary_logits_are_every_pair_against_the_second_members_samples():
    torch.manual_seed(0)
    anchors = {m: torch.randn(4, 3) for m in "abc"}
    positives = {m: torch.randn(4, 3) for m in "abc"}
    negatives = {m: torch.randn(5, 3) for m in "abc"}
    logits = dictionary_contrastive_logits(anchors, positives, negatives, 0.2)
    assert list(logits.own) == ["a", "b", "c"] and len(logits.cross) == 6
    for (a, b), rows in logits.cross.items():
        assert torch.equal(rows, memory_contrast(anchors[a], positives[b], negatives[b], 0.2)[0])
    assert torch.equal(logits.own["b"], memory_contrast(anchors["b"], positives["b"], negatives["b"], 0.2)[0])
    assert logits.positive_mask[:, 0].all() and not logits.positive_mask[:, 1:].any()
