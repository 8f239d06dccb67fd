"""Building blocks shared by the architectures: conv + batch norm + activation, the deployable unit."""

from torch import nn


def conv_bn_act(cin, cout, k=3, stride=1, groups=1, act="relu"):
    """Conv (no bias) + BatchNorm + activation: folds into one INT8 conv at export."""
    acts = {"relu": nn.ReLU(inplace=True), "relu6": nn.ReLU6(inplace=True), "silu": nn.SiLU(inplace=True),
            None: nn.Identity()}
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), acts[act])


def init_weights(module):
    """Kaiming init for convs, unit batch norm, small linear heads (what torchvision does)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
