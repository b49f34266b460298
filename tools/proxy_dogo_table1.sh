#!/usr/bin/env bash
# CPU-proxy DoGo Table 1: a CIFAR ResNet-56 + ResNet-20 pair trained with DoGo against each backbone trained alone
# with SimCLR, on the CIFAR-10 subset, 3 seeds, plus the random-initialisation floor. Resumable: finished runs are
# skipped and interrupted ones resumed, so it can run in parts. Writes results/dogo_table1_proxy{.md,.csv,_runs.md,
# _random_init.md} and copies each run's summary.json, config.yaml and metrics.jsonl to results/proxy_dogo_table1/.
#   usage: tools/proxy_dogo_table1.sh            (env: OUT=runs/proxy_dogo_table1 SEEDS="0 1 2")
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/proxy_dogo_table1}
SEEDS=${SEEDS:-"0 1 2"}
BASELINES="zoo_configs/simclr/proxy_cifar10_subset_resnet20.yaml zoo_configs/simclr/proxy_cifar10_subset_resnet56.yaml"
CONFIGS="$BASELINES zoo_configs/dogo/proxy_cifar10_subset_resnet56_resnet20.yaml"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # idle OpenMP threads sleep: 4-5x faster when the cores are shared

run() {  # run CONFIG DIR [overrides...]: skip if finished, resume if interrupted, else start
  local config=$1 dir=$2; shift 2
  if [ -f "$dir/summary.json" ]; then return; fi
  if [ -f "$dir/checkpoints/last.pt" ]; then sslkd train --resume "$dir"; else sslkd train --config "$config" --output-dir "$dir" --overwrite "$@"; fi
}

for config in $BASELINES; do
  run "$config" "$OUT/random_init/$(basename "$config" .yaml)" train.epochs=0
done
for seed in $SEEDS; do
  for config in $CONFIGS; do
    run "$config" "$OUT/$(basename "$config" .yaml)/seed$seed" train.seed="$seed"
  done
done
mkdir -p results/proxy_dogo_table1
(cd "$OUT" && find . -name summary.json -printf '%h\n') | while read -r run_dir; do
  mkdir -p "results/proxy_dogo_table1/$run_dir"
  cp "$OUT/$run_dir"/{summary.json,config.yaml,metrics.jsonl} "results/proxy_dogo_table1/$run_dir/"
done
sslkd compare "$OUT" --table dogo_table1 --format md --output results/dogo_table1_proxy.md > /dev/null
sslkd compare "$OUT" --table dogo_table1 --format csv --output results/dogo_table1_proxy.csv > /dev/null
sslkd compare "$OUT" --table runs --format md --output results/dogo_table1_proxy_runs.md > /dev/null
sslkd compare "$OUT/random_init" --table runs --format md --output results/dogo_table1_proxy_random_init.md > /dev/null
cat results/dogo_table1_proxy.md results/dogo_table1_proxy_runs.md
