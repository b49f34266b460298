"""tools/bench_kernel_options.py: both sides of every option do the same work, and a step runs."""

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location(
    "bench_kernel_options", Path(__file__).resolve().parents[1] / "tools" / "bench_kernel_options.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("option", ["channels_last", "onednn_linear", "members_in_threads", "views_in_one_pass",
                                    "small_blocks_nchw"])
def test_both_sides_push_the_same_images_through_the_same_models(option):
    args = argparse.Namespace(model="resnet18", small_image_stem=True, size=16, batch=2, option=option, threads=1)
    sides = [bench.Side(args, side) for side in ("baseline", option)]
    images = [len(side.models) * sum(view.shape[0] for view in side.views) for side in sides]
    parameters = [sum(p.numel() for model in side.models for p in model.parameters()) for side in sides]
    batches_per_step = {"channels_last": 1, "onednn_linear": 1, "members_in_threads": 4, "views_in_one_pass": 2,
                        "small_blocks_nchw": 1}[option]
    assert images[0] == images[1] == 2 * batches_per_step
    assert parameters[0] == parameters[1]
    assert all(side.step_seconds() > 0 for side in sides)


def test_small_blocks_option_compares_channels_last_with_nchw_small_blocks():
    """The baseline of small_blocks_nchw is channels-last throughout; the variant's last stage is NCHW at batch 2."""
    args = argparse.Namespace(model="resnet18", small_image_stem=True, size=32, batch=2, option="small_blocks_nchw",
                              threads=1)
    baseline, variant = (bench.Side(args, side).models[0] for side in ("baseline", "small_blocks_nchw"))
    for model, nchw_last_stage in ((baseline, False), (variant, True)):
        stem = model.model.conv1.weight
        last = model.model.layer4[1].conv2.weight
        assert stem.is_contiguous(memory_format=torch.channels_last)
        assert last.is_contiguous() is nchw_last_stage
