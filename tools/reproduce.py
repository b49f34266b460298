#!/usr/bin/env python
"""Reproduce a paper table: train every run it needs, run its evaluations, and print it with ``sslkd compare``.

    python tools/reproduce.py --list                      every table, with its cost at paper and proxy scale
    python tools/reproduce.py mokd_table4 --proxy          the CPU-proxy version (3 seeds), resumable
    python tools/reproduce.py mokd_table1 --proxy --seeds 1
    python tools/reproduce.py dogo_table1                 paper scale (needs the paper's data and GPUs)

Resumable in parts: a run with summary.json is skipped, one whose records are committed in results/ is restored
from them (a fresh clone continues a table where it stopped), a run with a checkpoint is resumed, an evaluation already
recorded in a run's summary.json (``evals``) is skipped. Tables that evaluate the same trained models share their
runs (MOKD Tables 4, 5, 9 and Fig. 5 reuse MOKD Table 1's). Layout (the same as tools/proxy_*_table1.sh):

    runs/proxy_<runs>/<config folder>/<config stem>/seed<N>    one training run per proxy config and seed
    runs/proxy_<runs>/random_init/<config folder>/<config stem>    the random-initialisation floor
    results/proxy_<runs>/...                         summary.json, config.yaml, metrics.jsonl of every run
    results/<table>_proxy{.md,.csv,_runs.md,_random_init.md,_wall.md}

At paper scale the runs go to runs/<runs>/ and the tables to results/<table>{...}. ``--tables-only`` rebuilds the
table files from the records in results/ alone (a fresh clone has no runs/). ``--spec FILE.yaml`` reads a
table of the same fields from a file (tests use it for a tiny table on digits).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sslkd.errors import UserError

Z = "zoo_configs"


@dataclass(frozen=True)
class Evaluation:
    """One ``sslkd eval`` per run (or per run and partner), recorded in the run's summary.json under ``key``.

    ``args`` follow ``sslkd eval``; ``proxy_args`` are added at proxy scale only (shorter schedules). ``configs``
    limits it to these runs, named ``folder/stem`` after their configs (empty: every run, floors included unless
    ``floor=False``); ``member`` evaluates one member; ``other`` names a second run of the same seed whose
    ``other_member`` is the partner (prediction consistency between two runs). ``per_table``: one command over
    every run of the table, floors included unless ``floor=False`` (``--checkpoints RUN...``), writing to
    ``--out results/<table>[_proxy]_<key>``; done when that directory holds files."""

    key: str
    args: tuple[str, ...]
    proxy_args: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    member: str | None = None
    other: str | None = None
    other_member: str | None = None
    floor: bool = True
    per_table: bool = False


@dataclass(frozen=True)
class Claim:
    """A headline comparison over the table's runs: ``treated`` against ``baseline``, each (config folder/stem,
    member). No ``baseline``: the treated run's own random-init floor (same seed and weights, a paired test).
    ``direction`` +1: the paper reports treated above baseline; ``threshold``: the margin the claim needs."""

    text: str
    treated: tuple[str, str]
    baseline: tuple[str, str] | None = None
    direction: int = 1
    threshold: float = 0.0
    metric: str = "knn_top1"


@dataclass(frozen=True)
class Table:
    """Everything one paper table needs. ``runs`` names the run directory it shares with other tables;
    ``proxy_minutes``: measured or estimated wall time of the whole proxy table at 3 seeds on 2 CPU cores,
    beyond runs it shares that are already done (``shares`` says which)."""

    name: str
    paper: str
    about: str
    configs: tuple[str, ...] = ()
    random_init: tuple[str, ...] = ()
    evaluations: tuple[Evaluation, ...] = ()
    compare: str = "runs"
    runs: str = ""
    paper_configs: tuple[str, ...] = ()
    paper_evaluations: tuple[Evaluation, ...] | None = None
    paper_cost: str = ""
    proxy_minutes: float | None = None
    overrides: tuple[str, ...] = ()
    note: str = ""
    claims: tuple[Claim, ...] = ()

    @property
    def run_group(self) -> str:
        return self.runs or self.name


def _stem(path: str) -> str:
    """A config's run name: its folder and file stem (``mcl/proxy_x``), unique where stems repeat across methods."""
    return f"{Path(path).parent.name}/{Path(path).stem}"


# ------------------------------------------------------------------------------------------------ table specs
MOKD_PROXY = (f"{Z}/dino/proxy_cifar10_subset_resnet20.yaml", f"{Z}/dino/proxy_cifar10_subset_vit_p4_d4.yaml",
              f"{Z}/mokd/proxy_cifar10_subset_resnet20_vit_p4_d4.yaml")
MOKD_FLOORS = MOKD_PROXY[:2]
MOKD_PAPER = (f"{Z}/dino/imagenet_r50_100ep.yaml", f"{Z}/dino/imagenet_vit_s16_100ep.yaml",
              f"{Z}/dino/imagenet_vit_b16_100ep.yaml", f"{Z}/mokd/imagenet_r50_vit_s16_100ep.yaml",
              f"{Z}/mokd/imagenet_r50_vit_b16_100ep.yaml")
DOGO_PROXY = (f"{Z}/simclr/proxy_cifar10_subset_resnet20.yaml", f"{Z}/simclr/proxy_cifar10_subset_resnet56.yaml",
              f"{Z}/dogo/proxy_cifar10_subset_resnet56_resnet20.yaml")
DOGO_FLOORS = DOGO_PROXY[:2]
DOGO_PAIR_R50_R18 = (f"{Z}/simclr/tinyimagenet_r18.yaml", f"{Z}/simclr/tinyimagenet_r50.yaml",
                     f"{Z}/dogo/tinyimagenet_r50_r18.yaml")


def dogo_r18(key: str, args: tuple[str, ...], proxy_args: tuple[str, ...] = ()) -> tuple[Evaluation, Evaluation]:
    """An evaluation of the ResNet-18 stand-in of the DoGo proxy: the SimCLR ResNet-20 alone and net2 (ResNet-20)
    of the ResNet-56 + ResNet-20 pair."""
    return (Evaluation(key, args, proxy_args, configs=("simclr/proxy_cifar10_subset_resnet20",)),
            Evaluation(key, args, proxy_args, configs=("dogo/proxy_cifar10_subset_resnet56_resnet20",),
                       member="net2"))


DOGO_PROBE = Evaluation("linear_dogo", ("linear", "--protocol", "dogo"))
DINO_PROBE = Evaluation("linear_dino", ("linear", "--protocol", "dino"), proxy_args=("--no-augment",))
# SDSSL Table 1 probes the final CLS alone (MoCo v3's linear protocol), here with the DINO recipe
SDSSL_PROBE = Evaluation("linear_dino_final", ("linear", "--protocol", "dino", "--n-last-blocks", "1"),
                         proxy_args=("--no-augment",))
MCL_PROXY = tuple(f"{Z}/{m}/proxy_cifar10_subset_resnet20_resnet32.yaml" for m in ("supervised", "dml", "mcl", "lmcl"))
SDSSL_PROXY = (f"{Z}/sdssl/proxy_cifar10_subset_vit_p4_d4_simclr_baseline.yaml",
               f"{Z}/sdssl/proxy_cifar10_subset_vit_p4_d4_sd_simclr.yaml",
               f"{Z}/byol/proxy_cifar10_subset_vit_p4_d4_byol.yaml", f"{Z}/sdssl/proxy_cifar10_subset_vit_p4_d4_sd_byol.yaml",
               f"{Z}/mocov3/proxy_cifar10_subset_vit_p4_d4_mocov3.yaml",
               f"{Z}/sdssl/proxy_cifar10_subset_vit_p4_d4_sd_mocov3.yaml")
def sdssl_paper(backbone: str) -> tuple[str, ...]:
    """SDSSL Table 1's six framework runs at one paper backbone (``vit_s16``): each base and its SD version."""
    return (f"{Z}/sdssl/imagenet_{backbone}_simclr_baseline_300ep.yaml", f"{Z}/sdssl/imagenet_{backbone}_sd_simclr_300ep.yaml",
            f"{Z}/byol/imagenet_{backbone}_byol_300ep.yaml", f"{Z}/sdssl/imagenet_{backbone}_sd_byol_300ep.yaml",
            f"{Z}/mocov3/imagenet_{backbone}_mocov3_300ep.yaml", f"{Z}/sdssl/imagenet_{backbone}_sd_mocov3_300ep.yaml")


SDSSL_PAPER = sdssl_paper("vit_s16")
PROXY_TRANSFER = ("--data", "digits")  # the one other data set on these machines (scikit-learn's, embedded)



def proxy_baselines(version: str) -> tuple[str, ...]:
    """Every self-supervised baseline of CPU proxy ``version`` (v2, v3), each alone on its backbone."""
    return (*(f"{Z}/{method}/proxy_{version}_cifar10_subset_resnet20.yaml"
              for method in ("dino", "simclr", "byol", "mocov3", "simsiam")),
            f"{Z}/dino/proxy_{version}_cifar10_subset_vit_p4_d4.yaml")


def mokd_configs(version: str) -> tuple[str, str, str]:
    """DINO alone on the CNN and on the ViT, then the MOKD pair, under CPU proxy ``version``."""
    dino_cnn, dino_vit = proxy_baselines(version)[0], proxy_baselines(version)[-1]
    return (dino_cnn, dino_vit, f"{Z}/mokd/proxy_{version}_cifar10_subset_resnet20_vit_p4_d4.yaml")


def mcl_ssl_config(version: str) -> str:
    return f"{Z}/mcl/proxy_{version}_ssl_cifar10_subset_resnet20_vit_p4_d4.yaml"


QUICKSTART = "sslkd/configs/mokd.yaml"


def mokd_claims(version: str, other: str | None, other_name: str) -> tuple[Claim, ...]:
    """MOKD's members against the same backbones trained by ``other`` (a config with members cnn and vit; None: each
    trained alone with DINO), then each MOKD member against its own floor."""
    dino_cnn, dino_vit, mokd = map(_stem, mokd_configs(version))
    against = ({"cnn": dino_cnn, "vit": dino_vit} if other is None
               else dict.fromkeys(("cnn", "vit"), _stem(other)))
    return (*(Claim(f"MOKD's {m.upper()} beats the {m.upper()} {other_name}", (mokd, m), (against[m], m))
              for m in ("cnn", "vit")),
            *(Claim(f"MOKD's {m.upper()} above its random-init floor", (mokd, m)) for m in ("cnn", "vit")))


def proxy_tables(version: str) -> tuple[Table, ...]:
    """The baseline check and MOKD Tables 1 and 3 under CPU proxy ``version``: v2 (32-px views, over budget: 65-95
    minutes per single-model run) or v3 (the same at 16-px views; results/README.md 'CPU proxy v3')."""
    baselines, (dino_cnn, dino_vit, mokd), mcl = proxy_baselines(version), mokd_configs(version), mcl_ssl_config(version)
    runs = f"{version}_baselines"
    return (
        Table(runs, f"CPU proxy {version}", "every self-supervised baseline against its own random-init floor "
              f"(the {version} protocol counts only when each is >= 10 k-NN points above it)",
              baselines, baselines, compare="runs", proxy_minutes=None,
              note=f"proxy only: the protocol check of results/README.md 'CPU proxy {version}'",
              claims=tuple(Claim(f"{_stem(c).replace(f'/proxy_{version}_cifar10_subset_', ' on ')} >= 10 above its "
                                 "floor", (_stem(c), member), threshold=10.0)
                           for c, member in zip(baselines, ("cnn", "net", "cnn", "cnn", "cnn", "vit")))),
        Table(f"mokd_table1_{version}", "MOKD Table 1", "k-NN of both nets, each alone (DINO) vs trained together "
              f"(MOKD), CPU proxy {version}", (dino_cnn, dino_vit, mokd), compare="mokd_table1", runs=runs,
              proxy_minutes=None, claims=mokd_claims(version, None, "trained alone (DINO)"),
              note=f"proxy only; the DINO runs are {runs}' (shared); the MOKD pair trains ~4x slower than DINO alone"),
        Table(f"mokd_table3_{version}", "MOKD Table 3", "MOKD against self-supervised MCL with the same pair, CPU "
              f"proxy {version}", (mokd, mcl), compare="mokd_table3", runs=runs, proxy_minutes=None,
              claims=mokd_claims(version, mcl, "trained by self-supervised MCL")[:2],
              note=f"proxy only; the MOKD runs are mokd_table1_{version}'s (shared)"),
    )


DOGO_V3 = (f"{Z}/simclr/proxy_v3_cifar10_subset_resnet20.yaml", f"{Z}/simclr/proxy_v3_cifar10_subset_resnet56.yaml",
           f"{Z}/dogo/proxy_v3_cifar10_subset_resnet56_resnet20.yaml")
MCL_METHODS = ("supervised", "dml", "mcl", "lmcl")


def dogo_v3_claims() -> tuple[Claim, ...]:
    """DoGo Table 1: each peer of the pair above the same backbone trained alone with SimCLR, and above its floor."""
    r20, r56, pair = map(_stem, DOGO_V3)
    return (Claim("DoGo's ResNet-56 beats SimCLR's ResNet-56", (pair, "net1"), (r56, "net")),
            Claim("DoGo's ResNet-20 beats SimCLR's ResNet-20", (pair, "net2"), (r20, "net")),
            *(Claim(f"DoGo's {name} above its random-init floor", (pair, member))
              for member, name in (("net1", "ResNet-56"), ("net2", "ResNet-20"))))


SDSSL_V3 = tuple(f"{Z}/sdssl/proxy_v3_cifar10_subset_resnet20_{sd}{base}.yaml"
                 for base in ("simclr", "byol", "mocov3") for sd in ("", "sd_"))


def sdssl_v3_claims() -> tuple[Claim, ...]:
    """SDSSL Table 1: each SD-X above X (final layer, the evaluated encoder's k-NN), and each X above its floor."""
    stems = [_stem(c) for c in SDSSL_V3]
    names = ("SimCLR", "BYOL", "MoCo v3")
    return (*(Claim(f"SD-{n} beats {n}", (sd, "cnn"), (x, "cnn")) for n, x, sd in zip(names, stems[::2], stems[1::2])),
            *(Claim(f"{n} above its random-init floor", (x, "cnn")) for n, x in zip(names, stems[::2])))


def mcl_v3_table(name: str, pair: str, about: str) -> Table:
    """MCL Table 1 (``pair`` resnet20_x2) or 2 (resnet20_resnet32) under CPU proxy v3: test top-1 of both nets for
    independent training, DML, MCL and L-MCL; the paper's claims: each method's nets above the Baseline's, L-MCL
    above DML."""
    configs = tuple(f"{Z}/{m}/proxy_v3_cifar10_subset_{pair}.yaml" for m in MCL_METHODS)
    baseline, dml, _, lmcl = map(_stem, configs)
    claims = tuple(Claim(f"{label}'s {net} beats the Baseline's", (_stem(c), net), (baseline, net),
                         metric="test_top1")
                   for c, label in zip(configs[1:], ("DML", "MCL", "L-MCL")) for net in ("net1", "net2"))
    claims += tuple(Claim(f"L-MCL's {net} beats DML's", (lmcl, net), (dml, net), metric="test_top1")
                    for net in ("net1", "net2"))
    return Table(name, f"MCL {name.split('_')[1].replace('table', 'Table ')}", f"{about}, CPU proxy v3", configs,
                 compare=name.removesuffix("_v3"), proxy_minutes=None, claims=claims,
                 note="proxy only: 40 epochs at 16 px (zoo_configs/_base_/mcl_proxy_v3.yaml)")


def sdssl_ablation(name: str, change: str, overrides: tuple[str, ...], why: str) -> Table:
    """BYOL and MoCo v3, with and without SD, at the proxy scale with one setting changed (tagged in the tables)."""
    return Table(name, "SDSSL Table 1 (ablation)", f"BYOL and MoCo v3 with and without SD, {change}",
                 SDSSL_PROXY[2:], (),
                 (SDSSL_PROBE, Evaluation("multiexit_knn", ("multiexit", "--protocol", "knn"), per_table=True)),
                 compare="sdssl_table1", overrides=overrides, proxy_minutes=95,
                 note=f"sslkd's proxy check: {why}; proxy only")


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("mokd_table1", "MOKD Table 1", "k-NN and linear probe of both nets, each alone (DINO) vs with MOKD",
          MOKD_PROXY, MOKD_FLOORS, (DINO_PROBE,), compare="mokd_table1", paper_configs=MOKD_PAPER,
          paper_cost="12 pairs x 100 ImageNet epochs: ~8 GPU-days per R50-ViT-S pair on 8 V100 (paper: 8 GPUs)",
          proxy_minutes=75 + 15,
          note="proxy k-NN measured 75 min (results/README.md); DINO probe on cached features (--no-augment)"),
    Table("mokd_table3", "MOKD Table 3", "MOKD against SSL-KD methods; the MCL row (self-supervised MCL) only",
          (*MOKD_PROXY, f"{Z}/mcl/proxy_ssl_cifar10_subset_resnet20_vit_p4_d4.yaml"), MOKD_FLOORS, (DINO_PROBE,),
          compare="mokd_table3", runs="mokd_table1",
          paper_cost="SEED/ReKD/DisCo need their own code; MCL + MOKD pairs as Table 1",
          proxy_minutes=20, note="SEED, ReKD and DisCo are not implemented; Supervised needs ImageNet labels"),
    Table("mokd_table4", "MOKD Table 4", "fine-tuning on 1% and 10% class-balanced labels",
          MOKD_PROXY, MOKD_FLOORS,
          (Evaluation("semisup_1pct", ("semisup", "--fraction", "0.01", "--protocol", "mokd")),
           Evaluation("semisup_10pct", ("semisup", "--fraction", "0.1", "--protocol", "mokd"),
                      proxy_args=("--epochs", "10"))),
          compare="mokd_table4", runs="mokd_table1", paper_configs=MOKD_PAPER,
          paper_cost="Table 1's pre-training + 60/30 fine-tuning epochs on 1%/10% ImageNet (~0.5 GPU-day per net)",
          proxy_minutes=50, note="proxy: 10% fine-tuned for 10 epochs (paper 30); 1% took 2.7 min for the MOKD "
                                 "pair's two members on a loaded machine"),
    Table("mokd_table5", "MOKD Table 5", "transfer by fine-tuning (paper: CIFAR-10/100; proxy: digits)",
          MOKD_PROXY, MOKD_FLOORS,
          (Evaluation("transfer_digits_finetune", ("transfer", "--mode", "finetune", "--protocol", "mokd"),
                      proxy_args=(*PROXY_TRANSFER, "--epochs", "10")),),
          compare="mokd_table5", runs="mokd_table1", paper_configs=MOKD_PAPER,
          paper_evaluations=(
              Evaluation("transfer_cifar10_finetune", ("transfer", "--mode", "finetune", "--protocol", "mokd",
                                                       "--data", "cifar10", "--data-root", "data/cifar10")),
              Evaluation("transfer_cifar100_finetune", ("transfer", "--mode", "finetune", "--protocol", "mokd",
                                                        "--data", "cifar100", "--data-root", "data/cifar100"))),
          paper_cost="Table 1's pre-training + 100 fine-tuning epochs on CIFAR-10 and CIFAR-100 per net",
          proxy_minutes=45, note="proxy: transfer to digits for 10 epochs (the only other data set here)"),
    Table("mokd_table7", "MOKD Table 7", "influence of each loss term (R50-ViT-S on ImageNet100, linear)",
          paper_cost="4 R50-ViT-S pairs x 200 ImageNet100 epochs", compare="mokd_table7",
          note="needs MOKD loss-term switches in proxy configs (not written yet): no proxy entry"),
    Table("mokd_table9", "MOKD Table 9", "prediction consistency of the two nets' k-NN predictions",
          MOKD_PROXY, MOKD_FLOORS,
          (Evaluation("consistency", ("consistency",), configs=("mokd/proxy_cifar10_subset_resnet20_vit_p4_d4",)),
           Evaluation("consistency", ("consistency",), configs=("dino/proxy_cifar10_subset_resnet20",),
                      member="cnn", other="dino/proxy_cifar10_subset_vit_p4_d4", other_member="vit")),
          compare="mokd_table9", runs="mokd_table1", paper_configs=MOKD_PAPER[:2] + MOKD_PAPER[3:4],
          paper_cost="Table 1's R50-ViT-S runs + k-NN on ImageNet100", proxy_minutes=3,
          note="the third column (MOKD's R50 swapped for a DINO R50 of similar accuracy) needs a longer DINO run"),
    Table("mokd_fig5", "MOKD Fig. 5", "mean attention distance per layer, ViT and CNN, alone vs with MOKD",
          MOKD_PROXY, MOKD_FLOORS, (Evaluation("attention_distance", ("attention",)),), compare="mokd_fig5",
          runs="mokd_table1", paper_configs=MOKD_PAPER, paper_cost="Table 1's runs + one pass over 256 images",
          proxy_minutes=3),
    Table("dogo_table1", "DoGo Table 1", "each model alone (SimCLR) vs in a DoGo pair, linear (DoGo probe)",
          DOGO_PROXY, DOGO_FLOORS, (DOGO_PROBE,), compare="dogo_table1",
          paper_configs=tuple(sorted(str(p.relative_to(ROOT)) for p in (ROOT / Z / "dogo").glob("tinyimagenet_*")
                                     if "simsiam" not in p.name)),
          paper_cost="6 baselines + 12 pairs x 200 Tiny-ImageNet epochs (~1-3 GPU-days per pair)",
          proxy_minutes=130, note="probe on cached features"),
    Table("dogo_kd_ablation", "DoGo Table 1 (ablation)",
          "the proxy pair with the paper's KD weighting (shared views, KL per row, lambda 1) and with lambda 10",
          (*DOGO_PROXY, f"{Z}/dogo/proxy_cifar10_subset_resnet56_resnet20_paper_kd.yaml",
           f"{Z}/dogo/proxy_cifar10_subset_resnet56_resnet20_lambda10.yaml"), DOGO_FLOORS, (DOGO_PROBE,),
          compare="runs", runs="dogo_table1", proxy_minutes=90,
          note="sslkd's extension: the paper and the authors' code weigh L_kd differently (METHODS.md)"),
    Table("dogo_table2", "DoGo Table 2", "ResNet-18 fine-tuned on 1-100% class-balanced labels, alone vs DoGo",
          DOGO_PROXY, DOGO_FLOORS,
          tuple(e for p in (1, 5, 10, 20, 50, 100) for e in dogo_r18(
              f"semisup_{p}pct_dogo", ("semisup", "--fraction", f"{p / 100:g}", "--protocol", "dogo"),
              ("--epochs", "10"))),
          compare="dogo_table2", runs="dogo_table1", paper_configs=DOGO_PAIR_R50_R18,
          paper_cost="Table 1's R18 and R50-R18 runs + 6 fine-tunings of ResNet-18 on Tiny-ImageNet",
          proxy_minutes=60, note="proxy: 10 fine-tuning epochs (paper: not stated; DoGo protocol default 100)"),
    Table("dogo_table3", "DoGo Table 3", "linear evaluation on other data sets (paper: 6 OOD sets; proxy: digits)",
          DOGO_PROXY, DOGO_FLOORS,
          (Evaluation("transfer_digits_linear_dogo", ("transfer", "--mode", "linear", "--protocol", "dogo",
                                                      "--epochs", "50"), proxy_args=PROXY_TRANSFER),),
          compare="dogo_table3", runs="dogo_table1", paper_configs=DOGO_PAIR_R50_R18,
          paper_cost="Table 1's R50/R18 runs + 50-epoch probes on 6 data sets", proxy_minutes=5),
    Table("dogo_table4", "DoGo Table 4", "ResNet-18 peers with different objectives (SimCLR / SimSiam)",
          (f"{Z}/simclr/proxy_cifar10_subset_resnet20.yaml", f"{Z}/simsiam/proxy_cifar10_subset_resnet20.yaml",
           f"{Z}/dogo/proxy_cifar10_subset_resnet20_simclr_resnet20_simsiam.yaml",
           f"{Z}/dogo/proxy_cifar10_subset_resnet20_simsiam_resnet20_simsiam.yaml"),
          evaluations=(DOGO_PROBE,), compare="dogo_table1",
          paper_configs=(f"{Z}/simclr/tinyimagenet_r18.yaml", f"{Z}/simsiam/tinyimagenet_r18.yaml",
                         f"{Z}/dogo/tinyimagenet_r18_r18.yaml", f"{Z}/dogo/tinyimagenet_r18_simclr_r18_simsiam.yaml",
                         f"{Z}/dogo/tinyimagenet_r18_simsiam_r18_simsiam.yaml"),
          paper_cost="2 baselines + 3 pairs x 200 Tiny-ImageNet epochs", proxy_minutes=90),
    Table("dogo_fig3", "DoGo Fig. 3", "ResNet-18 linear probe with 0-80% noisy labels, alone vs DoGo",
          DOGO_PROXY, DOGO_FLOORS,
          tuple(e for rate in (0.0, 0.2, 0.4, 0.6, 0.8)
                for e in dogo_r18(f"noisy_{rate:g}_dogo", ("noisy", "--rate", f"{rate:g}", "--protocol", "dogo"))),
          compare="dogo_fig3", runs="dogo_table1", paper_configs=DOGO_PAIR_R50_R18,
          paper_cost="Table 1's R18 and R50-R18 runs + probes on CIFAR-10", proxy_minutes=10,
          note="the paper draws the rates in a figure without numbers; 0-80% chosen here"),
    Table("mcl_table2", "MCL Table 2", "two nets of different architectures: Baseline, DML, MCL, L-MCL",
          MCL_PROXY, compare="mcl_table2",
          paper_configs=tuple(sorted(str(p.relative_to(ROOT)) for m in ("dml", "lmcl")
                                     for p in (ROOT / Z / m).glob("cifar100_*") if "_x" not in p.stem)),
          paper_cost="8 pairs x 300 CIFAR-100 epochs per method (~2 GPU-hours each)", proxy_minutes=60,
          note="proxy: ResNet-20 + ResNet-32; measured 103 min on a shared machine, 3-6 min per run on 2 free cores"),
    Table("mcl_table1", "MCL Table 1", "two nets of the same architecture: Baseline, DML, MCL, L-MCL",
          tuple(f"{Z}/{m}/proxy_cifar10_subset_resnet20_x2.yaml" for m in ("supervised", "dml", "mcl", "lmcl")),
          compare="mcl_table1",
          paper_configs=tuple(sorted(str(p.relative_to(ROOT)) for m in ("dml", "lmcl")
                                     for p in (ROOT / Z / m).glob("cifar100_*_x2.yaml"))),
          paper_cost="9 networks x 300 CIFAR-100 epochs per method", proxy_minutes=50,
          note="proxy: two ResNet-20s"),
    Table("mcl_table3", "MCL Table 3", "three nets of the same architecture",
          tuple(f"{Z}/{m}/proxy_cifar10_subset_resnet20_x3.yaml" for m in ("supervised", "dml", "lmcl")),
          compare="mcl_table1",
          paper_configs=tuple(sorted(str(p.relative_to(ROOT)) for m in ("dml", "lmcl")
                                     for p in (ROOT / Z / m).glob("cifar100_*_x3.yaml"))),
          paper_cost="6 networks x 300 CIFAR-100 epochs per method", proxy_minutes=90,
          note="proxy: three ResNet-20s (the paper's Table 3 has L-MCL, not MCL)"),
    Table("mcl_table4", "MCL Table 4", "linear probe on other data sets (paper: STL-10, Tiny-ImageNet; proxy: "
          "digits)", MCL_PROXY,
          evaluations=(Evaluation("transfer_digits_linear_mcl", ("transfer", "--mode", "linear", "--protocol", "mcl"),
                                  proxy_args=PROXY_TRANSFER),),
          compare="mcl_table4", runs="mcl_table2",
          paper_configs=tuple(f"{Z}/{m}/cifar100_{n}_x2.yaml" for m in ("dml", "lmcl") for n in ("resnet56", "wrn_40_2")),
          paper_cost="Table 1's ResNet-56/WRN-40-2 runs + 100-epoch probes on STL-10 and Tiny-ImageNet",
          proxy_minutes=5),
    Table("sdssl_table1", "SDSSL Table 1", "SSL methods with and without self-distillation of intermediate layers",
          SDSSL_PROXY, SDSSL_PROXY[:1], (SDSSL_PROBE,), compare="sdssl_table1",
          paper_configs=tuple(c for b in ("vit_s32", "vit_s16", "vit_b16") for c in sdssl_paper(b)),
          paper_cost="ViT-S/32, ViT-S/16 and ViT-B/16 x 300 ImageNet epochs x 6 frameworks (SimCLR, BYOL, MoCo v3 "
                     "with and without SD)",
          proxy_minutes=140, note="7-8 min per run on 2 free cores (the augmentation takes most of a core)"),
    sdssl_ablation("sdssl_ema_ablation", "EMA teacher momentum 0.99 -> 1 instead of 0.996 -> 1",
                   ("strategy.momentum_teacher=0.99", "tag=teacher momentum 0.99"),
                   "over 312 steps a 0.996 teacher keeps about half its initial weights (MOKD's proxy uses 0.99)"),
    sdssl_ablation("sdssl_lr_ablation", "the paper's learning rate (1.5e-4 at batch 256) instead of 1.5e-3",
                   ("members.vit.optimizer.lr=1.5e-4", "tag=lr 1.5e-4"),
                   "the proxy configs use 10x the paper's AdamW learning rate"),
    Table("sdssl_fig3", "SDSSL Fig. 3", "linear probe and k-NN of every layer, with and without self-distillation",
          SDSSL_PROXY, SDSSL_PROXY[:1], (
              Evaluation("multiexit_knn", ("multiexit", "--protocol", "knn"), per_table=True),
              Evaluation("multiexit_linear", ("multiexit", "--protocol", "linear", "--probe", "dino"),
                         proxy_args=("--no-augment",), per_table=True),
              Evaluation("analysis", ("analyze",), per_table=True)),
          runs="sdssl_table1", compare="runs", paper_configs=SDSSL_PAPER,
          paper_cost="Table 1's runs + a linear probe and k-NN per block + the Sec. 4.4 analyses", proxy_minutes=25,
          note="`sslkd eval multiexit` (Fig. 3: linear, as the paper, and k-NN) and `sslkd eval analyze` "
               "(Sec. 4.4: alignment, uniformity, CKA) over every run of the table"),
    *(table for version in ("v2", "v3") for table in proxy_tables(version)),
    Table("dogo_table1_v3", "DoGo Table 1", "each model alone (SimCLR) vs in a DoGo pair, CPU proxy v3", DOGO_V3,
          DOGO_V3[:2], (DOGO_PROBE,), compare="dogo_table1", runs="v3_baselines", proxy_minutes=None,
          claims=dogo_v3_claims(),
          note="proxy only; the SimCLR ResNet-20 runs are v3_baselines' (shared); k-NN claims, the DoGo linear probe "
               "beside them"),
    Table("sdssl_table1_v3", "SDSSL Table 1", "SimCLR, BYOL and MoCo v3 with and without self-distillation of "
          "every residual block, final layer and per layer, CPU proxy v3 (on a ResNet-20)", SDSSL_V3, SDSSL_V3[:1],
          (Evaluation("multiexit_knn", ("multiexit", "--protocol", "knn"), per_table=True),),
          compare="sdssl_table1", proxy_minutes=None, claims=sdssl_v3_claims(),
          note="proxy only: on a CIFAR ResNet-20 (zoo_configs/_base_/sdssl_proxy_v3_resnet20.yaml says why)"),
    mcl_v3_table("mcl_table1_v3", "resnet20_x2", "two nets of the same architecture: Baseline, DML, MCL, L-MCL"),
    mcl_v3_table("mcl_table2_v3", "resnet20_resnet32",
                 "two nets of different architectures: Baseline, DML, MCL, L-MCL"),
    Table("quickstart", "Quickstart", "`sslkd train --method mokd` (the package's default MOKD config, embedded "
          "digits) over seeds: each member against its own random-init floor",
          (QUICKSTART,), compare="runs", proxy_minutes=None,
          claims=tuple(Claim(f"quickstart {m} above its random-init floor", (_stem(QUICKSTART), m))
                       for m in ("vit_s", "vit_t")),
          note="proxy only: the quickstart's claim, checked over seeds"),
)}


# ------------------------------------------------------------------------------------------------ running
class Interrupted(Exception):
    """A training or evaluation was interrupted (Ctrl-C): what finished is kept, run the same command again."""


def sslkd(argv: list[str]) -> None:
    """One sslkd command in this process; an error or an interrupt stops the table."""
    from sslkd.cli import main

    status = main(argv)
    if status == 130:
        raise Interrupted(" ".join(argv))
    if status != 0:
        raise UserError(f"`sslkd {' '.join(argv)}` failed (exit {status}); fix it and run the same command again")


RECORD_FILES = ("summary.json", "config.yaml", "metrics.jsonl")


def train(config: str, run_dir: Path, overrides: list[str], log, records: Path | None = None) -> str:
    """Skip a finished run, restore one finished elsewhere from its committed ``records`` (a fresh clone has no
    runs/), resume an interrupted one, else start it; returns what it did."""
    if (run_dir / "summary.json").is_file():
        log(f"skip    {run_dir} (finished)")
        return "skip"
    if records is not None and (records / "summary.json").is_file() and not (run_dir / "checkpoints").is_dir():
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in RECORD_FILES:
            if (records / name).is_file():
                shutil.copy2(records / name, run_dir / name)
        log(f"restore {run_dir} (finished; records from {records})")
        return "restore"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        log(f"resume  {run_dir}")
        sslkd(["train", "--resume", str(run_dir)])
        return "resume"
    log(f"train   {run_dir}")
    sslkd(["train", "--config", config, "--output-dir", str(run_dir), "--overwrite", *overrides])
    return "train"


def evaluate(evaluation: Evaluation, run_dir: Path, partner: Path | None, proxy: bool, log) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    if evaluation.key in summary.get("evals", {}):
        log(f"skip    {evaluation.key} of {run_dir} (recorded)")
        return "skip"
    argv = ["eval", *evaluation.args, *(evaluation.proxy_args if proxy else ()), "--checkpoint", str(run_dir),
            "--record", "--key", evaluation.key]
    if evaluation.member:
        argv += ["--member", evaluation.member]
    if partner is not None:
        argv += ["--other-checkpoint", str(partner)] + (["--other-member", evaluation.other_member]
                                                          if evaluation.other_member else [])
    log(f"eval    {evaluation.key} of {run_dir}")
    sslkd(argv)
    return "eval"


TABLE_EVAL_RECORD = "reproduce.json"  # the runs a per-table evaluation covered and its wall time


def evaluate_table(evaluation: Evaluation, plan: Plan, log) -> str:
    """One command over every run of the table; redone when the table has gained runs (e.g. more seeds)."""
    out = plan.table_eval_dir(evaluation.key)
    runs = [run for run, _ in _eval_targets(plan, evaluation)]
    names = [run.relative_to(plan.out).as_posix() for run in runs]
    record = out / TABLE_EVAL_RECORD
    if out.is_dir() and any(out.iterdir()) and (not record.is_file()
                                                or json.loads(record.read_text()).get("runs") == names):
        log(f"skip    {evaluation.key} of {plan.table.name} ({out} exists)")
        return "skip"
    log(f"eval    {evaluation.key} of {len(runs)} runs -> {out}")
    # written beside and renamed when complete: an interrupted command leaves no directory that looks done
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    start = time.perf_counter()
    sslkd(["eval", *evaluation.args, *(evaluation.proxy_args if plan.proxy else ()),
           "--checkpoints", *map(str, runs), "--out", str(partial)])
    (partial / TABLE_EVAL_RECORD).write_text(json.dumps({"runs": names,
                                                         "wall_time_s": round(time.perf_counter() - start, 1)}))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return "eval"


@dataclass
class Plan:
    table: Table
    proxy: bool
    seeds: list[int]
    out: Path
    results: Path
    actions: list[tuple[str, str]] = field(default_factory=list)

    @property
    def suffix(self) -> str:
        return "_proxy" if self.proxy else ""

    def configs(self) -> tuple[str, ...]:
        return self.table.configs if self.proxy else self.table.paper_configs

    def evaluations(self) -> tuple[Evaluation, ...]:
        if self.proxy or self.table.paper_evaluations is None:
            return self.table.evaluations
        return self.table.paper_evaluations

    def floors(self) -> tuple[str, ...]:
        return self.table.random_init if self.proxy else ()

    def records(self, run_dir: Path) -> Path:
        """Where a run's records are committed: results/[proxy_]<runs>/<run path below out>."""
        return self.results / f"{'proxy_' if self.proxy else ''}{self.table.run_group}" / run_dir.relative_to(self.out)

    def table_eval_dir(self, key: str) -> Path:
        """Where a per-table evaluation writes: results/<table>[_proxy]_<key>."""
        return self.results / f"{self.table.name}{self.suffix}_{key}"


def _resolve(config: str) -> str:
    path = Path(config)
    return str(path if path.is_absolute() else ROOT / path)


def check(plan: Plan) -> None:
    configs = plan.configs()
    if not configs:
        raise UserError(f"{plan.table.name} has no {'proxy' if plan.proxy else 'paper-scale'} configs "
                        f"({plan.table.note or 'see --list'}); choose another table or scale")
    missing = [c for c in (*configs, *plan.floors()) if not Path(_resolve(c)).is_file()]
    if missing:
        raise UserError(f"{plan.table.name}: config(s) {', '.join(missing)} do not exist yet; write them first "
                        "(see tools/reproduce.py --list)")


def run_plan(plan: Plan, log=print) -> list[tuple[str, str]]:
    """Train, evaluate, copy the run records and write the tables; returns the (action, target) done."""
    check(plan)
    table = plan.table
    for config in plan.floors():
        run_dir = plan.out / "random_init" / _stem(config)
        plan.actions.append((train(_resolve(config), run_dir, [*table.overrides, "--random-init"], log,
                                   plan.records(run_dir)), str(run_dir)))
    for seed in plan.seeds:
        for config in plan.configs():
            run_dir = plan.out / _stem(config) / f"seed{seed}"
            plan.actions.append((train(_resolve(config), run_dir, [*table.overrides, f"train.seed={seed}"], log,
                                       plan.records(run_dir)), str(run_dir)))
    for evaluation in plan.evaluations():
        if evaluation.per_table:
            plan.actions.append((evaluate_table(evaluation, plan, log), evaluation.key))
            continue
        for run_dir, seed in _eval_targets(plan, evaluation):
            partner = None
            if evaluation.other:
                partner = (plan.out / "random_init" / evaluation.other if seed is None
                           else plan.out / evaluation.other / f"seed{seed}")
                if not (partner / "summary.json").is_file():
                    log(f"skip    {evaluation.key} of {run_dir} (partner {partner} is not part of this table)")
                    continue
            plan.actions.append((evaluate(evaluation, run_dir, partner, plan.proxy, log),
                                 f"{evaluation.key}:{run_dir}"))
    write_results(plan, log)
    return plan.actions


def _eval_targets(plan: Plan, evaluation: Evaluation | None = None) -> list[tuple[Path, int | None]]:
    """(run directory, seed; None for a floor) of every run the evaluation covers; no evaluation: every run."""
    stems = [_stem(c) for c in plan.configs()]
    wanted = set(evaluation.configs) if evaluation is not None and evaluation.configs else set(stems)
    targets = [(plan.out / stem / f"seed{seed}", seed) for seed in plan.seeds for stem in stems if stem in wanted]
    if evaluation is None or evaluation.floor:
        targets += [(plan.out / "random_init" / _stem(c), None) for c in plan.floors() if _stem(c) in wanted]
    return targets


def write_results(plan: Plan, log) -> None:
    """Copy every run's records to results/, write the tables and the wall-time account; print the table."""
    for run_dir in sorted(p.parent for p in plan.out.rglob("summary.json")):
        target = plan.records(run_dir)
        target.mkdir(parents=True, exist_ok=True)
        for name in RECORD_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, target / name)
    write_tables(plan, log)


def check_records(plan: Plan) -> None:
    """Every run and per-table evaluation of the plan is in plan.out (the records in results/) before tabling."""
    missing = [str(run) for run, _ in _eval_targets(plan) if not (run / "summary.json").is_file()]
    missing += [plan.table_eval_dir(e.key).name for e in plan.evaluations()
                if e.per_table and not plan.table_eval_dir(e.key).is_dir()]
    if missing:
        raise UserError(f"--tables-only: {', '.join(missing)} not in {plan.results}; run the table without "
                        "--tables-only to make them")


def write_tables(plan: Plan, log) -> None:
    """The table, its runs, its random-init floors and its wall-time account from the run records in plan.out."""
    from sslkd.report import compare

    table = plan.table
    run_dirs = sorted(p.parent for p in plan.out.rglob("summary.json"))
    ours = [plan.out / _stem(c) for c in plan.configs() if any((plan.out / _stem(c)).glob("*/summary.json"))]
    floors = plan.out / "random_init"
    stem = plan.results / f"{table.name}{plan.suffix}"
    outputs = {f"{stem}.md": (ours, table.compare, "md"), f"{stem}.csv": (ours, table.compare, "csv"),
               f"{stem}_runs.md": (ours, "runs", "md")}
    if floors.is_dir() and any(floors.rglob("summary.json")):
        outputs[f"{stem}_random_init.md"] = ([floors], "runs", "md")
    for path, (dirs, name, fmt) in outputs.items():
        Path(path).write_text(compare(dirs, table=name, fmt=fmt))
    if table.claims:
        Path(f"{stem}_verdicts.md").write_text(verdicts(plan))
    wall = wall_times(plan, run_dirs)
    Path(f"{stem}_wall.md").write_text(wall)
    log(Path(f"{stem}.md").read_text())
    log(wall)


def claim_values(plan: Plan, claim: Claim) -> tuple[list[float], list[float]]:
    """Per recorded seed: the treated member's metric and the baseline's (or the treated run's floor)."""
    def value(summary: dict, member: str, metric: str) -> float | None:
        record = summary["members"].get(member, {})
        for key in metric.split("."):
            record = record.get(key) if isinstance(record, dict) else None
        return record

    def seeds(stem: str) -> list[dict]:
        runs = sorted((plan.out / stem).glob("seed*/summary.json"), key=lambda p: int(p.parent.name[4:]))
        return [json.loads(p.read_text()) for p in runs]

    treated_runs = seeds(claim.treated[0])
    if claim.baseline is None:
        floor_run = plan.out / "random_init" / claim.treated[0] / "summary.json"
        floor_run = json.loads(floor_run.read_text()) if floor_run.is_file() else {}

        def floor(summary: dict) -> float | None:
            """The run's own step-0 floor; runs older than per-run floors take the random-init run of their seed."""
            own = value(summary, claim.treated[1], f"random_init.{claim.metric}")
            if own is None and floor_run.get("seed") == summary.get("seed"):
                return value(floor_run, claim.treated[1], claim.metric)
            return own

        pairs = [(value(s, claim.treated[1], claim.metric), floor(s)) for s in treated_runs]
        pairs = [(t, b) for t, b in pairs if t is not None and b is not None]
        return [t for t, _ in pairs], [b for _, b in pairs]
    treated = [value(s, claim.treated[1], claim.metric) for s in treated_runs]
    baseline = [value(s, claim.baseline[1], claim.metric) for s in seeds(claim.baseline[0])]
    return [v for v in treated if v is not None], [v for v in baseline if v is not None]


def verdicts(plan: Plan) -> str:
    """Each claim of the table with both sides (mean +- std over the recorded seeds), the difference, its 95%
    confidence interval and the verdict (sslkd.report.verdicts)."""
    from sslkd.report.verdicts import judge, verdict_table

    results = [judge(c.text, *claim_values(plan, c), paired=c.baseline is None, direction=c.direction,
                     threshold=c.threshold) for c in plan.table.claims]
    return (f"**{plan.table.paper}{' (CPU proxy)' if plan.proxy else ''}: claims and verdicts**\n\n"
            + verdict_table(results, "measured", "compared with") + "\n- k-NN top-1 (weighted, k=20) of the "
            "evaluated encoder; 'compared with' is the run's own random-init floor (paired t over seeds) or another "
            "run (Welch t). The verdict reads the 95% interval of the difference: it excludes 0 on the paper's side "
            "(reproduced), on the other (reversed), or contains it (within noise).\n")


def wall_times(plan: Plan, run_dirs: list[Path]) -> str:
    """Per run: training wall time (summary.json) and the evaluations recorded for this table; the total."""
    keys = {e.key for e in plan.evaluations()}
    configs = {_stem(c) for c in (*plan.configs(), *plan.floors())}
    lines = ["| run | training (min) | evaluations (min) |", "|---|---|---|"]
    total = 0.0
    for run_dir in run_dirs:
        relative = run_dir.relative_to(plan.out)
        run_name = relative.parent if relative.parts[0] != "random_init" else relative.relative_to("random_init")
        if run_name.as_posix() not in configs:
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        training = float(summary.get("wall_time_s") or 0.0)
        evals = sum(float(v.get("wall_time_s", 0.0)) for k, v in summary.get("evals", {}).items() if k in keys)
        total += training + evals
        lines.append(f"| {relative} | {training / 60:.1f} | {evals / 60:.1f} |")
    for evaluation in plan.evaluations():
        if not evaluation.per_table:
            continue
        record = plan.table_eval_dir(evaluation.key) / TABLE_EVAL_RECORD
        if not record.is_file():
            lines.append(f"| {evaluation.key} over all runs | | not recorded |")
            continue
        seconds = float(json.loads(record.read_text())["wall_time_s"])
        total += seconds
        lines.append(f"| {evaluation.key} over all runs | | {seconds / 60:.1f} |")
    lines.append(f"| **total** | | **{total / 60:.1f} min** |")
    return (f"**{plan.table.paper}{' (CPU proxy)' if plan.proxy else ''}: wall time per run**\n\n"
            + "\n".join(lines) + "\n\n- training: summary.json wall_time_s (the loop only, without the run-end "
            "k-NN); evaluations: the sslkd eval commands of this table\n")


# ------------------------------------------------------------------------------------------------ listing
def measured_minutes(table: Table) -> float | None:
    """The total of the table's last proxy wall-time account in results/, if it was run."""
    wall = ROOT / "results" / f"{table.name}_proxy_wall.md"
    if not wall.is_file():
        return None
    total = re.search(r"\*\*total\*\* \| \| \*\*([0-9.]+) min\*\*", wall.read_text())
    return float(total.group(1)) if total else None


def listing() -> str:
    lines, width = [], max(map(len, TABLES))
    for table in TABLES.values():
        proxy_state = "no proxy configs"
        if table.configs:
            missing = [c for c in (*table.configs, *table.random_init) if not (ROOT / c).is_file()]
            measured = measured_minutes(table)
            proxy_state = (f"{measured:g} min measured (results/{table.name}_proxy_wall.md, shared runs included)"
                           if measured is not None else
                           f"~{table.proxy_minutes:g} min on 2 CPU cores (3 seeds, estimate)" if table.proxy_minutes else
                           "cost not measured") + (f"; MISSING configs: {', '.join(missing)}" if missing else "")
        shared = f" [runs shared with {table.runs}]" if table.runs else ""
        lines.append(f"{table.name:{width}s} {table.paper}: {table.about}{shared}")
        lines.append(f"{'':{width}s}   paper scale: {table.paper_cost or 'n/a'} "
                     f"({len(table.paper_configs)} paper configs)")
        lines.append(f"{'':{width}s}   proxy scale: {proxy_state}")
        if table.note:
            lines.append(f"{'':{width}s}   note: {table.note}")
    return "\n".join(lines)


def load_spec(path: str) -> Table:
    """A table from a YAML/JSON file with Table's fields (evaluations as mappings of Evaluation's fields)."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict) or "name" not in raw:
        raise UserError(f"{path} is not a table spec: it needs at least name, paper, about and configs")
    known = {f.name for f in dataclasses.fields(Table)}
    unknown = set(raw) - known
    if unknown:
        raise UserError(f"unknown table-spec key(s) {', '.join(sorted(unknown))} in {path}; known: "
                        f"{', '.join(sorted(known))}")
    evaluations = tuple(Evaluation(**{k: tuple(v) if isinstance(v, list) else v for k, v in e.items()})
                        for e in raw.pop("evaluations", []) or [])
    claims = tuple(Claim(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
                   for c in raw.pop("claims", []) or [])
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return Table(**{"paper": raw["name"], "about": "", **fields, "evaluations": evaluations, "claims": claims})


def with_data_root(table: Table, data_root: str) -> Table:
    """The table training on ``data_root`` (made absolute here, since the runs start from the repository root); a run's
    data root is a path, not a setting, so its runs group with runs made on another copy of the same data."""
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"--data-root '{data_root}' does not exist (resolved: {root}); build the CIFAR-10 subset with "
                        f"`sslkd data cifar10-subset --cifar10 DIR --out {data_root}`")
    return dataclasses.replace(table, overrides=(*table.overrides, f"data.root={root}"))


def main(argv: list[str] | None = None, log=print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", nargs="?", help="table name (see --list)")
    parser.add_argument("--list", action="store_true", help="list every table with its cost")
    parser.add_argument("--proxy", action="store_true", help="the CPU-proxy version (default: paper scale)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--spec", help="read the table from this YAML/JSON file instead of the built-in list")
    parser.add_argument("--out", help="run directory root (default runs/proxy_<runs> or runs/<runs>)")
    parser.add_argument("--results", default=str(ROOT / "results"), help="results directory (default results/)")
    parser.add_argument("--data-root", help="train on the data here instead of the configs' data.root (e.g. the "
                        "CIFAR-10 subset built by `sslkd data cifar10-subset`); relative to the current folder")
    parser.add_argument("--tables-only", action="store_true",
                        help="rebuild the table files from the run records in results/ (no training, no evaluation;"
                             " works on a fresh clone)")
    args = parser.parse_args(argv)
    if args.list:
        log(listing())
        return 0
    try:
        if args.spec:
            table = load_spec(args.spec)
        elif args.table in TABLES:
            table = TABLES[args.table]
        else:
            raise UserError(f"unknown table {args.table!r}; known: {', '.join(TABLES)} (or pass --spec FILE)")
        if args.seeds < 1:
            raise UserError(f"--seeds {args.seeds}: need at least one seed")
        if args.data_root:
            table = with_data_root(table, args.data_root)
        group = f"proxy_{table.run_group}" if args.proxy else table.run_group
        results = Path(args.results).resolve()
        out = results / group if args.tables_only else Path(args.out).resolve() if args.out else ROOT / "runs" / group
        plan = Plan(table, args.proxy, list(range(args.seeds)), out, results)
        plan.results.mkdir(parents=True, exist_ok=True)
        start, cwd = time.perf_counter(), os.getcwd()
        os.chdir(ROOT)  # the configs' data roots (../shared/data/...) are relative to the repository root
        try:
            if args.tables_only:
                check(plan)
                check_records(plan)
                write_tables(plan, log)
            else:
                try:
                    run_plan(plan, log)
                except Interrupted:
                    write_results(plan, log)  # what finished is recorded and tabled; the rest continues next call
                    raise
        finally:
            os.chdir(cwd)
        log(f"done in {(time.perf_counter() - start) / 60:.1f} min this session")
    except UserError as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"reproduce: interrupted during `sslkd {exc}`; run the same command again to continue",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
