"""Classifiers of the COVID-19 literature, single-channel input, written without torchvision.

ResNet-18/50 and DenseNet-121 follow He et al. 2016 and Huang et al. 2017 (torchvision's layouts);
MobileNetV2 and EfficientNet-B0 follow Sandler et al. 2018 and Tan & Le 2019. The compact students
(``student_s``, ``student_m``) are plain ResNet-style nets of conv + batch norm + ReLU only, the blocks that
INT8 runtimes fuse best.
"""

import torch
from torch import nn

from lungedge.models.blocks import conv_bn_act, init_weights


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = conv_bn_act(cin, cout, 3, stride)
        self.conv2 = conv_bn_act(cout, cout, 3, 1, act=None)
        self.down = None if stride == 1 and cin == cout else conv_bn_act(cin, cout, 1, stride, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = conv_bn_act(cin, width, 1)
        self.conv2 = conv_bn_act(width, width, 3, stride)
        self.conv3 = conv_bn_act(width, cout, 1, act=None)
        self.down = None if stride == 1 and cin == cout else conv_bn_act(cin, cout, 1, stride, act=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class ResNet(nn.Module):
    """ResNet with a 1-channel stem; ``widths`` scales the four stages (students use small widths)."""

    def __init__(self, block, layers, num_classes, widths=(64, 128, 256, 512), stem=64, in_channels=1):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_act(in_channels, stem, 7, 2), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], stem
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, stride=2 if (j == 0 and i > 0) else 1))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                                  nn.Conv2d(cin, bn_size * growth, 1, bias=False),
                                  nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True),
                                  nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    """DenseNet-BC (norm before conv, as in the paper); 1-channel stem."""

    def __init__(self, blocks=(6, 12, 24, 16), num_classes=3, growth=32, stem=64, bn_size=4, in_channels=1):
        super().__init__()
        layers = [conv_bn_act(in_channels, stem, 7, 2), nn.MaxPool2d(3, 2, 1)]
        c = stem
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth, bn_size))
                c += growth
            if i < len(blocks) - 1:
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False),
                           nn.AvgPool2d(2, 2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 / EfficientNet block: expand 1x1, depthwise kxk, optional squeeze-excite, project 1x1."""

    def __init__(self, cin, cout, stride, expand, k=3, act="relu6", se=0.0):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [conv_bn_act(cin, hidden, 1, act=act)]
        layers.append(conv_bn_act(hidden, hidden, k, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, max(1, int(cin * se))))
        layers.append(conv_bn_act(hidden, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.body(x)
        return x + out if self.residual else out


class SqueezeExcite(nn.Module):
    def __init__(self, c, reduced):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, reduced, 1)
        self.act = nn.SiLU(inplace=True)
        self.expand = nn.Conv2d(reduced, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.expand(self.act(self.reduce(self.pool(x)))))


class MobileNet(nn.Module):
    """Inverted-residual classifier; ``cfg`` rows are (expand, cout, repeats, stride, kernel)."""

    def __init__(self, cfg, num_classes, stem=32, head=1280, act="relu6", se=0.0, dropout=0.2, in_channels=1):
        super().__init__()
        layers, cin = [conv_bn_act(in_channels, stem, 3, 2, act=act)], stem
        for expand, cout, repeats, stride, k in cfg:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand, k, act, se))
                cin = cout
        layers.append(conv_bn_act(cin, head, 1, act=act))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(head, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.pool(self.features(x)), 1)))


MOBILENET_V2 = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 32, 3, 2, 3), (6, 64, 4, 2, 3), (6, 96, 3, 1, 3),
                (6, 160, 3, 2, 3), (6, 320, 1, 1, 3)]
EFFICIENTNET_B0 = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
                   (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]


def resnet18(num_classes=3):
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes=3):
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


def densenet121(num_classes=3):
    return DenseNet((6, 12, 24, 16), num_classes)


def mobilenet_v2(num_classes=3):
    return MobileNet(MOBILENET_V2, num_classes)


def efficientnet_b0(num_classes=3):
    return MobileNet(EFFICIENTNET_B0, num_classes, act="silu", se=0.25)


def student_s(num_classes=3):
    """Compact student: ResNet-10 layout at 1/4 width (about 0.3 M parameters)."""
    return ResNet(BasicBlock, (1, 1, 1, 1), num_classes, widths=(16, 32, 64, 128), stem=16)


def student_m(num_classes=3):
    """Compact student: ResNet-18 layout at 3/8 width (about 1.6 M parameters)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, widths=(24, 48, 96, 192), stem=24)
