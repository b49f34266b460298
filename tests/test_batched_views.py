"""data.augment.batched: views of a whole batch from each item's seed, equal to the per-image pipeline's up to the
crop's resampling kernel."""

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from sslkd.data.batched import BatchedViews, adjust_hue, gaussian_blur
from sslkd.data.sampling import seed_views
from sslkd.data.transforms import MultiCropTransform, SimCLRTransform, SupervisedTransform
from sslkd.errors import UserError


def _items(n=24, size=32):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator), i % 10, i, 1000 + 7 * i)
            for i in range(n)]


def _per_image(transform, items):
    views = []
    for image, _, _, seed in items:
        with torch.random.fork_rng(devices=[]):
            seed_views(seed)
            views.append(transform(image))
    return [torch.stack([v[k] for v in views]) for k in range(len(views[0]))]


def _whole_image_crops(transform):
    for view in transform.view_sequence():
        view.crop.scale, view.crop.ratio = (1.0, 1.0), (1.0, 1.0)
    return transform


@pytest.mark.parametrize("transform", [
    SimCLRTransform(32, jitter=(0.4, 0.4, 0.2, 0.1), blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2)),
    MultiCropTransform(32, 16, n_local=0, interpolation=v2.InterpolationMode.BILINEAR),
], ids=["byol_views", "dino_global_views"])
def test_same_draws_and_colour_ops_as_the_per_image_pipeline(transform):
    """With the crop fixed to the whole image, every other op (flip, jitter in each item's order, grayscale, blur,
    solarise, normalise) gives the per-image views to float rounding."""
    transform = _whole_image_crops(transform)
    items = _items()
    views, labels, indices = BatchedViews(transform)(items)
    reference = _per_image(transform, items)
    assert len(views) == len(reference) == 2
    for got, want in zip(views, reference):
        assert got.shape == want.shape == (24, 3, 32, 32)
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    assert labels.tolist() == [i % 10 for i in range(24)] and indices.tolist() == list(range(24))


def test_random_crops_resample_like_bilinear_resize():
    """Random crops enlarged to the view size (a 32-px CIFAR view): roi_align's bilinear samples against
    TF.resized_crop's bilinear interpolation, with no colour ops. They sample the same points; the per-image
    pipeline rounds to uint8 and clamps at the crop's border, where roi_align reads the pixels beyond it, so the
    outer 3 pixels differ more."""
    transform = SimCLRTransform(32, scale=(0.14, 1.0), jitter_p=0.0, gray_p=0.0)
    items = _items()
    got = BatchedViews(transform)(items)[0][0]
    want = _per_image(transform, items)[0]
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    assert (got - want)[inner].abs().max() < 2.5 / 255 / 0.2  # uint8 rounding, in normalised units


def test_views_depend_only_on_each_items_seed():
    transform = MultiCropTransform(32, 16, n_local=2)
    items = _items()
    views = BatchedViews(transform)(items)[0][0]
    reordered = BatchedViews(transform)(items[::-1])[0][0]
    torch.testing.assert_close(reordered, views.flip(0), rtol=0, atol=0)
    assert not torch.equal(views[0], views[1])


def test_per_item_hue_and_blur_match_torchvision():
    x = torch.rand(3, 3, 16, 16)
    hues, sigmas = torch.tensor([-0.3, 0.0, 0.45]), torch.tensor([0.1, 0.8, 2.0])
    for i in range(3):
        torch.testing.assert_close(adjust_hue(x, hues)[i], TF.adjust_hue_image(x[i], float(hues[i])), atol=1e-5,
                                   rtol=0)
        torch.testing.assert_close(gaussian_blur(x, 3, sigmas)[i],
                                   TF.gaussian_blur_image(x[i], [3, 3], [float(sigmas[i])] * 2), atol=1e-6, rtol=0)


def test_refused_where_it_cannot_apply():
    with pytest.raises(UserError, match="data.augment.batched=false"):
        BatchedViews(SupervisedTransform(32))
    items = _items(2) + [(torch.zeros(3, 16, 16, dtype=torch.uint8), 0, 2, 5)]
    with pytest.raises(UserError, match="one size"):
        BatchedViews(SimCLRTransform(16))(items)


def test_trains_with_batched_views(tiny_cfg, tmp_path):
    from sslkd.engine.trainer import Trainer

    trainer = Trainer(tiny_cfg("dino", ["data.augment.batched=true"]), tmp_path)
    views, labels, indices = next(iter(trainer.loader))
    assert len(views) == 4 and views[0].shape[0] == labels.shape[0] == indices.shape[0]
    assert trainer.fit() is not None
