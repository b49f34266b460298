"""MCL and L-MCL: every loss term against hand-computed values (Eq. 2, 3, 5, 7, 8, 9, 10, 19), what happens without
positives, the class-aware sampler's guarantee, memory-based mining and its banks through a checkpoint, the MoCo
form, gradients (soft labels, ensembles and keys detached; nothing crosses members where the paper says it must
not), the gate, end-to-end runs, the zoo configs and the compare tables."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from sslkd.cli import main
from sslkd.config import from_dict, load_config
from sslkd.data import DatasetInfo
from sslkd.data.datasets import TensorImageDataset
from sslkd.data.sampling import ClassAwareSampler, dataset_labels
from sslkd.engine.trainer import Trainer
from sslkd.errors import UserError
from sslkd.eval.linear import linear_of_checkpoint
from sslkd.losses.classification import ensemble_distillation, soft_kl
from sslkd.losses.mcl import (
    ContrastiveLogits,
    batch_contrast,
    contrastive_ce,
    icl_loss,
    mcl_loss,
    memory_contrast,
    soft_icl_loss,
    soft_vcl_loss,
    vcl_loss,
)
from sslkd.registry import STRATEGIES
from sslkd.report import compare_table, load_paper_numbers
from sslkd.strategies.base import StepInfo
from sslkd.strategies.lmcl import LMCLOptions, gate_weights
from sslkd.strategies.mcl import MCLOptions

ZOO = Path(__file__).resolve().parents[1] / "zoo_configs"
INFO = DatasetInfo("fake", 4, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("a", "b", "c", "d"))
TINY = "{widths: [4, 8, 8]}"
STEP = StepInfo(0, 0, 1, 1)


def log_softmax(row):
    top = math.log(sum(math.exp(v) for v in row))
    return [v - top for v in row]


def softmax(row):
    return [math.exp(v) for v in log_softmax(row)]


def kl(q, p):
    return sum(a * math.log(a / b) for a, b in zip(q, p))


def soft_kl_by_hand(target_rows, rows, t):
    return sum(kl(softmax([v / t for v in q]), softmax([v / t for v in p])) for q, p in zip(target_rows, rows)) \
        / len(rows) * t * t


# ------------------------------------------------------------------------------------------------ loss terms
def test_batch_contrast_drops_the_anchor_and_marks_same_label_positives():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    logits, mask = batch_contrast(v, v, torch.tensor([0, 1, 0]), torch.tensor([0, 1, 0]), torch.arange(3), 0.5)
    assert torch.allclose(logits, torch.tensor([[0.0, 1.2], [0.0, 1.6], [1.2, 1.6]]))
    assert mask.tolist() == [[False, True], [False, False], [True, False]]


def test_memory_contrast_puts_the_positive_first():
    anchors = torch.tensor([[1.0, 0.0]])
    logits, mask = memory_contrast(anchors, torch.tensor([[0.6, 0.8]]), torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]]), 0.1)
    assert torch.allclose(logits, torch.tensor([[6.0, 0.0, -10.0]]))
    assert mask.tolist() == [[True, False, False]]
    shared, _ = memory_contrast(anchors, torch.tensor([[0.6, 0.8]]), torch.tensor([[0.0, 1.0], [-1.0, 0.0]]), 0.1)
    assert torch.allclose(shared, logits)


def test_contrastive_ce_is_eq2_and_averages_several_positives():
    row = [1.0, 2.0, 3.0]
    one = contrastive_ce(torch.tensor([row]), torch.tensor([[False, True, False]]))
    assert math.isclose(float(one), -log_softmax(row)[1], rel_tol=1e-6)
    two = contrastive_ce(torch.tensor([row]), torch.tensor([[True, True, False]]))
    assert math.isclose(float(two), -(log_softmax(row)[0] + log_softmax(row)[1]) / 2, rel_tol=1e-6)


def test_anchor_without_positive_is_left_out_and_never_nan():
    logits = torch.tensor([[1.0, 2.0], [0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[True, False], [False, False]])
    loss = contrastive_ce(logits, mask)
    assert math.isclose(float(loss.detach()), -log_softmax([1.0, 2.0])[0], rel_tol=1e-6)
    none = contrastive_ce(logits, torch.zeros(2, 2, dtype=torch.bool))
    assert float(none.detach()) == 0.0 and torch.isfinite(none)
    none.backward()
    assert torch.isfinite(logits.grad).all()


def two_member_logits():
    own = {"a": torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]]), "b": torch.tensor([[1.5, -0.5, 0.2], [0.4, 0.9, -0.2]])}
    cross = {("a", "b"): torch.tensor([[1.0, 0.0, 0.5], [0.2, 1.4, 0.1]]),
             ("b", "a"): torch.tensor([[0.3, 0.3, -0.6], [1.1, 0.2, 0.0]])}
    mask = torch.tensor([[True, False, False], [False, True, False]])
    return ContrastiveLogits(own, cross, mask)


def test_vcl_icl_soft_terms_and_eq10_by_hand():
    logits = two_member_logits()
    rows = lambda t: t.tolist()
    ce = lambda t: -(log_softmax(rows(t)[0])[0] + log_softmax(rows(t)[1])[1]) / 2
    vcl = ce(logits.own["a"]) + ce(logits.own["b"])
    icl = ce(logits.cross[("a", "b")]) + ce(logits.cross[("b", "a")])
    soft_vcl = (soft_kl_by_hand(rows(logits.own["b"]), rows(logits.own["a"]), 3.0)
                + soft_kl_by_hand(rows(logits.own["a"]), rows(logits.own["b"]), 3.0))
    soft_icl = (soft_kl_by_hand(rows(logits.cross[("b", "a")]), rows(logits.cross[("a", "b")]), 3.0)
                + soft_kl_by_hand(rows(logits.cross[("a", "b")]), rows(logits.cross[("b", "a")]), 3.0))
    assert math.isclose(float(vcl_loss(logits)), vcl, rel_tol=1e-5)
    assert math.isclose(float(icl_loss(logits)), icl, rel_tol=1e-5)
    assert math.isclose(float(soft_vcl_loss(logits, 3.0)), soft_vcl, rel_tol=1e-5)
    assert math.isclose(float(soft_icl_loss(logits, 3.0)), soft_icl, rel_tol=1e-5)
    total = mcl_loss(logits, alpha=0.1, beta=1.0, temperature=3.0)
    assert math.isclose(float(total["loss"]), 0.1 * (vcl + icl) + soft_vcl + soft_icl, rel_tol=1e-5)
    only_icl = mcl_loss(logits, alpha=0.5, terms=("icl",))
    assert set(only_icl) == {"icl", "loss"} and math.isclose(float(only_icl["loss"]), 0.5 * icl, rel_tol=1e-5)


def test_soft_labels_are_detached():
    target = torch.tensor([[1.0, 0.0, 2.0]], requires_grad=True)
    student = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
    soft_kl(target, student, 3.0).backward()
    assert target.grad is None and student.grad.abs().sum() > 0
    own = {m: torch.randn(2, 3, requires_grad=True) for m in "ab"}
    logits = ContrastiveLogits(own, {}, torch.ones(2, 3, dtype=torch.bool))
    grad_a = torch.autograd.grad(soft_kl(own["b"], own["a"], 3.0), own["a"])[0]
    total_grad_a = torch.autograd.grad(soft_vcl_loss(logits, 3.0), own["a"])[0]
    assert torch.allclose(grad_a, total_grad_a)  # KL(p_a || p_b) sends nothing back to p_a


def test_eq19_ensemble_distillation_by_hand_and_detached():
    final = {"a": torch.tensor([[1.0, 0.0]], requires_grad=True), "b": torch.tensor([[0.0, 2.0]], requires_grad=True)}
    ensemble = {"a": torch.tensor([[0.5, 0.5]], requires_grad=True), "b": torch.tensor([[2.0, -1.0]], requires_grad=True)}
    loss = ensemble_distillation(final, ensemble, temperature=3.0)
    expected = soft_kl_by_hand([[2.0, -1.0]], [[1.0, 0.0]], 3.0) + soft_kl_by_hand([[0.5, 0.5]], [[0.0, 2.0]], 3.0)
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-5)
    loss.backward()
    assert ensemble["a"].grad is None and ensemble["b"].grad is None
    with_own = ensemble_distillation(final, ensemble, 3.0, include_own=True)
    assert float(with_own.detach()) > float(loss.detach())


# ------------------------------------------------------------------------------------------------ sampler
def test_class_aware_batches_are_pairs_of_distinct_classes():
    labels = torch.arange(200) % 10
    sampler = ClassAwareSampler(labels, batch_size=8, seed=3)
    sampler.set_epoch(1)
    order = [i for i, _ in sampler]
    assert len(order) == len(sampler) == 200 // 8 * 8
    for start in range(0, len(order), 8):
        batch = labels[order[start:start + 8]].tolist()
        assert all(batch.count(c) == 2 for c in set(batch)) and len(set(batch)) == 4
        assert len(set(order[start:start + 8])) == 8
    assert order == [i for i, _ in sampler]  # deterministic given (seed, epoch)
    sampler.set_epoch(2)
    assert order != [i for i, _ in sampler]
    assert len(set(order)) > 150  # an epoch visits (almost) every image


def test_class_aware_batches_with_few_classes_still_give_every_anchor_a_positive():
    labels = torch.arange(90) % 3
    sampler = ClassAwareSampler(labels, batch_size=16, seed=0)
    order = [i for i, _ in sampler]
    for start in range(0, len(order), 16):
        batch = labels[order[start:start + 16]].tolist()
        assert all(batch.count(c) >= 2 for c in batch)


def test_class_aware_sampler_shards_batches_and_reads_subset_labels():
    images = torch.zeros(40, 3, 32, 32, dtype=torch.uint8)
    dataset = TensorImageDataset(images, torch.arange(40) % 4, INFO)
    subset = Subset(dataset, list(range(0, 40, 2)))
    assert dataset_labels(subset).tolist() == (torch.arange(0, 40, 2) % 4).tolist()
    shards = [list(ClassAwareSampler(torch.arange(40) % 4, 4, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 20
    firsts = [[i for i, _ in shard] for shard in shards]
    batches = [{tuple(s[k:k + 4]) for k in range(0, 20, 4)} for s in firsts]
    assert not batches[0] & batches[1]
    with pytest.raises(ValueError):
        ClassAwareSampler(torch.arange(8) % 2, batch_size=3, seed=0)


# ------------------------------------------------------------------------------------------------ strategies
def build(method, extra=(), third=False):
    torch.manual_seed(0)
    overrides = [f"members.small.backbone_args={TINY}", f"members.large.backbone_args={TINY}"]
    overrides += ["strategy.embed_dim=8"] if method in ("mcl", "lmcl") else []
    if third:
        overrides.append("members.third={backbone: cifar_resnet20, backbone_args: " + TINY + "}")
    cfg = load_config(method, None, overrides + list(extra))
    return STRATEGIES.get(method)(cfg, INFO).train()


def batch(n=8):
    torch.manual_seed(1)
    return [torch.randn(n, 3, 32, 32)], torch.arange(n) % 4, torch.arange(n)


def grads_of(module):
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def test_mcl_batch_mining_trains_every_member_through_icl():
    strategy = build("mcl", ["strategy.terms=[icl]"])
    views, labels, indices = batch()
    losses = strategy(views, labels, indices, STEP)
    assert set(losses) >= {"small/ce", "large/ce", "icl", "mcl", "loss"} and "vcl" not in losses
    losses["icl"].backward()  # L_{a->b} contrasts f_a's anchors with f_b's embeddings: both learn from it
    assert grads_of(strategy.members["small"].student["embed"]) and grads_of(strategy.members["large"].student["embed"])


def test_mcl_three_members_count_every_ordered_pair():
    strategy = build("mcl", third=True)
    views, labels, indices = batch()
    captured = {}
    original = strategy.contrast.logits
    strategy.contrast.logits = lambda *a: captured.setdefault("logits", original(*a))
    strategy(views, labels, indices, STEP)
    assert len(captured["logits"].own) == 3 and len(captured["logits"].cross) == 6


def test_mcl_memory_mining_writes_banks_that_survive_a_checkpoint(tmp_path):
    strategy = build("mcl", ["strategy.mining=memory", "strategy.memory={momentum: 0.5, negatives: 5}"])
    images = torch.randint(0, 255, (12, 3, 32, 32), dtype=torch.uint8)
    dataset = TensorImageDataset(images, torch.arange(12) % 4, INFO)
    subset = Subset(dataset, list(range(10)))
    sampler = strategy.train_sampler(subset, 4, 0, 0, 1)
    assert len(strategy.contrast.banks["small"]) == 12 and len(sampler) == 10
    before = strategy.contrast.banks["small"].features.clone()
    views, labels, indices = [torch.randn(4, 3, 32, 32)], torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3])
    losses = strategy(views, labels, indices, STEP)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()  # banks were read before they were written: autograd is untouched
    assert torch.equal(strategy.contrast.banks["small"].features, before)  # written once the step is accepted
    strategy.apply_deferred()
    after = strategy.contrast.banks["small"].features
    assert not torch.equal(after[:4], before[:4]) and torch.equal(after[4:], before[4:])
    from sslkd.core.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "last.pt", {"method": "mcl", "strategy": strategy.state_dict()})
    fresh = build("mcl", ["strategy.mining=memory", "strategy.memory={momentum: 0.5, negatives: 5}"])
    fresh.load_state_dict(load_checkpoint(tmp_path / "last.pt", "mcl")["strategy"])
    assert torch.equal(fresh.contrast.banks["small"].features, after)


def test_memory_mining_without_training_set_is_a_clear_error():
    strategy = build("mcl", ["strategy.mining=memory"])
    views, labels, indices = batch()
    with pytest.raises(UserError, match="memory-based mining"):
        strategy(views, labels, indices, STEP)


def test_mcl_moco_form_uses_no_labels_queues_and_detached_keys():
    strategy = build("mcl", ["strategy.form=moco", "strategy.moco={queue_size: 16, momentum: 0.9}", "strategy.tau=0.07",
                             "strategy.embed_hidden_dim=null"])
    assert not strategy.has_classifiers and "classifier" not in strategy.members["small"].student
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    losses = strategy(views, torch.full((4,), -7), torch.arange(4), STEP)  # labels are never read
    assert set(losses) == {"vcl", "icl", "soft_vcl", "soft_icl", "loss"}
    assert int(strategy.queues["small"].pointer) == 0  # keys enter the queue once the step is accepted
    strategy.apply_deferred()
    assert int(strategy.queues["small"].pointer) == 4
    losses["loss"].backward()
    for name in ("small", "large"):
        assert all(p.grad is None for p in strategy.key_encoders[name].parameters())
    key_before = next(strategy.key_encoders["small"].parameters()).clone()
    with torch.no_grad():
        for p in strategy.members["small"].student.parameters():
            p.add_(1.0)
    strategy.after_step(STEP)
    assert torch.allclose(next(strategy.key_encoders["small"].parameters()), key_before * 0.9 + (key_before + 1) * 0.1)
    assert strategy.eval_backbones()["small"] is strategy.members["small"].backbone


def test_dml_kl_never_reaches_the_peer():
    strategy = build("dml")
    views, labels, indices = batch()
    losses = strategy(views, labels, indices, STEP)
    logits = strategy.logits(views[0])
    expected = F.cross_entropy(logits["small"], labels) + soft_kl(logits["large"], logits["small"], 1.0)
    assert torch.allclose(losses["small/loss"], expected, atol=1e-5)
    losses["small/kl"].backward()
    assert grads_of(strategy.members["small"].student) and not grads_of(strategy.members["large"].student)


def test_lmcl_branches_gate_and_detached_ensembles():
    strategy = build("lmcl")
    member = strategy.members["small"].student
    assert len(member["branches"]) == 2 and strategy.num_stages == 3
    views, labels, indices = batch()
    out = strategy.member_outputs(member, views[0])
    assert torch.allclose(out["weights"].sum(dim=1), torch.ones(8))
    features = [torch.randn(3, 5) for _ in range(3)]
    gate = torch.nn.Sequential(torch.nn.Linear(15, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    assert torch.allclose(gate_weights(gate, features).sum(dim=1), torch.ones(3))
    expected = (out["weights"][:, :, None] * torch.stack(out["logits"], 1)).sum(1)
    assert torch.allclose(out["ensemble"], expected)
    # the kept network is the plain backbone: its last layer feature is the backbone's pooled output
    strategy.eval()
    assert torch.allclose(strategy.member_outputs(member, views[0])["logits"][-1],
                          member["classifier"](member["backbone"](views[0])), atol=1e-5)
    strategy.train()
    losses = strategy(views, labels, indices, STEP)
    assert {"small/task", "small/task_gate", "logit", "mcl/stage1", "mcl/stage3", "layer_mcl"} <= set(losses)
    losses["logit"].backward()  # Eq. (19): teachers are detached ensembles, so no gate or branch classifier learns
    for name in ("small", "large"):
        student = strategy.members[name].student
        assert not grads_of(student["gate"]) and not grads_of(student["aux_classifiers"])
        assert grads_of(student["classifier"])


def test_lmcl_options_select_stages_and_switch_terms_off():
    strategy = build("lmcl", ["strategy.contrast_stages=[2, 3]", "strategy.task_gate=false",
                              "strategy.logit_distillation=false"])
    views, labels, indices = batch()
    losses = strategy(views, labels, indices, STEP)
    assert "mcl/stage1" not in losses and "mcl/stage2" in losses and "logit" not in losses
    assert "small/task_gate" not in losses
    out = strategy.member_outputs(strategy.members["small"].student, views[0])
    assert torch.allclose(out["weights"], torch.full((8, 3), 1 / 3))
    with pytest.raises(UserError, match="contrast_stages"):
        build("lmcl", ["strategy.contrast_stages=[4]"])
    with pytest.raises(UserError, match="different numbers of stages"):
        build("lmcl", ["members.large.backbone=resnet18", "members.large.backbone_args={}"])


def test_unknown_term_and_one_member_are_user_errors():
    with pytest.raises(UserError, match="terms"):
        build("mcl", ["strategy.terms=[vcl, hcl]"])
    cfg = load_config("mcl", None, [f"members.small.backbone_args={TINY}"])
    del cfg.members["large"]
    with pytest.raises(UserError, match="at least 2 members"):
        STRATEGIES.get("mcl")(cfg, INFO)


# ------------------------------------------------------------------------------------------------ end to end
def train(method, out, overrides):
    cfg = load_config(method, None, overrides)
    Trainer(cfg, out).fit()


def tiny_run(method, extra=()):
    return ["train.epochs=1", "train.batch_size=8", "data.train_subset=48", "data.num_workers=0", "eval.knn_k=[5]",
            "train.log_every=1", f"members.small.backbone_args={TINY}", f"members.large.backbone_args={TINY}",
            *(["strategy.embed_dim=8"] if method in ("mcl", "lmcl") else []), *extra]


@pytest.mark.parametrize("method", ["mcl", "lmcl"])
def test_train_end_to_end_writes_test_top1(tmp_path, method, capsys):
    out = tmp_path / method
    train(method, out, tiny_run(method))
    summary = json.loads((out / "summary.json").read_text())
    for member in summary["members"].values():
        assert 0.0 <= member["test_top1"] <= 100.0 and member["knn_top1"] is not None
    assert 0.0 <= summary["ensemble_test_top1"] <= 100.0
    capsys.readouterr()
    assert main(["eval", "classify", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["members"] == {name: m["test_top1"] for name, m in summary["members"].items()}
    assert result["ensemble_top1"] == summary["ensemble_test_top1"]


def test_self_supervised_mcl_trains_and_probes(tmp_path, capsys):
    out = tmp_path / "ssl"
    extra = ["strategy.form=moco", "strategy.moco={queue_size: 32, momentum: 0.99}", "data.augment.global_size=32"]
    train("mcl", out, tiny_run("mcl", extra))
    summary = json.loads((out / "summary.json").read_text())
    assert "ensemble_test_top1" not in summary and summary["members"]["small"]["knn_top1"] is not None
    probe = linear_of_checkpoint(out / "checkpoints" / "last.pt", member="small", epochs=1)
    assert 0.0 <= probe["small"]["linear_top1"] <= 100.0
    with pytest.raises(UserError, match="no classifiers"):
        from sslkd.eval.classify import classify_checkpoint

        classify_checkpoint(out / "checkpoints" / "last.pt")


# ------------------------------------------------------------------------------------------------ configs and tables
MCL_ZOO = sorted(p.relative_to(ZOO).as_posix() for d in ("mcl", "lmcl", "dml", "supervised") for p in (ZOO / d).glob("*.yaml"))


@pytest.mark.parametrize("path", MCL_ZOO)
def test_zoo_configs_validate_their_strategy_options(path):
    cfg = load_config(None, str(ZOO / path), [])
    options = {"mcl": MCLOptions, "lmcl": LMCLOptions}.get(cfg.method)
    if options is not None:
        from_dict(options, cfg.strategy, "strategy")
    assert STRATEGIES.get(cfg.method)


def test_paper_numbers_transcribed():
    table1 = load_paper_numbers("mcl_table1")
    assert len(table1) == 9 * 8
    assert float(table1[(table1.network == "WRN-40-2") & (table1.method == "L-MCL")].top1.iloc[0]) == 80.73
    table2 = load_paper_numbers("mcl_table2")
    hit = table2[(table2.net1 == "ResNet-32") & (table2.net2 == "ResNet-56") & (table2.method == "L-MCL")]
    assert hit.set_index("member").top1.to_dict() == {"net1": 75.02, "net2": 77.03}
    table6 = load_paper_numbers("mcl_table6")
    assert float(table6[(table6.icl == 1) & (table6.vcl == 0) & (table6.network == "ResNet-110")].top1.iloc[0]) == 78.15


def fake_run(root: Path, name: str, method: str, backbones: list[str], top1: list[float], terms=None, papers=None):
    run = root / name
    run.mkdir(parents=True)
    members = {f"net{i + 1}": {"backbone": b, "paper_name": (papers or [None] * 3)[i], "knn_top1": 50.0,
                               "linear_top1": None, "test_top1": t}
               for i, (b, t) in enumerate(zip(backbones, top1))}
    summary = {"method": method, "dataset": "cifar10_subset", "seed": 0, "epochs": 5, "wall_time_s": 1.0,
               "members": members, "protocol": {}}
    (run / "summary.json").write_text(json.dumps(summary))
    config = {"members": {k: {"backbone": v["backbone"]} for k, v in members.items()},
              "strategy": {"terms": terms} if terms else {}}
    import yaml

    (run / "config.yaml").write_text(yaml.safe_dump(config))


def test_compare_renders_mcl_tables(tmp_path):
    papers = ["ResNet-32", "ResNet-56"]
    fake_run(tmp_path, "sup", "supervised", ["cifar_resnet20", "cifar_resnet32"], [60.0, 62.0], papers=papers)
    fake_run(tmp_path, "dml", "dml", ["cifar_resnet20", "cifar_resnet32"], [61.0, 63.0], papers=papers)
    fake_run(tmp_path, "lmcl", "lmcl", ["cifar_resnet20", "cifar_resnet32"], [64.0, 66.0], papers=papers)
    table = compare_table([tmp_path], "auto")
    assert list(table.columns) == ["Pair", "Net", "Source", "Baseline", "DML", "MCL", "L-MCL"]
    ours = table.iloc[0]
    assert ours["Baseline"] == "60.0 (1)" and ours["DML"] == "61.0 (1)" and ours["L-MCL"] == "64.0 (1)"
    assert ours["MCL"] == "n/a"
    paper = table[table.Source.str.startswith("paper")]
    assert paper.iloc[0]["L-MCL"] == "75.02 +- 0.26" and paper.iloc[1]["DML"] == "75.64 +- 0.32"

    same = tmp_path / "same"
    fake_run(same, "sup", "supervised", ["wrn_16_2"], [70.0])
    fake_run(same, "mcl", "mcl", ["wrn_16_2", "wrn_16_2"], [72.0, 74.0], papers=["WRN-16-2", "WRN-16-2"])
    for seed, terms in enumerate((["icl"], ["vcl", "soft_vcl", "icl", "soft_icl"])):
        fake_run(same, f"abl{seed}", "lmcl", ["wrn_16_2", "wrn_16_2"], [71.0 + seed, 71.0 + seed], terms=terms,
                 papers=["WRN-40-2", "WRN-40-2"])
    table1 = compare_table([same], "mcl_table1")
    first = table1.iloc[0]
    assert first["Baseline"] == "70.0 (1)" and first["MCL"] == "73.0 +- 1.4 (2)"
    assert (table1.Source.str.contains("MCL Table 1")).any()
    table6 = compare_table([same], "mcl_table6")
    assert table6.iloc[0][["VCL", "ICL"]].tolist() == ["-", "-"]
    icl_only = table6[(table6.ICL == "x") & (table6.VCL == "-") & ~table6.Source.str.startswith("paper")]
    assert icl_only.iloc[0]["wrn_16_2 (as WRN-40-2)"] == "71.0 +- 0.0 (2)"
    paper_icl = table6[(table6.ICL == "x") & (table6.VCL == "-") & table6.Source.str.startswith("paper")]
    assert paper_icl.iloc[0]["wrn_16_2 (as WRN-40-2)"] == "79.08 +- 0.23"


def test_class_aware_sampler_resumes_mid_epoch():
    sampler = ClassAwareSampler(torch.arange(60) % 5, batch_size=6, seed=2)
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler.set_epoch(3, start=12)
    assert list(sampler) == whole[12:] and len(sampler) == len(whole)
