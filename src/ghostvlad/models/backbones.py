"""Thin ResNets of the original system: ``resnet34s`` (the paper's) and ``resnet34l``.

Input ``(B, 1, F, T)`` (frequency x time; ``F = 257`` in the original), output ``(B, C, H, T')`` after ``mpool2``
(``H = 7`` for 257 bins, 3 for the 129 bins up to 4 kHz).
Layers follow the Keras code exactly: bottleneck blocks with the stride on the first 1x1 conv, BatchNorm
with eps 1e-3, TensorFlow-SAME padding (asymmetric for the stride-2 stem of ``resnet34l``).

``branches=K`` builds K independent networks side by side in one module: every conv after the stem holds K
groups of weights (a grouped conv's layout), so branch k's channels only ever see branch k's (the stem's single
input channel is shared). A branch is the backbone at ``width``; the output holds the K branches' channels one
after another. After the stem each branch runs on its own, on its slices of the weights: on CPU that is about 1.4
times faster than grouped convolutions, and the same numbers up to rounding.

Variable-length batches are exact at inference: padded time steps are zeroed before every conv whose
kernel spans time, so each clip sees the zeros it would see alone. :meth:`ThinResNet.forward` is the one
forward pass: it has no data-dependent Python, so :mod:`ghostvlad.export` traces it as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry
from ..schema import ConfigError



class Backbone(nn.Module):
    """The backbone slot's interface: ``forward(x (B, 1, F, T), lengths (B,) | None)`` returns the features
    ``(B, out_channels, out_height, T')`` and their valid step counts (``out_lengths(lengths)``; None without
    lengths). Masking contract: steps past a clip's length never change its valid steps, so a padded batch
    equals each clip alone. Registered factories take ``branches`` (from the encoder): that many independent
    networks, whose output channels are ``branches`` equal blocks, one per branch, in order; and ``freq_bins``, the
    input's height ``F`` (the front-end's bins)."""

    out_channels: int
    out_height: int
    time_stride: int  # input frames per output step

    def out_lengths(self, lengths: Tensor) -> Tensor:
        raise NotImplementedError


BACKBONES: Registry[Backbone] = Registry("backbone", base=Backbone, context=("branches", "freq_bins"))

BN_EPS = 1e-3  # Keras default, used by the released weights
BN_MOMENTUM = 0.01  # Keras momentum 0.99


@dataclass(frozen=True)
class StageSpec:
    blocks: int
    filters: tuple[int, int, int]  # 1x1 reduce, 3x3, 1x1 increase
    stride: int


@dataclass(frozen=True)
class ResNetSpec:
    stem_channels: int
    stem_stride: int
    stages: tuple[StageSpec, ...]


SPECS = {
    "resnet34s": ResNetSpec(
        64, 1,
        (StageSpec(2, (48, 48, 96), 1), StageSpec(3, (96, 96, 128), 2),
         StageSpec(3, (128, 128, 256), 2), StageSpec(3, (256, 256, 512), 2)),
    ),
    "resnet34l": ResNetSpec(
        64, 2,
        (StageSpec(3, (64, 64, 256), 1), StageSpec(3, (128, 128, 512), 2),
         StageSpec(3, (256, 256, 1024), 1), StageSpec(3, (512, 512, 2048), 2)),
    ),
}


class ConvBN(nn.Module):
    """Conv2d without bias followed by BatchNorm (Keras epsilon and momentum)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor, branch: int | None = None) -> Tensor:
        """The layer on all channels, or with ``branch`` on that group's channels alone (``x``: its inputs)."""
        if branch is None:
            return self.bn(self.conv(x))
        conv, bn = self.conv, self.bn
        width = conv.out_channels // conv.groups
        part = slice(branch * width, (branch + 1) * width)
        y = F.conv2d(x, conv.weight[part], None if conv.bias is None else conv.bias[part], conv.stride, conv.padding)
        if isinstance(bn, nn.Identity):  # fused
            return y
        # nn.BatchNorm2d's own arithmetic on this branch's slices of its parameters and buffers (a SyncBatchNorm's
        # synchronisation or forward hooks would not run: training configs refuse model.branches != 1)
        momentum = bn.momentum
        if bn.training and bn.track_running_stats:  # as nn.BatchNorm2d does, counted once per forward
            if branch == 0:
                bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        stats = bn.running_mean is None or bn.training
        return F.batch_norm(y, None if bn.running_mean is None else bn.running_mean[part],
                            None if bn.running_var is None else bn.running_var[part], bn.weight[part], bn.bias[part],
                            stats, momentum or 0.0, bn.eps)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the (inference) BatchNorm into the conv: one memory pass less per layer."""
        if isinstance(self.bn, nn.Identity):
            return
        bn, conv = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          groups=conv.groups, bias=True)
        fused = fused.to(device=conv.weight.device, dtype=conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = fused, nn.Identity()


class Bottleneck(nn.Module):
    """1x1 reduce (strided) -> 3x3 -> 1x1 increase, plus identity or 1x1 projection shortcut; every conv in
    ``groups`` groups (the backbone's branches)."""

    def __init__(self, cin: int, filters: tuple[int, int, int], stride: int, project: bool, groups: int = 1) -> None:
        super().__init__()
        r, m, o = filters
        self.reduce = ConvBN(cin, r, 1, stride, groups=groups)
        self.mid = ConvBN(r, m, 3, padding=1, groups=groups)
        self.increase = ConvBN(m, o, 1, groups=groups)
        self.proj = ConvBN(cin, o, 1, stride, groups=groups) if project else None

    def forward(self, x: Tensor, mask: Tensor | None, branch: int | None = None) -> Tensor:
        """The block on all channels, or with ``branch`` on that group's alone (``x``: its inputs)."""
        y = F.relu(self.reduce(x, branch), inplace=True)
        if mask is not None:
            y = y * mask
        y = self.increase(F.relu(self.mid(y, branch), inplace=True), branch)
        y += x if self.proj is None else self.proj(x, branch)
        return F.relu(y, inplace=True)


def scaled_channels(channels: int, width: float) -> int:
    """Channel count of a layer with ``channels`` at width 1, at ``width`` (at least one)."""
    return max(1, round(channels * width))


def _ceil_div(n, d: int):
    """``ceil(n / d)`` of ints or integer tensors (non-negative ``n``: exported as ONNX integer division)."""
    return (n + d - 1) // d


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one axis (``kernel >= stride``: never negative). Plain
    arithmetic, so that a traced size stays a size in the exported graph."""
    total = (_ceil_div(size, stride) - 1) * stride + kernel - size
    return total // 2, total - total // 2


def _unrolled_stem(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A stride-1 conv on one input channel, as a conv over ``kh`` frequency-shifted copies with a (1, kw) kernel.

    Same result; about 1.7x faster on CPU (oneDNN handles a single input channel poorly).
    """
    kh, ph = conv.kernel_size[0], conv.padding[0]
    height = x.shape[-2]
    padded = F.pad(x, (0, 0, ph, ph))
    shifted = torch.cat([padded[:, :, i : i + height] for i in range(kh)], dim=1)
    shifted = shifted.contiguous(memory_format=torch.channels_last)
    return F.conv2d(shifted, conv.weight.transpose(1, 2), conv.bias, padding=(0, conv.padding[1]))


def _time_mask(lengths: Tensor, steps: int, dtype: torch.dtype, offset: int = 0) -> Tensor:
    """``(B, 1, 1, steps)``: 1 where step ``offset + i`` lies in ``[0, length)``."""
    t = torch.arange(offset, offset + steps, device=lengths.device)[None, :]
    valid = t < lengths[:, None]
    if offset < 0:
        valid &= t >= 0
    return valid.to(dtype)[:, None, None, :]


class ThinResNet(Backbone):
    """The original 2-D ResNet; ``width`` scales every channel count (1.0 = the paper); ``branches`` networks
    side by side (module docstring); ``freq_bins`` input rows."""

    def __init__(self, spec: ResNetSpec, width: float = 1.0, branches: int = 1, freq_bins: int = 257) -> None:
        super().__init__()
        if not width > 0:
            raise ConfigError(f"backbone width must be positive, got {width}")
        rows = _ceil_div(freq_bins, spec.stem_stride) // 2  # after the ('SAME') stem and the 2x2 max-pool
        for st in spec.stages:
            rows = _ceil_div(rows, st.stride)
        self.out_height = (rows - 3) // 2 + 1  # mpool2: 3 rows, stride 2, no padding
        if self.out_height < 1:
            raise ConfigError(f"{freq_bins} frequency bins are too few for this backbone: raise frontend.max_freq")

        self.spec, self.branches = spec, branches
        stem = branches * scaled_channels(spec.stem_channels, width)
        self.stem = ConvBN(1, stem, 7, stride=spec.stem_stride, padding=3 if spec.stem_stride == 1 else 0)
        stages, cin = [], stem
        for st in spec.stages:
            filters = tuple(branches * scaled_channels(f, width) for f in st.filters)
            blocks = [Bottleneck(cin, filters, st.stride, project=True, groups=branches)]
            blocks += [Bottleneck(filters[2], filters, 1, project=False, groups=branches) for _ in range(st.blocks - 1)]
            stages.append(nn.ModuleList(blocks))
            cin = filters[2]
        self.stages = nn.ModuleList(stages)
        self.out_channels = cin

    @property
    def time_stride(self) -> int:
        """Input frames per output step (16 for both backbones)."""
        stride = self.spec.stem_stride * 2
        for st in self.spec.stages:
            stride *= st.stride
        return stride

    @property
    def time_context(self) -> int:
        """Frames of context on each side that make :meth:`forward_span` exact: a multiple of
        :attr:`time_stride` above the receptive-field radius in time (every time kernel's reach plus the
        stride offsets), plus one step for the stride alignment."""
        s0 = self.spec.stem_stride
        reach = 3 + (s0 - 1) + s0  # the 7-wide stem (and its 'SAME' offset), then the 2-wide max-pool
        scale = 2 * s0
        for st in self.spec.stages:
            reach += (st.stride - 1) * scale  # a strided 1x1 conv picks one step of each stride
            scale *= st.stride
            reach += st.blocks * scale  # one 3x3 conv per block
        return (-(-reach // scale) + 1) * scale

    def out_lengths(self, lengths: Tensor) -> Tensor:
        """Time steps of the output for inputs of ``lengths`` frames."""
        n = _ceil_div(lengths, self.spec.stem_stride) // 2
        for st in self.spec.stages:
            n = _ceil_div(n, st.stride)
        return n

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Output ``(B, C, H, T')`` and its step counts (None without ``lengths``: all clips fill the batch).

        Inference and training alike; steps past each clip's ``lengths`` are masked (module docstring).
        """
        s0 = self.spec.stem_stride
        if lengths is not None and s0 > 1:
            # A stride-2 'SAME' stem pads by the parity of the length: a zero frame in front of each odd-length
            # clip aligns it as an even-length one, so one padding fits the whole batch (no per-clip Python).
            odd = lengths % 2 == 1
            x = torch.where(odd[:, None, None, None], F.pad(x, (1, 0)), F.pad(x, (0, 1)))
            lengths = lengths + odd.long()
            stem_pad = _same_pad(2, 7, s0)  # that of every even length
        else:
            stem_pad = _same_pad(x.shape[-1], 7, s0)
        return self._layers(x, stem_pad, lengths, 0)

    def forward_span(self, x: Tensor, total: int, start: int) -> Tensor:
        """Output steps ``[start, start + W) / time_stride`` of a clip of ``total`` frames, from its frames
        ``x (B, 1, F, W)`` = ``[start, start + W)`` (zero outside ``[0, total)``; ``start`` and ``W`` multiples of
        :attr:`time_stride`, ``start`` may be negative). Inference only.

        Steps at least :attr:`time_context` frames from both ends of the span equal those of ``forward`` on the
        whole clip; the others read the span's edges and are inexact.
        """
        stride = self.time_stride
        if start % stride or x.shape[-1] % stride:
            raise ValueError(f"span start {start} and width {x.shape[-1]} must be multiples of {stride}")
        before = _same_pad(total, 7, self.spec.stem_stride)[0]  # the whole clip's 'SAME' offset
        lengths = torch.full((x.shape[0],), total, dtype=torch.long, device=x.device)
        return self._layers(x, (before, 7 - self.spec.stem_stride - before), lengths, start)[0]

    def _layers(self, x: Tensor, stem_pad: tuple[int, int], lengths: Tensor | None, start: int) -> tuple[Tensor, Tensor | None]:
        """Stem, pools and stages on frames ``[start, start + W)``, masking steps outside ``[0, length)``."""
        s0 = self.spec.stem_stride
        if s0 > 1:
            x = self.stem(F.pad(x, (*stem_pad, *_same_pad(x.shape[-2], 7, s0))))
        elif self.training:
            x = self.stem(x)
        else:  # inference only: oneDNN's backward of this form crashes for some channel counts
            x = self.stem.bn(_unrolled_stem(x, self.stem.conv))
        x = F.relu(F.max_pool2d(x, 2), inplace=True)  # = pool(relu(x)), on 4x fewer values
        n = None if lengths is None else _ceil_div(lengths, s0) // 2
        masks, offset = [], start // (2 * s0)
        steps = x.shape[-1]
        for st in self.spec.stages:
            offset //= st.stride
            steps = _ceil_div(steps, st.stride)
            if n is not None:
                n = _ceil_div(n, st.stride)
            masks.append(None if n is None else _time_mask(n, steps, x.dtype, offset))
        if self.branches == 1:
            x = self._stages(x, masks)
        else:  # each branch on its own channels (module docstring)
            last = x.is_contiguous(memory_format=torch.channels_last)
            layout = torch.channels_last if last else torch.contiguous_format
            x = torch.cat([self._stages(part.contiguous(memory_format=layout), masks, k)
                           for k, part in enumerate(x.chunk(self.branches, dim=1))], dim=1)
        x = F.max_pool2d(x, (3, 1), (2, 1))  # mpool2: frequency only
        return x, n

    def _stages(self, x: Tensor, masks: list[Tensor | None], branch: int | None = None) -> Tensor:
        """The stages after the stem, on all channels or (``branch``) on one branch's."""
        for blocks, mask in zip(self.stages, masks):
            for block in blocks:
                x = block(x, mask, branch)
        return x


@BACKBONES.register("resnet34s")
def resnet34s(branches: int, freq_bins: int, width: float = 1.0) -> ThinResNet:
    """The paper's thin ResNet-34 (3.69 M parameters at width 1)."""
    return ThinResNet(SPECS["resnet34s"], width, branches, freq_bins)


@BACKBONES.register("resnet34l")
def resnet34l(branches: int, freq_bins: int, width: float = 1.0) -> ThinResNet:
    """The original code's larger variant (stride-2 stem, 19.9 M parameters at width 1)."""
    return ThinResNet(SPECS["resnet34l"], width, branches, freq_bins)
