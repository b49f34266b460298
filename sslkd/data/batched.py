"""Views made for a whole batch at once (``data.augment.batched``): the per-image pipeline's random parameters,
applied by batched kernels.

Each item's parameters are drawn exactly as ``ViewAugment.draw`` draws them for the per-image pipeline, from the
item's own seed (``sampling.item_seed``), so views still depend on the seed alone (resume-exact, independent of the
workers). Only the pixel kernels change: one ``roi_align`` crops and resizes every item (bilinear, averaging
``ceil(crop / size)`` samples per output pixel when it shrinks, which stands in for antialiasing; the per-image
pipeline resizes bicubically for DINO's multi-crop and bilinearly otherwise), and flip, colour jitter (in each
item's drawn order), grayscale, blur, solarise and normalisation each run once per view over the items that drew
them. On a 32-px CIFAR batch this replaces several hundred tiny tensor calls per image (``sslkd bench``'s data
pipeline figure measures both).
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from sslkd.data.sampling import seed_views
from sslkd.data.transforms import ViewAugment
from sslkd.errors import UserError


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend`` with one factor per item: ``factor * x + (1 - factor) * other``, clamped to [0, 1]."""
    factor = factor.view(-1, 1, 1, 1)
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale_image(x, num_output_channels=1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), factor)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``TF.adjust_hue_image`` with one hue shift per item (HSV round trip of torchvision's own helpers)."""
    h, s, v = _rgb_to_hsv(x).unbind(dim=-3)
    h = (h + factor.view(-1, 1, 1)).remainder_(1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=-3))


# in ColorJitter's fn_idx numbering, with the factor that leaves an image unchanged
_JITTER = ((adjust_brightness, "brightness_factor", 1.0), (adjust_contrast, "contrast_factor", 1.0),
           (adjust_saturation, "saturation_factor", 1.0), (adjust_hue, "hue_factor", 0.0))


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """``TF.gaussian_blur_image`` with one sigma per item: torchvision's kernel, reflect padding, applied as two
    1-D passes (the 2-D kernel is their outer product) of a grouped convolution over all items and channels."""
    n, c, h, w = x.shape
    lim = (kernel_size - 1) / (2.0 * 2.0 ** 0.5)
    offsets = torch.linspace(-lim, lim, kernel_size, dtype=x.dtype)
    kernels = torch.softmax(-(offsets / sigma.view(-1, 1).to(x.dtype)).pow(2), dim=1)  # [n, k]
    weights = kernels.repeat_interleave(c, dim=0)  # [n * c, k]
    pad = kernel_size // 2
    flat = torch.nn.functional.pad(x.reshape(1, n * c, h, w), [pad, pad, pad, pad], mode="reflect")
    flat = torch.nn.functional.conv2d(flat, weights.view(n * c, 1, 1, kernel_size), groups=n * c)
    flat = torch.nn.functional.conv2d(flat, weights.view(n * c, 1, kernel_size, 1), groups=n * c)
    return flat.view(n, c, h, w)


def _where(x: torch.Tensor, selected: list[bool] | torch.Tensor, fn) -> torch.Tensor:
    """``fn(items, their indices)`` applied to the items marked in ``selected`` only."""
    index = torch.as_tensor(selected, dtype=torch.bool).nonzero().flatten()
    if len(index):
        x[index] = fn(x[index], index)
    return x


def batch_view(view: ViewAugment, images: torch.Tensor, params: list[dict]) -> torch.Tensor:
    """One view of every image of ``images`` (float [B, 3, H, W] in [0, 1]) with each item's drawn ``params``."""
    boxes = torch.tensor([[i, c["left"], c["top"], c["left"] + c["width"], c["top"] + c["height"]]
                          for i, c in enumerate(p["crop"] for p in params)], dtype=images.dtype)
    x = roi_align(images, boxes, output_size=view.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    x = _where(x, [p["flip"] for p in params], lambda v, _: v.flip(-1))
    jittered = torch.tensor([p["jitter"] is not None for p in params])
    if jittered.any():
        order = torch.stack([p["jitter"]["fn_idx"] if p["jitter"] else torch.arange(4) for p in params])
        factors = torch.tensor([[p["jitter"][name] if p["jitter"] and p["jitter"][name] is not None else identity
                                 for _, name, identity in _JITTER] for p in params], dtype=x.dtype)
        for position in range(4):
            for fn_id, (adjust, _, _) in enumerate(_JITTER):
                x = _where(x, jittered & (order[:, position] == fn_id), lambda v, index, fn=adjust, k=fn_id: fn(v, factors[index, k]))
    x = _where(x, [p["gray"] for p in params], lambda v, _: TF.rgb_to_grayscale_image(v, num_output_channels=3))
    sigmas = torch.tensor([p["blur_sigma"][0] if p["blur_sigma"] is not None else 1.0 for p in params])
    x = _where(x, [p["blur_sigma"] is not None for p in params],
               lambda v, index: gaussian_blur(v, view.kernel_size, sigmas[index]))
    x = _where(x, [p["solarize"] for p in params], lambda v, _: torch.where(v >= 128 / 255, 1 - v, v))
    return TF.normalize_image(x, view.mean, view.std)


class BatchedViews:
    """Collate function of the training loader: ``(image, label, index, seed)`` items of one size to
    ``(views, labels, indices)``, every view made for the whole batch (``batch_view``)."""

    def __init__(self, transform):
        sequence = getattr(transform, "view_sequence", None)
        if sequence is None:
            raise UserError(f"data.augment.batched needs a random-view recipe; {transform!r} has none: "
                            "set data.augment.batched=false for this method")
        self.views: list[ViewAugment] = sequence()

    def __call__(self, items: list[tuple]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        images, labels, indices, seeds = zip(*items)
        if len({tuple(image.shape) for image in images}) > 1:
            raise UserError("data.augment.batched needs images of one size (these differ): set "
                            "data.augment.batched=false, or resize the data set once")
        params = []
        with torch.random.fork_rng(devices=[]):
            for image, seed in zip(images, seeds):
                seed_views(seed)
                params.append([view.draw(image) for view in self.views])
        batch = TF.to_dtype_image(torch.stack(images), torch.float32, scale=True)
        views = [batch_view(view, batch, [p[k] for p in params]) for k, view in enumerate(self.views)]
        return views, torch.as_tensor(labels), torch.as_tensor(indices)
