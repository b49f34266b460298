"""Speed work must not change what is computed: the fast view pipeline draws and applies exactly torchvision's v2
transforms, and the precision / channels-last / compile options train the same models."""

import pytest
import torch
from conftest import step_past_warmup
from torchvision.transforms import v2

from sslkd.config import TrainConfig
from sslkd.data.transforms import (
    MultiCropTransform,
    SimCLRTransform,
    ViewAugment,
    blur_kernel_size,
)
from sslkd.engine.performance import channels_last_safe, prepare_members, small_wide_blocks
from sslkd.models.kernels import autocast_dtype
from sslkd.engine.trainer import Trainer
from sslkd.errors import UserError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def reference_compose(size, jitter, blur_p, solarize_p):
    """The view as a plain v2.Compose (colour ops in float, hence the solarise threshold 128/255)."""
    ops = [
        v2.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([v2.ColorJitter(*jitter)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size), sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128 / 255, p=solarize_p))
    return v2.Compose(ops + [v2.Normalize(list(MEAN), list(STD))])


@pytest.mark.parametrize("size,jitter,blur_p,solarize_p", [
    (32, (0.4, 0.4, 0.2, 0.1), 1.0, 0.0),
    (32, (0.4, 0.4, 0.2, 0.1), 0.1, 0.2),
    (16, (0.8, 0.8, 0.8, 0.2), 0.5, 0.5),
    (80, (0.4, 0.4, 0.2, 0.1), 1.0, 0.0),  # above the small-image blur path
])
def test_fast_view_is_the_v2_pipeline(size, jitter, blur_p, solarize_p):
    image = (torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    fast = ViewAugment(size, (0.25, 1.0), jitter, 0.8, 0.2, blur_p, (0.1, 2.0), solarize_p, MEAN, STD,
                       v2.InterpolationMode.BICUBIC)
    reference = reference_compose(size, jitter, blur_p, solarize_p)
    for seed in range(40):
        torch.manual_seed(seed)
        ours = fast(image)
        torch.manual_seed(seed)
        theirs = reference(image)
        assert ours.shape == (3, size, size)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert torch.backends.mkldnn.enabled  # the small-image blur restores oneDNN


@pytest.mark.parametrize("transform", [MultiCropTransform(32, 16, n_local=2), SimCLRTransform(32)])
def test_views_depend_only_on_the_seed(transform):
    image = (torch.rand(3, 32, 32) * 255).to(torch.uint8)
    torch.manual_seed(3)
    first = transform(image)
    torch.manual_seed(3)
    again = transform(image)
    torch.manual_seed(4)
    other = transform(image)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_precision_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(TrainConfig(), cpu) is None
    assert autocast_dtype(TrainConfig(), cuda) == torch.float16
    assert autocast_dtype(TrainConfig(amp=False), cuda) is None
    assert autocast_dtype(TrainConfig(precision="bf16"), cpu) == torch.bfloat16
    with pytest.raises(UserError, match="fp16-amp needs a GPU"):
        autocast_dtype(TrainConfig(precision="fp16-amp"), cpu)


def _weights(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("method", ["dino", "mokd"])
def test_bf16_autocast_trains_on_cpu(tiny_cfg, tmp_path, method):
    trainer = Trainer(tiny_cfg(method, ["train.precision=bf16", "train.device=cpu"]), tmp_path)
    assert trainer.autocast_dtype == torch.bfloat16 and not trainer.use_amp
    before = _weights(trainer.strategy)
    losses = step_past_warmup(trainer)
    assert losses is not None and torch.isfinite(losses["loss"])
    after = trainer.strategy.state_dict()
    for name in trainer.strategy.members:
        key = next(k for k in before if k.startswith(f"members.{name}.student.") and k.endswith("weight"))
        assert not torch.equal(before[key], after[key])  # the student moved
        assert after[key].dtype == torch.float32  # autocast leaves the master weights in fp32


def test_channels_last_cnn_weights_and_same_step(tiny_cfg, tmp_path):
    """Channels-last CNN members (student and teacher) compute the step the NCHW model computes."""
    results = {}
    for layout in ("true", "false"):
        trainer = Trainer(tiny_cfg("dino", [f"train.channels_last={layout}", "train.device=cpu",
                                            "members.cnn.backbone_args={widths: [8, 8, 16]}"]), tmp_path / layout)
        member = trainer.strategy.members["cnn"]
        convs = [m.weight for m in member.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) == (layout == "true") for w in convs)
        losses = step_past_warmup(trainer)
        results[layout] = (losses["loss"].detach(), _weights(member))
    torch.testing.assert_close(results["true"][0], results["false"][0], rtol=1e-4, atol=1e-5)
    for key, value in results["false"][1].items():
        torch.testing.assert_close(results["true"][1][key], value, rtol=1e-3, atol=1e-4)


def test_small_wide_blocks_are_the_last_stage_of_a_small_batch():
    """ResNet-18 at 32 px: its last stage (512 channels, 4x4 maps) has 256 positions at batch 16 and 1024 at batch
    64; narrower stages never count; the probe pass leaves batch-norm statistics and the training mode alone."""
    from sslkd.models.backbones import build_backbone

    backbone = build_backbone("resnet18", small_image_stem=True).train()
    statistics = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    assert small_wide_blocks(backbone, 16, 32, 1024) == ["layer4.0", "layer4.1"]
    assert small_wide_blocks(backbone, 32, 32, 1024) == ["layer4.0", "layer4.1"]
    assert small_wide_blocks(backbone, 64, 32, 1024) == []
    assert small_wide_blocks(backbone, 4, 32, 1024) == ["layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    assert small_wide_blocks(backbone, 16, 32, 0) == []
    assert backbone.training
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in statistics.items())
    narrow = build_backbone("cifar_resnet20")
    assert small_wide_blocks(narrow, 1, 8, 10**9) == []
    depthwise = build_backbone("efficientnet_b0")  # 1152-wide depthwise convolutions: not dense, never picked
    assert small_wide_blocks(depthwise, 1, 32, 10**9) == []


def test_small_wide_blocks_run_nchw_and_compute_the_same_step(tiny_cfg, tmp_path):
    """A CNN whose last stage is 256 wide at 8x8 x 4 images: that stage's weights are NCHW in student and teacher,
    the rest channels-last, its input turns NCHW; the step equals the all-channels-last and the all-NCHW steps."""
    wide = ["train.device=cpu", "train.batch_size=4", "members.cnn.backbone_args={widths: [8, 16, 256]}"]
    results = {}
    for name, extra in (("mixed", []), ("channels_last", ["train.channels_last_min_positions=0"]),
                        ("nchw", ["train.channels_last=false"])):
        trainer = Trainer(tiny_cfg("dino", wide + extra), tmp_path / name)
        member = trainer.strategy.members["cnn"]
        for backbone in (member.student["backbone"], member.teacher.module["backbone"]):
            for block_name, block in backbone.blocks():
                weight = block.conv1.weight
                nchw = name == "nchw" or (name == "mixed" and block_name.startswith("stages.2"))
                assert weight.is_contiguous(memory_format=torch.channels_last) is not nchw, (name, block_name)
        seen = {"student": [], "teacher": []}
        backbones = {"student": member.student["backbone"], "teacher": member.teacher.module["backbone"]}
        for model, backbone in backbones.items():
            dict(backbone.blocks())["stages.2.0"].register_forward_pre_hook(
                lambda module, args, model=model: seen[model].append(args[0].is_contiguous()))
        losses = step_past_warmup(trainer)
        for model, inputs in seen.items():
            assert inputs and all(inputs) is (name != "channels_last"), (name, model, inputs)
        results[name] = (losses["loss"].detach(), _weights(member))
    for name in ("channels_last", "nchw"):
        torch.testing.assert_close(results["mixed"][0], results[name][0], rtol=1e-4, atol=1e-5)
        for key, value in results[name][1].items():
            torch.testing.assert_close(results["mixed"][1][key], value, rtol=1e-3, atol=1e-4)


def test_channels_last_left_out_where_onednn_breaks(tiny_cfg, tmp_path):
    """A strided 1x1 shortcut reading 4 channels corrupts oneDNN's AVX2 channels-last backward: that CNN stays NCHW
    (and trains), a slightly wider one goes channels-last."""
    for widths, expected in (("[4, 8, 8]", False), ("[8, 8, 16]", True)):
        trainer = Trainer(tiny_cfg("dino", ["train.channels_last=true", "train.device=cpu",
                                            f"members.cnn.backbone_args={{widths: {widths}}}"]), tmp_path / widths)
        member = trainer.strategy.members["cnn"]
        assert channels_last_safe(member) is expected
        stem = next(m.weight for m in member.modules() if isinstance(m, torch.nn.Conv2d))
        assert stem.is_contiguous(memory_format=torch.channels_last) is expected
        assert torch.isfinite(step_past_warmup(trainer)["loss"])


def test_compile_option_wraps_backbones_and_heads_keeping_checkpoint_keys(tiny_cfg):
    from sslkd.data import build_dataset
    from sslkd.registry import STRATEGIES

    cfg = tiny_cfg("dino", ["train.compile=true"])
    strategy = STRATEGIES.get("dino")(cfg, build_dataset("digits", None, "train").info)
    keys = list(strategy.state_dict())
    prepare_members(strategy, cfg.train)
    member = strategy.members["cnn"]
    for model in (member.student, member.teacher.module):
        assert hasattr(model["backbone"].forward_tokens, "_torchdynamo_orig_callable")
        assert model["dino"]._compiled_call_impl is not None
    assert list(strategy.state_dict()) == keys
