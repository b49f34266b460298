"""tools/gpu_check.py without a GPU: it plans every registered strategy, every planned config loads, and a run
without CUDA ends with one clear line and status 2."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import gpu_check  # noqa: E402


def test_every_registered_strategy_has_a_paper_config_that_loads():
    assert sorted(gpu_check.registered_strategies()) == sorted(gpu_check.PAPER_CONFIGS)
    for method, config in gpu_check.PAPER_CONFIGS.items():
        cfg = gpu_check.paper_config(config, "bf16", max_batch=64, device="cpu")
        assert cfg.method == method and cfg.train.batch_size <= 64


def test_plan_needs_no_gpu(capsys):
    assert gpu_check.main(["--plan", "--methods", "dino", "mokd"]) == 0
    out = capsys.readouterr().out
    assert "tests/test_cuda_paths.py" in out and "mokd: zoo_configs/mokd/" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_cuda_it_says_so_and_exits_2(capsys):
    assert gpu_check.main(["--skip-tests"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
