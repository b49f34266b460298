"""View-making transforms on uint8 RGB tensors [3,H,W] (torchvision.transforms.v2), returning normalised floats.

``MultiCropTransform`` is DINO's multi-crop recipe (global + local crops); ``SimCLRTransform`` the SimCLR/DoGo
two-view recipe; ``EvalTransform`` the deterministic resize (+ centre crop) used for k-NN and probes. All are plain
module-level classes holding v2 pipelines, so they pickle into DataLoader workers.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DINO's crop sizes at ImageNet scale; smaller images scale both by the same ratio.
DINO_GLOBAL_SIZE, DINO_LOCAL_SIZE = 224, 96


def scaled_crop_sizes(image_size: int) -> tuple[int, int]:
    """(global, local) crop sizes keeping DINO's 224:96 ratio at ``image_size``: 224 -> (224, 96), 32 -> (32, 14).

    The local size is rounded to the nearest integer and at least 8 px; pass explicit sizes to override.
    """
    return image_size, max(8, round(image_size * DINO_LOCAL_SIZE / DINO_GLOBAL_SIZE))


def blur_kernel_size(size: int) -> int:
    """Odd Gaussian-blur kernel about 10% of the crop side (SimCLR's rule), at least 3: 224 -> 23, 32 -> 3."""
    k = round(0.1 * size)
    return max(3, k if k % 2 else k + 1)


def _normalise(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


class ViewAugment:
    """One view: random resized crop, flip, colour jitter, grayscale, blur, solarise, normalise.

    The same transforms as ``v2.Compose([RandomResizedCrop, RandomHorizontalFlip, RandomApply([ColorJitter]),
    RandomGrayscale, RandomApply([GaussianBlur]), RandomSolarize, ToDtype, Normalize])``, drawing their random
    parameters with the transforms' own ``make_params`` in the same order, but run faster (``sslkd bench``'s data
    pipeline figure): the image kernels are called directly (the v2 wrappers' dispatch costs more than the kernels
    on a 32-px crop), and the crop becomes float right after the flip, so the colour ops do not round to uint8 and
    back at every step (the solarise threshold is 128/255 accordingly).
    """

    def __init__(self, size: int, scale: tuple[float, float], jitter: Sequence[float], jitter_p: float,
                 gray_p: float, blur_p: float, blur_sigma: tuple[float, float], solarize_p: float,
                 mean: Sequence[float], std: Sequence[float], interpolation: v2.InterpolationMode):
        self.size = size
        self.crop = v2.RandomResizedCrop(size, scale=scale, interpolation=interpolation, antialias=True)
        self.jitter = v2.ColorJitter(*jitter)
        self.kernel_size = blur_kernel_size(size)
        self.blur = v2.GaussianBlur(self.kernel_size, sigma=blur_sigma)
        self.jitter_p, self.gray_p, self.blur_p, self.solarize_p = jitter_p, gray_p, blur_p, solarize_p
        self.mean, self.std = list(mean), list(std)
        self.interpolation = interpolation

    def draw(self, img: torch.Tensor) -> dict:
        """This view's random parameters for ``img``, drawn from the global RNG in the v2 transforms' order."""
        params = {"crop": self.crop.make_params([img]), "flip": bool(torch.rand(1) < 0.5), "jitter": None,
                  "gray": False, "blur_sigma": None, "solarize": False}
        if torch.rand(1) < self.jitter_p:
            params["jitter"] = self.jitter.make_params([img])
        params["gray"] = bool(torch.rand(1) < self.gray_p)
        if self.blur_p > 0 and torch.rand(1) < self.blur_p:
            params["blur_sigma"] = self.blur.make_params([img])["sigma"]
        params["solarize"] = bool(self.solarize_p > 0 and torch.rand(1) < self.solarize_p)
        return params

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        params = self.draw(img)
        x = TF.resized_crop_image(img, **params["crop"], size=[self.size, self.size],
                                  interpolation=self.interpolation, antialias=True)
        if params["flip"]:
            x = TF.horizontal_flip_image(x)
        x = TF.to_dtype_image(x, torch.float32, scale=True)
        if params["jitter"] is not None:
            x = self._color_jitter(x, params["jitter"])
        if params["gray"]:
            x = TF.rgb_to_grayscale_image(x, num_output_channels=3)
        if params["blur_sigma"] is not None:
            x = _gaussian_blur(x, self.kernel_size, params["blur_sigma"])
        if params["solarize"]:
            x = TF.solarize_image(x, threshold=128 / 255)
        return TF.normalize_image(x, self.mean, self.std)

    @staticmethod
    def _color_jitter(x: torch.Tensor, params: dict) -> torch.Tensor:
        """``v2.ColorJitter.transform`` on the image kernels: the four adjustments in the drawn random order."""
        adjust = (
            (TF.adjust_brightness_image, params["brightness_factor"]),
            (TF.adjust_contrast_image, params["contrast_factor"]),
            (TF.adjust_saturation_image, params["saturation_factor"]),
            (TF.adjust_hue_image, params["hue_factor"]),
        )
        for fn_id in params["fn_idx"].tolist():
            kernel, factor = adjust[fn_id]
            if factor is not None:
                x = kernel(x, factor)
        return x

    def __repr__(self) -> str:
        return (f"ViewAugment({self.size}px, jitter p={self.jitter_p}, gray p={self.gray_p}, blur p={self.blur_p}, "
                f"solarise p={self.solarize_p})")


# Below this many pixels oneDNN's per-call set-up costs more than the depthwise convolution itself (measured on a
# 32-px crop: 164 us with oneDNN, 78 us without); on large crops oneDNN is 7-12x faster, so it stays on there.
_SMALL_BLUR_PIXELS = 48 * 48


def _gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: list[float]) -> torch.Tensor:
    if x.shape[-1] * x.shape[-2] > _SMALL_BLUR_PIXELS or not torch.backends.mkldnn.enabled:
        return TF.gaussian_blur_image(x, [kernel_size, kernel_size], sigma)
    torch.backends.mkldnn.enabled = False
    try:
        return TF.gaussian_blur_image(x, [kernel_size, kernel_size], sigma)
    finally:
        torch.backends.mkldnn.enabled = True


def _augment(size: int, scale: tuple[float, float], jitter: Sequence[float], jitter_p: float, gray_p: float,
             blur_p: float, blur_sigma: tuple[float, float], solarize_p: float, mean: Sequence[float],
             std: Sequence[float], interpolation: v2.InterpolationMode) -> ViewAugment:
    """One view's pipeline: random resized crop, flip, colour jitter, grayscale, blur, solarise, normalise."""
    return ViewAugment(size, scale, jitter, jitter_p, gray_p, blur_p, blur_sigma, solarize_p, mean, std,
                       interpolation)


def _per_view(value: float | Sequence[float], n_views: int, name: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * n_views
    values = [float(v) for v in value]
    if len(values) != n_views:
        raise ValueError(f"{name} has {len(values)} entries but there are {n_views} views")
    return values


class MultiCropTransform:
    """DINO multi-crop: ``n_global`` global crops then ``n_local`` local crops of one image, as a list of tensors.

    Every view: RandomResizedCrop (bicubic), flip, colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2.
    Global view 1 is always blurred; global view 2 is blurred with p=0.1 and solarised with p=0.2 (further
    global views alternate the two); local views are blurred with p=0.5. DINO's blur sigma (0.1, 2.0) is kept and
    the kernel scales with the crop (``blur_kernel_size``). ``blur=False`` drops the blur altogether.
    """

    def __init__(self, global_size: int, local_size: int, n_global: int = 2, n_local: int = 8,
                 global_scale: tuple[float, float] = (0.4, 1.0), local_scale: tuple[float, float] = (0.05, 0.4),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, blur: bool = True,
                 blur_sigma: tuple[float, float] = (0.1, 2.0),
                 interpolation: v2.InterpolationMode = v2.InterpolationMode.BICUBIC):
        if n_global < 1 or n_local < 0:
            raise ValueError(f"need n_global >= 1 and n_local >= 0, got {n_global} and {n_local}")
        jitter = (0.4, 0.4, 0.2, 0.1)
        common = dict(jitter=jitter, jitter_p=0.8, gray_p=0.2, blur_sigma=tuple(blur_sigma), mean=mean, std=std,
                      interpolation=interpolation)
        first = _augment(global_size, tuple(global_scale), blur_p=1.0 if blur else 0.0, solarize_p=0.0, **common)
        second = _augment(global_size, tuple(global_scale), blur_p=0.1 if blur else 0.0, solarize_p=0.2, **common)
        self.global_views = [first if i % 2 == 0 else second for i in range(n_global)]
        self.local_view = _augment(local_size, tuple(local_scale), blur_p=0.5 if blur else 0.0, solarize_p=0.0,
                                   **common)
        self.n_global, self.n_local = n_global, n_local
        self.global_size, self.local_size = global_size, local_size

    def view_sequence(self) -> list[ViewAugment]:
        """The views in the order ``__call__`` draws them (``data.augment.batched`` draws them the same way)."""
        return self.global_views + [self.local_view] * self.n_local

    def __call__(self, img: torch.Tensor) -> list[torch.Tensor]:
        return [t(img) for t in self.view_sequence()]

    def __repr__(self) -> str:
        return (f"MultiCropTransform({self.n_global}x{self.global_size}px global, "
                f"{self.n_local}x{self.local_size}px local)")


class SimCLRTransform:
    """SimCLR / DoGo views: ``n_views`` independent random views of one image, as a list of tensors.

    RandomResizedCrop (bilinear), flip, colour jitter ``jitter`` with p=``jitter_p``, grayscale, optional blur and
    solarise. ``blur_p`` and ``solarize_p`` may be one probability or one per view (e.g. BYOL's asymmetric
    (1.0, 0.1) blur and (0.0, 0.2) solarise). Defaults are the 32-px CIFAR recipe (no blur).
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 jitter: Sequence[float] = (0.8, 0.8, 0.8, 0.2), jitter_p: float = 0.8, gray_p: float = 0.2,
                 blur_p: float | Sequence[float] = 0.0, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, n_views: int = 2,
                 solarize_p: float | Sequence[float] = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR):
        if n_views < 1:
            raise ValueError(f"need n_views >= 1, got {n_views}")
        blur_ps = _per_view(blur_p, n_views, "blur_p")
        solarize_ps = _per_view(solarize_p, n_views, "solarize_p")
        self.views = [
            _augment(size, tuple(scale), tuple(jitter), jitter_p, gray_p, b, tuple(blur_sigma), s, mean, std,
                     interpolation)
            for b, s in zip(blur_ps, solarize_ps)
        ]
        self.size = size

    def view_sequence(self) -> list[ViewAugment]:
        return list(self.views)

    def __call__(self, img: torch.Tensor) -> list[torch.Tensor]:
        return [t(img) for t in self.views]

    def __repr__(self) -> str:
        return f"SimCLRTransform({len(self.views)}x{self.size}px)"


TwoViewTransform = SimCLRTransform


class EvalTransform:
    """Deterministic evaluation view: one normalised float tensor.

    Small images (``size`` < 96) are only resized to ``size`` x ``size`` when they are not that size already.
    Large images follow the ImageNet protocol: resize the short side to ``resize`` (default size*256/224,
    bicubic) then centre-crop ``size``.
    """

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 resize: int | None = None):
        self.size = size
        self.crop = size >= 96 or resize is not None
        ops = []
        if self.crop:
            short = resize if resize is not None else round(size * 256 / 224)
            ops = [v2.Resize(short, interpolation=v2.InterpolationMode.BICUBIC, antialias=True), v2.CenterCrop(size)]
        self.pipeline = v2.Compose(ops + _normalise(mean, std))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not self.crop and tuple(img.shape[-2:]) != (self.size, self.size):
            img = TF.resize(img, [self.size, self.size], antialias=True)
        return self.pipeline(img)

    def __repr__(self) -> str:
        return f"EvalTransform({self.size}px{', resize+centre crop' if self.crop else ''})"


class SupervisedTransform:
    """One training view for supervised classification, as a one-element list (the strategies take view lists).

    Small images (< 96 px): the CIFAR recipe, random crop with 4-px zero padding and a horizontal flip (He et al.
    2016; MCL Sec. 5.1). Larger ones: the ImageNet recipe, RandomResizedCrop (0.08, 1) and a flip (MCL Sec. 5.3).
    """

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.size = size
        self.small = size < 96
        if self.small:
            crop = [v2.Resize([size, size], antialias=True), v2.RandomCrop(size, padding=4)]
        else:
            crop = [v2.RandomResizedCrop(size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)]
        self.pipeline = v2.Compose(crop + [v2.RandomHorizontalFlip()] + _normalise(mean, std))

    def __call__(self, img: torch.Tensor) -> list[torch.Tensor]:
        return [self.pipeline(img)]

    def __repr__(self) -> str:
        return f"SupervisedTransform({self.size}px, {'pad-4 crop' if self.small else 'random resized crop'} + flip)"
