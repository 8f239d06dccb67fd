"""Segmenters: U-Net (Ronneberger 2015), Attention U-Net (Oktay 2018), UNet++ (Zhou 2018), compact student.

All use conv + batch norm + ReLU and bilinear upsampling (no ConvTranspose, no instance norm, no PReLU):
those are the blocks INT8 runtimes fuse and torch-pruning's dependency graph handles, concatenated skips
included. Decoders resize to the skip's exact size, so odd input sizes work.
"""

import torch
import torch.nn.functional as F
from torch import nn

from lungedge.models.blocks import conv_bn_act, init_weights


def double_conv(cin, cout):
    return nn.Sequential(conv_bn_act(cin, cout), conv_bn_act(cout, cout))


def up_to(x, ref):
    """Bilinear upsampling of ``x`` to the spatial size of ``ref``."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class UNet(nn.Module):
    """U-Net with ``len(widths)`` levels; ``widths[0]`` channels at full resolution."""

    def __init__(self, num_classes=1, widths=(32, 64, 128, 256, 512), in_channels=1):
        super().__init__()
        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.encoders.append(double_conv(cin, w))
            cin = w
        self.decoders = nn.ModuleList(double_conv(widths[i + 1] + widths[i], widths[i])
                                      for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        init_weights(self)

    def encode(self, x):
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        return skips

    def forward(self, x):
        skips = self.encode(x)
        x = skips.pop()
        for dec in self.decoders:
            skip = skips.pop()
            x = dec(torch.cat([up_to(x, skip), skip], 1))
        return self.head(x)


class AttentionGate(nn.Module):
    """Additive attention gate: the coarser decoder signal weights the skip connection."""

    def __init__(self, c_skip, c_gate, c_inter):
        super().__init__()
        self.theta = conv_bn_act(c_skip, c_inter, 1, act=None)
        self.phi = conv_bn_act(c_gate, c_inter, 1, act=None)
        self.psi = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(c_inter, 1, 1), nn.Sigmoid())

    def forward(self, skip, gate):
        return skip * self.psi(self.theta(skip) + up_to(self.phi(gate), skip))


class AttentionUNet(UNet):
    """U-Net whose skips pass through attention gates."""

    def __init__(self, num_classes=1, widths=(32, 64, 128, 256, 512), in_channels=1):
        super().__init__(num_classes, widths, in_channels)
        self.gates = nn.ModuleList(AttentionGate(widths[i], widths[i + 1], max(8, widths[i] // 2))
                                   for i in reversed(range(len(widths) - 1)))
        init_weights(self)

    def forward(self, x):
        skips = self.encode(x)
        x = skips.pop()
        for dec, gate in zip(self.decoders, self.gates):
            skip = skips.pop()
            x = dec(torch.cat([up_to(x, skip), gate(skip, x)], 1))
        return self.head(x)


class UNetPlusPlus(nn.Module):
    """UNet++: nested dense skip pathways; node X[i][j] sees X[i][0..j-1] and the upsampled X[i+1][j-1]."""

    def __init__(self, num_classes=1, widths=(32, 64, 128, 256, 512), in_channels=1):
        super().__init__()
        n = len(widths)
        self.depth = n
        self.nodes = nn.ModuleDict()
        for i in range(n):
            self.nodes[f"{i}_0"] = double_conv(in_channels if i == 0 else widths[i - 1], widths[i])
        for j in range(1, n):
            for i in range(n - j):
                self.nodes[f"{i}_{j}"] = double_conv(widths[i] * j + widths[i + 1], widths[i])
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        init_weights(self)

    def forward(self, x):
        grid = {}
        for i in range(self.depth):
            grid[(i, 0)] = self.nodes[f"{i}_0"](x if i == 0 else F.max_pool2d(grid[(i - 1, 0)], 2))
        for j in range(1, self.depth):
            for i in range(self.depth - j):
                below = up_to(grid[(i + 1, j - 1)], grid[(i, 0)])
                grid[(i, j)] = self.nodes[f"{i}_{j}"](torch.cat([grid[(i, k)] for k in range(j)] + [below], 1))
        return self.head(grid[(0, self.depth - 1)])


def unet(num_classes=1):
    return UNet(num_classes, (32, 64, 128, 256, 512))


def attention_unet(num_classes=1):
    return AttentionUNet(num_classes, (32, 64, 128, 256, 512))


def unet_plus_plus(num_classes=1):
    return UNetPlusPlus(num_classes, (32, 64, 128, 256))


def unet_student(num_classes=1):
    """Compact U-Net student: four levels, 8 to 64 channels (about 0.12 M parameters)."""
    return UNet(num_classes, (8, 16, 32, 64))


def unet_student_m(num_classes=1):
    """Compact U-Net student: four levels, 16 to 128 channels."""
    return UNet(num_classes, (16, 32, 64, 128))


def unet_student_l(num_classes=1):
    """Wider compact U-Net student: the U-Net's five levels at half its width, 16 to 256 channels (about a
    quarter of its MACs)."""
    return UNet(num_classes, (16, 32, 64, 128, 256))
