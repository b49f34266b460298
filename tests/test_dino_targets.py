"""tools/dino_targets.py: DINO's collapse monitors (Sec. 5.3) read off the loss terms of dino and mokd runs."""

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sslkd.errors import UserError
from conftest import AFTER_WARM_UP, FAKE_INFO, multicrop_views
from sslkd.registry import STRATEGIES

TOOL = Path(__file__).resolve().parents[1] / "tools" / "dino_targets.py"
spec = importlib.util.spec_from_file_location("dino_targets", TOOL)
dino_targets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dino_targets)

INFO = FAKE_INFO
views = multicrop_views


@pytest.mark.parametrize("method, heads", [("dino", {"dino"}), ("mokd", {"dino", "thead", "search"})])
def test_every_targeted_head_is_measured_and_ce_splits_into_entropy_and_kl(tiny_cfg, method, heads):
    torch.manual_seed(0)
    strategy = STRATEGIES.get(method)(tiny_cfg(method), INFO).train()
    measured = dino_targets.monitors(strategy, views())
    assert {head for _, head in measured} == heads
    assert {member for member, _ in measured} == set(strategy.members)
    for values in measured.values():
        assert values["ln K"] == pytest.approx(math.log(32))
        assert values["CE"] == pytest.approx(values["H(target)"] + values["KL"])
        assert values["KL"] >= -1e-5
        assert values["H(target)"] <= values["H(mean target)"] + 1e-5 <= values["ln K"] + 2e-5


def test_the_dino_term_is_the_training_loss(tiny_cfg):
    torch.manual_seed(0)
    strategy = STRATEGIES.get("dino")(tiny_cfg("dino"), INFO).train()
    batch = views()
    with torch.random.fork_rng():
        measured = dino_targets.monitors(strategy, batch)
    with torch.no_grad():
        loss = strategy.losses(strategy.network_outputs(batch), None, None, AFTER_WARM_UP)
    (member,) = strategy.members
    assert measured[member, "dino"]["CE"] == pytest.approx(float(loss[f"{member}/loss"]), rel=1e-5)


def test_other_methods_are_refused_with_one_line():
    with pytest.raises(UserError, match="dino and mokd runs, and this one is 'simclr'"):
        dino_targets.monitors(SimpleNamespace(name="simclr"), views())
