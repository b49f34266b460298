"""DoGo: the similarity-distribution KL against hand-computed values (Eq. 2-3, both reductions, sum and ensemble),
every loss term wired to the right peer, no gradient across peers, the views each peer sees, runs end to end, the
zoo configs, and the Table 1 layout of `sslkd compare`."""

import json
import math
from pathlib import Path

import pytest
import yaml
import torch

from sslkd.cli import main
from sslkd.config import load_config, strategy_options
from sslkd.data import DatasetInfo
from sslkd.errors import UserError
from sslkd.losses.contrastive import dogo_kd_loss, peer_ensemble, similarity_kl, similarity_logits
from sslkd.registry import STRATEGIES
from sslkd.report import compare_table, load_paper_numbers, load_runs
from sslkd.report.dogo import dogo_table1
from sslkd.strategies.dogo import DoGoOptions
from sslkd.strategies.objectives import PairOutputs
from sslkd.strategies.simclr import SimCLRObjective
from sslkd.strategies.simsiam import SimSiamObjective
from two_view_equations import assert_same_gradients, kl_eq2, nt_xent_eq1, similarity_distribution, simsiam_eq6

ZOO = Path(__file__).resolve().parents[1] / "zoo_configs"
INFO = DatasetInfo("fake", 10, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(str(i) for i in range(10)))
TINY_WIDTHS = "{widths: [4, 8, 8]}"
TINY_HEADS = ["strategy.simclr={hidden_dim: 16, out_dim: 8}",
              "strategy.simsiam={hidden_dim: 16, out_dim: 16, pred_hidden_dim: 8}"]


def tiny(members=("small", "large"), epochs: int = 1) -> list[str]:
    """A few steps of tiny CIFAR ResNets and heads on 64 digits."""
    overrides = [f"train.epochs={epochs}", "train.batch_size=16", "train.log_every=1", "data.train_subset=64",
                 "data.num_workers=0", "eval.knn_k=[5]", *TINY_HEADS]
    return overrides + [f"members.{m}.backbone_args={TINY_WIDTHS}" for m in members]


def build(extra=(), third=False):
    torch.manual_seed(0)
    members = ["third={backbone: cifar_resnet20, backbone_args: " + TINY_WIDTHS + "}"] if third else []
    cfg = load_config("dogo", None, tiny() + [f"members.{m}" for m in members] + list(extra))
    return STRATEGIES.get("dogo")(cfg, INFO).train()


def views(n=2, batch=4):
    torch.manual_seed(1)
    return [torch.randn(batch, 3, 32, 32) for _ in range(n)]


def softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def kl(q, p):
    return sum(a * math.log(a / b) for a, b in zip(q, p))


STUDENT = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [1.5, -0.5, 0.2]]
PEER = [[1.0, 0.0, 0.0], [0.2, 2.0, -1.0], [0.0, 0.0, 3.0]]
PEER2 = [[-1.0, 0.4, 0.1], [0.3, 0.3, 0.9], [2.0, 1.0, 0.0]]


def test_similarity_logits_are_cosines_over_tau():
    z_a, z_b = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    expected = torch.tensor([[0.8, 1.4 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]]) / 0.1
    torch.testing.assert_close(similarity_logits(z_a, z_b, 0.1), expected)


@pytest.mark.parametrize("reduction", ["row", "all"])
def test_kl_by_hand_both_reductions(reduction):
    """D_KL(Q || P), Q = row softmax of the peer, P of the student (DoGo Eq. 2): per row, or over all B^2 entries."""
    rows = [kl(softmax(q), softmax(p)) for q, p in zip(PEER, STUDENT)]
    expected = sum(rows) / 3 if reduction == "row" else sum(rows) / 9
    target = torch.softmax(torch.tensor(PEER), dim=-1)
    assert similarity_kl(target, torch.tensor(STUDENT), reduction).item() == pytest.approx(expected, rel=1e-5)
    got = dogo_kd_loss(torch.tensor(STUDENT), [torch.tensor(PEER)], "sum", reduction)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kl_detaches_the_peer_and_rejects_unknown_modes():
    student, peer = torch.tensor(STUDENT, requires_grad=True), torch.tensor(PEER, requires_grad=True)
    dogo_kd_loss(student, [peer], "ensemble").backward()
    assert peer.grad is None and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reduction"):
        similarity_kl(torch.softmax(peer, -1), student, "batch")
    with pytest.raises(ValueError, match="multi_peer"):
        dogo_kd_loss(student, [peer], "mean")


def test_three_peers_sum_and_ensemble_by_hand():
    """M = 3: the sum of the KL from each peer, or the KL from the peers' mean distribution (DoGo Sec. 3)."""
    peers = [torch.tensor(PEER), torch.tensor(PEER2)]
    summed = sum(kl(softmax(q), softmax(p)) for table in (PEER, PEER2) for q, p in zip(table, STUDENT)) / 3
    mean = [[(a + b) / 2 for a, b in zip(softmax(q1), softmax(q2))] for q1, q2 in zip(PEER, PEER2)]
    ensemble = sum(kl(q, softmax(p)) for q, p in zip(mean, STUDENT)) / 3
    assert dogo_kd_loss(torch.tensor(STUDENT), peers, "sum").item() == pytest.approx(summed, rel=1e-5)
    assert dogo_kd_loss(torch.tensor(STUDENT), peers, "ensemble").item() == pytest.approx(ensemble, rel=1e-5)
    torch.testing.assert_close(peer_ensemble(peers), torch.tensor(mean))
    assert ensemble < summed / 2  # KL is convex in its target: the ensemble's KL is below the peers' mean KL


def test_losses_are_the_paper_terms():
    """Each peer: its SimCLR loss exactly as the baseline computes it, plus lambda x KL from the detached peer."""
    strategy = build(["members.small.distill_weight=100", "strategy.kd_reduction=all"])
    v = views()
    losses = strategy(v, None, None, None)
    small, large = strategy.members["small"], strategy.members["large"]
    with torch.no_grad():
        outputs = {name: SimCLRObjective(strategy.options.simclr).embed(m.student, None, v[0], v[1]) for name, m in (("small", small), ("large", large))}
        ssl = SimCLRObjective(strategy.options.simclr).loss(outputs["small"])
        own = similarity_logits(*outputs["small"].z, 0.1)
        kd = dogo_kd_loss(own, [similarity_logits(*outputs["large"].z, 0.1)], "sum", "all")
    assert losses["small/ssl"].item() == pytest.approx(ssl.item(), rel=1e-5)
    assert losses["small/kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert losses["small/loss"].item() == pytest.approx(ssl.item() + 100 * kd.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(losses["small/loss"].item() + losses["large/loss"].item(), rel=1e-6)
    assert small.teacher is None and strategy.eval_backbones()["small"] is small.backbone


def student_grads(member):
    return {n: p.grad for n, p in member.student.named_parameters()}


@pytest.mark.parametrize("multi_peer", ["sum", "ensemble"])
def test_gradients_never_cross_peers(multi_peer):
    strategy = build([f"strategy.multi_peer={multi_peer}", "strategy.objectives={third: simsiam}"], third=True)
    losses = strategy(views(), None, None, None)
    losses["small/kd"].backward(retain_graph=True)
    for name in ("large", "third"):
        assert all(g is None for g in student_grads(strategy.members[name]).values()), name
    assert any(g is not None and g.abs().sum() > 0 for g in student_grads(strategy.members["small"]).values())
    # the total's gradient on each peer is exactly that of the peer's own loss
    strategy.zero_grad(set_to_none=True)
    losses["third/loss"].backward(retain_graph=True)
    own = {n: g.clone() for n, g in student_grads(strategy.members["third"]).items() if g is not None}
    strategy.zero_grad(set_to_none=True)
    losses["loss"].backward()
    total = student_grads(strategy.members["third"])
    assert own and all(torch.allclose(total[n], g) for n, g in own.items())


def test_three_peers_sum_and_ensemble_in_the_strategy():
    v = views()
    kd = {}
    for mode in ("sum", "ensemble"):
        strategy = build([f"strategy.multi_peer={mode}"], third=True)
        losses = strategy(v, None, None, None)
        with torch.no_grad():
            logits = {n: similarity_logits(*SimCLRObjective(strategy.options.simclr).embed(m.student, None, v[0], v[1]).z, 0.1)
                      for n, m in strategy.members.items()}
        expected = dogo_kd_loss(logits["large"], [logits["small"], logits["third"]], mode)
        assert losses["large/kd"].item() == pytest.approx(expected.item(), rel=1e-5)
        kd[mode] = losses["large/kd"].item()
    assert kd["ensemble"] < kd["sum"]


def test_simsiam_peer_beside_contrastive_peer():
    """Table 4: a SimSiam peer's loss is the SimSiam baseline's; its distribution comes from its predictions."""
    strategy = build(["strategy.objectives={large: simsiam}"])
    assert strategy.options.objectives == {"small": "simclr", "large": "simsiam"}
    assert set(strategy.members["large"].student) == {"backbone", "projector", "predictor"}
    v = views()
    losses = strategy(v, None, None, None)
    with torch.no_grad():
        siam = SimSiamObjective(strategy.options.simsiam).embed(strategy.members["large"].student, None, v[0], v[1])
        clr = SimCLRObjective(strategy.options.simclr).embed(strategy.members["small"].student, None, v[0], v[1])
        siam_logits, clr_logits = similarity_logits(*siam.p, 0.1), similarity_logits(*clr.z, 0.1)
    assert losses["large/ssl"].item() == pytest.approx(SimSiamObjective(strategy.options.simsiam).loss(siam).item(), rel=1e-5)
    assert losses["large/kd"].item() == pytest.approx(dogo_kd_loss(siam_logits, [clr_logits]).item(), rel=1e-5)
    assert losses["small/kd"].item() == pytest.approx(dogo_kd_loss(clr_logits, [siam_logits]).item(), rel=1e-5)


@pytest.mark.parametrize("target", ["paper", "code"])
def test_two_simsiam_peers_target_predictions_or_projections(target):
    strategy = build(["strategy.objectives={small: simsiam, large: simsiam}", f"strategy.simsiam_target={target}"])
    v = views()
    losses = strategy(v, None, None, None)
    with torch.no_grad():
        small = SimSiamObjective(strategy.options.simsiam).embed(strategy.members["small"].student, None, v[0], v[1])
        large = SimSiamObjective(strategy.options.simsiam).embed(strategy.members["large"].student, None, v[0], v[1])
    peer = large.z if target == "code" else large.p
    expected = dogo_kd_loss(similarity_logits(*small.p, 0.1), [similarity_logits(*peer, 0.1)])
    assert losses["small/kd"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("mode", ["shared", "per_peer"])
def test_each_peer_sees_its_views(mode):
    strategy = build([f"strategy.views={mode}"], third=True)
    n_views = 6 if mode == "per_peer" else 2
    assert len(strategy.train_transform()(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))) == n_views
    seen = {name: [] for name in strategy.members}
    for name, member in strategy.members.items():
        member.backbone.register_forward_hook(lambda module, args, out, name=name: seen[name].append(args[0]))
    v = views(n_views)
    strategy(v, None, None, None)
    for index, name in enumerate(strategy.members):
        first = 2 * index if mode == "per_peer" else 0
        assert len(seen[name]) == 2
        assert torch.equal(seen[name][0], v[first]) and torch.equal(seen[name][1], v[first + 1])


def test_config_errors_are_user_errors():
    with pytest.raises(UserError, match="at least 2 members"):
        STRATEGIES.get("dogo")(load_config("dogo", None, tiny() + ["members={solo: {backbone: cifar_resnet20}}"]), INFO)
    with pytest.raises(UserError, match="unknown members \\['nobody'\\]"):
        build(["strategy.objectives={nobody: simsiam}"])
    with pytest.raises(UserError, match="strategy.multi_peer"):
        build(["strategy.multi_peer=mean"])


def test_train_dogo_end_to_end(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--method", "dogo", "--output-dir", str(run), *tiny()]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "dogo" and list(summary["members"]) == ["small", "large"]
    assert all(0 <= m["knn_top1"] <= 100 for m in summary["members"].values())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first_step = next(record for record in records if "loss" in record)  # evaluation records carry no loss
    assert {"small/ssl", "small/kd", "small/loss", "large/kd", "loss"} <= set(first_step)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["strategy"]["objectives"] == {"small": "simclr", "large": "simclr"}


def test_three_peers_demo_runs_end_to_end(tmp_path):
    run = tmp_path / "demo"
    members = ("narrow", "resnet20", "resnet32")
    args = ["train", "--config", str(ZOO / "dogo" / "three_peers_demo.yaml"), "--output-dir", str(run), *tiny(members)]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["members"]) == list(members)
    assert all(0 <= m["knn_top1"] <= 100 for m in summary["members"].values())


def test_zoo_configs_set_the_code_choices():
    def options(name):
        cfg = load_config(None, str(ZOO / "dogo" / name), [])
        return cfg, strategy_options(cfg, DoGoOptions)

    cfg, opts = options("tinyimagenet_r50_r18.yaml")
    assert (opts.views, opts.kd_reduction, opts.kd_temperature) == ("per_peer", "all", 0.1)
    assert opts.simclr.temperature == 0.5
    assert (cfg.data.name, cfg.data.image_size, cfg.train.batch_size) == ("tiny_imagenet", 64, 256)
    net1, net2 = cfg.members["net1"], cfg.members["net2"]
    assert (net1.backbone, net1.small_image_stem, net1.paper_name) == ("resnet50", True, "ResNet-50")
    assert net2.paper_name == "ResNet-18"
    adam = net1.optimizer
    assert (adam.name, adam.lr, adam.min_lr, adam.weight_decay, adam.warmup_epochs) == ("adamw", 3e-4, 3e-4, 1e-6, 0)
    assert net1.distill_weight == net2.distill_weight == 100
    _, table4 = options("tinyimagenet_r18_simsiam_r18_simsiam.yaml")
    assert table4.objectives == {"net1": "simsiam", "net2": "simsiam"} and table4.simsiam_target == "code"
    names = {p.name for p in (ZOO / "dogo").glob("tinyimagenet_*.yaml")}
    assert len(names) == 14 and {p.name for p in (ZOO / "simclr").glob("tinyimagenet_*.yaml")} == {
        f"tinyimagenet_{n}.yaml" for n in ("r50", "r34", "r18", "wrn_28_2", "wrn_16_2", "wrn_10_2")}


# ------------------------------------------------------------------ wiring: one step against the paper's equations

WIRING_LAMBDAS = {"small": 100.0, "large": 0.3, "third": 2.0}  # lambda_i of Eq. (4-5), one per peer
TAU_C, TAU_KD = 0.3, 0.2  # tau_c of Eq. (1) and tau_kd of Eq. (2-3), neither the default 0.5 nor equal
WIRING_CASES = {
    "code KL (mean over B^2), per-peer views": dict(kd_reduction="all", views="per_peer"),
    "paper KL (per row), shared views": dict(kd_reduction="row", views="shared"),
    "SimCLR + SimSiam peers": dict(objectives={"large": "simsiam"}, kd_reduction="row", views="per_peer"),
    "two SimSiam peers, target from predictions": dict(objectives={"small": "simsiam", "large": "simsiam"},
                                                       kd_reduction="all", views="per_peer", simsiam_target="paper"),
    "two SimSiam peers, target from projections": dict(objectives={"small": "simsiam", "large": "simsiam"},
                                                       kd_reduction="all", views="per_peer", simsiam_target="code"),
    "three peers, sum over peers": dict(objectives={"third": "simsiam"}, kd_reduction="all", views="per_peer",
                                        multi_peer="sum"),
    "three peers, peers' ensemble": dict(objectives={"third": "simsiam"}, kd_reduction="row", views="per_peer",
                                         multi_peer="ensemble"),
}


def head_outputs_by_hand(strategy, views_: list[torch.Tensor], objectives: dict, per_peer: bool) -> dict:
    """Peer i's projections z = g(f(x)) (and SimSiam predictions p = h(z)) on its own views 2i, 2i+1 (per peer) or
    on views 0, 1 (shared)."""
    outputs = {}
    for index, (name, member) in enumerate(strategy.members.items()):
        student, first = member.student, 2 * index if per_peer else 0
        z = [student["projector"](student["backbone"](view)) for view in views_[first:first + 2]]
        p = [student["predictor"](projection) for projection in z] if objectives[name] == "simsiam" else None
        outputs[name] = (z, p)
    return outputs


def leaves_of(outputs: dict) -> dict[str, PairOutputs]:
    """Fresh leaf copies of head outputs, so the gradient each loss term sends to every head output is visible."""
    copy = lambda tensors: tuple(t.detach().clone().requires_grad_() for t in tensors)  # noqa: E731
    return {name: PairOutputs(z=copy(z), p=copy(p) if p is not None else None) for name, (z, p) in outputs.items()}


def dogo_terms_by_hand(leaves: dict[str, PairOutputs], case: dict) -> dict[str, torch.Tensor]:
    """DoGo Eq. (1)-(6) for every peer from its head outputs: L_i = L_ssl,i + lambda_i L_kd,i with
    L_kd,i = D_KL(Q || P_i); P_i from the peer's own predictions if SimSiam (Sec. 4.7), else projections; Q from
    each other peer the same way (or from its projections between two SimSiam peers, the code's choice), a
    constant target; summed over the other peers, or Q their mean distribution (Sec. 3)."""
    objectives = {name: case.get("objectives", {}).get(name, "simclr") for name in leaves}

    def own(name):
        return leaves[name].p if objectives[name] == "simsiam" else leaves[name].z

    def target(student, peer):
        both_simsiam = objectives[student] == objectives[peer] == "simsiam"
        embeddings = leaves[peer].z if both_simsiam and case.get("simsiam_target") == "code" else own(peer)
        return similarity_distribution(*embeddings, TAU_KD).detach()

    per_row = case["kd_reduction"] == "row"
    terms = {}
    for name, out in leaves.items():
        if objectives[name] == "simsiam":
            ssl = simsiam_eq6(*out.p, *out.z)
        else:
            ssl = nt_xent_eq1(*out.z, TAU_C)
        student = similarity_distribution(*own(name), TAU_KD)
        targets = [target(name, peer) for peer in leaves if peer != name]
        if case.get("multi_peer") == "ensemble":
            kd = kl_eq2(torch.stack(targets).mean(dim=0), student, per_row)
        else:
            kd = sum(kl_eq2(q, student, per_row) for q in targets)
        terms.update({f"{name}/ssl": ssl, f"{name}/kd": kd, f"{name}/loss": ssl + WIRING_LAMBDAS[name] * kd})
    terms["loss"] = sum(terms[f"{name}/loss"] for name in leaves)
    return terms


def all_leaves(leaves: dict[str, PairOutputs]) -> list[torch.Tensor]:
    return [t for out in leaves.values() for t in (*out.z, *(out.p or ()))]


@pytest.mark.parametrize("case", WIRING_CASES.values(), ids=WIRING_CASES.keys())
def test_one_step_matches_the_paper_term_by_term_and_gradient_by_gradient(case):
    """A tiny float64 cohort, one step: every named term and the gradient it sends to every head output equal DoGo
    Eq. (1)-(6) written out in the test, to 1e-12. A peer's distribution is a constant target (member i's KL
    reaches only member i's outputs) and SimSiam's targets z are stop-gradient."""
    three = "multi_peer" in case
    options = [f"strategy.{key}={value}" for key, value in case.items() if key != "objectives"]
    options += [f"strategy.objectives={case.get('objectives', {})}".replace("'", ""),
                f"strategy.simclr.temperature={TAU_C}", f"strategy.kd_temperature={TAU_KD}"]
    lambdas = [f"members.{name}.distill_weight={weight}" for name, weight in WIRING_LAMBDAS.items()
               if three or name != "third"]
    strategy = build(options + lambdas, third=three).double()
    assert strategy.options.simclr.temperature == TAU_C
    objectives = strategy.options.objectives
    per_peer = case["views"] == "per_peer"
    v = [view.double() for view in views(2 * len(strategy.members) if per_peer else 2, batch=6)]

    one_step = strategy(v, None, None, None)
    outputs = strategy.network_outputs(v)
    by_hand = head_outputs_by_hand(strategy, v, objectives, per_peer)
    for name, (z, p) in by_hand.items():
        for got, expected in zip((*outputs[name].z, *(outputs[name].p or ())), (*z, *(p or ()))):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)

    leaves, reference_leaves = leaves_of(by_hand), leaves_of(by_hand)
    terms = strategy.losses(leaves, None, None, None)
    reference = dogo_terms_by_hand(reference_leaves, case)
    assert set(terms) == set(one_step) == set(reference)
    for name, term in terms.items():
        assert term.dtype == torch.float64
        torch.testing.assert_close(one_step[name], term, rtol=1e-12, atol=1e-12)
        assert_same_gradients(term, all_leaves(leaves), reference[name], all_leaves(reference_leaves))
    for name in strategy.members:  # member i's KL reaches exactly its own embeddings (a SimSiam peer's p, not z)
        own = leaves[name].p if objectives[name] == "simsiam" else leaves[name].z
        grads = torch.autograd.grad(terms[f"{name}/kd"], all_leaves(leaves), retain_graph=True, allow_unused=True)
        reached = {id(leaf) for leaf, grad in zip(all_leaves(leaves), grads) if grad is not None and grad.any()}
        assert reached == {id(leaf) for leaf in own}, name

# ---------------------------------------------------------------------------------------------- DoGo Table 1


def write_run(run_dir, method, seed, members, objectives=None, epochs=4):
    run_dir.mkdir(parents=True)
    strategy = f"strategy:\n  objectives: {json.dumps(objectives)}\n" if objectives else ""
    (run_dir / "config.yaml").write_text(f"method: {method}\n{strategy}")
    summary = {"method": method, "dataset": "cifar10_subset", "seed": seed, "epochs": epochs, "wall_time_s": 60.0,
               "config_file": None, "tag": None, "members": members, "protocol": {"knn_k": 20}}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def net(backbone, paper, params, knn, dogo_knn=None):
    return {"backbone": backbone, "paper_name": paper, "params_m": params, "knn_top1": knn, "knn_dogo_mean": dogo_knn,
            "linear_top1": None}


R56, R20 = ("cifar_resnet56", "ResNet-50", 0.86), ("cifar_resnet20", "ResNet-18", 0.27)


@pytest.fixture
def dogo_runs(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        write_run(root / f"simclr56_s{seed}", "simclr", seed, {"net": net(*R56, 40.0 + seed)})
        write_run(root / f"simclr20_s{seed}", "simclr", seed, {"net": net(*R20, 30.0 + 2 * seed)})
        write_run(root / f"dogo_s{seed}", "dogo", seed, {"net1": net(*R56, 42.0 + seed, 50.0),
                                                         "net2": net(*R20, 33.0 + 2 * seed, 40.0)})
    write_run(root / "dogo_same", "dogo", 0, {"net1": net(*R20, 32.0), "net2": net(*R20, 31.0)})
    write_run(root / "simsiam20", "simsiam", 0, {"net": net(*R20, 20.0)})
    write_run(root / "dogo_mixed", "dogo", 0, {"a": net(*R20, 34.0), "b": net(*R20, 22.0)},
              objectives={"a": "simclr", "b": "simsiam"})
    return root


def test_dogo_table1_matrix_changes_and_paper_rows(dogo_runs):
    table = compare_table([dogo_runs])  # auto picks the DoGo table
    assert list(table.columns[:4]) == ["Source", "Protocol", "Model", "Baseline"]
    r56, r20 = "cifar_resnet56 (as ResNet-50)", "cifar_resnet20 (as ResNet-18)"
    siam = f"{r20} [simsiam]"
    assert list(table.columns[4:]) == [r56, r20, siam]
    knn = table[table.Protocol == "k-NN"].set_index("Model")
    assert knn.loc[r56, "Baseline"] == "40.5 +- 0.7 (2)" and knn.loc[r20, "Baseline"] == "31.0 +- 1.4 (2)"
    # R56 \ R20: 42.5 over 40.5 is +4.9 %, 34.0 over 31.0 is +9.7 %; the mirrored box swaps sides
    assert knn.loc[r56, r20] == "42.5 +- 0.7 (2) \\ 34.0 +- 1.4 (2); +4.9% +9.7%"
    assert knn.loc[r20, r56] == "34.0 +- 1.4 (2) \\ 42.5 +- 0.7 (2); +9.7% +4.9%"
    assert knn.loc[r20, r20] == "32.0 (1) \\ 31.0 (1); +3.2% +0.0%" and knn.loc[r56, r56] == "-"
    # the SimSiam peer is its own model, measured against simsiam alone (Table 4)
    assert knn.loc[r20, siam] == "34.0 (1) \\ 22.0 (1); +9.7% +10.0%" and knn.loc[siam, "Baseline"] == "20.0 (1)"
    dogo_knn = table[table.Protocol == "k-NN DoGo"].set_index("Model")
    assert dogo_knn.loc[r56, r20] == "50.0 +- 0.0 (2) \\ 40.0 +- 0.0 (2); n/a n/a"
    paper = table[table.Source.str.startswith("paper")].set_index("Model")
    assert list(paper.index) == ["ResNet-50", "ResNet-18"] and paper.loc["ResNet-18", "Baseline"] == "47.67"
    assert paper.loc["ResNet-50", r20] == "54.93 \\ 49.73; +2.7% +4.5%"
    assert paper.loc["ResNet-18", r20] == "48.77 \\ 48.74; +2.3% +2.2%" and paper.loc["ResNet-18", siam] == ""
    assert not (table.Protocol == "Linear").any() or set(table[table.Protocol == "Linear"].Source) == {
        "paper: Tiny-ImageNet, linear (DoGo Table 1)"}
    assert any("compare the changes" in note for note in table.attrs["notes"])


def test_dogo_table1_notes_missing_baselines_and_needs_dogo_runs(tmp_path, dogo_runs):
    table = dogo_table1(load_runs([dogo_runs / "dogo_s0"]))
    assert "no simclr run of cifar_resnet56 on cifar10_subset" in " ".join(table.attrs["notes"])
    assert table.set_index("Model").loc["cifar_resnet56 (as ResNet-50)", "Baseline"].iloc[0] == "n/a"
    with pytest.raises(UserError, match="no dogo runs"):
        dogo_table1(load_runs([dogo_runs / "simsiam20"]))


def test_paper_table1_is_consistent():
    t1 = load_paper_numbers("dogo_table1").fillna({"row": "", "column": ""})
    assert list(t1.columns) == ["row", "column", "member", "quantity", "value"] and len(t1) == 2 * (3 + 3 + 9 * 4)
    boxes = t1[t1.quantity != "baseline"].set_index(["row", "column", "member", "quantity"]).value
    for (row, column, member, quantity), value in boxes.items():  # a box and its mirror hold the same numbers
        if row != column:
            assert boxes[(column, row, "column" if member == "row" else "row", quantity)] == value
    row_base = t1[(t1.quantity == "baseline") & (t1.member == "row")].set_index("row").value
    column_base = t1[(t1.quantity == "baseline") & (t1.member == "column")].set_index("column").value
    assert (row_base.drop("ResNet-18") == column_base.drop("ResNet-18")).all()
    assert (row_base["ResNet-18"], column_base["ResNet-18"]) == (47.67, 47.58)  # as printed
    dogo, change = boxes.xs("dogo", level="quantity"), boxes.xs("change_pct", level="quantity")
    off = []
    for (row, column, member), value in dogo.items():
        model = row if member == "row" else column
        recomputed = [100 * (value - base) / base for base in {row_base[model], column_base[model]}]
        if min(abs(r - change[(row, column, member)]) for r in recomputed) > 0.051:
            off.append((row, column, member))
    assert sorted(off) == [("ResNet-18", "ResNet-34", "row"), ("ResNet-34", "ResNet-18", "column"),
                           ("WRN-10-2", "WRN-28-2", "column"), ("WRN-28-2", "WRN-10-2", "row")]
    assert dogo[("ResNet-50", "ResNet-18", "column")] == 49.73 and change[("WRN-28-2", "WRN-10-2", "row")] == -1.7
