"""Torsos: observation -> feature vector, before the agent's ReLU -> Linear(hidden) -> ReLU.

Each torso ends on a pre-activation (the agent applies the ReLU), as torchbeast's nets do.

- `nature`: the DQN Nature conv net (32x8 s4, 64x4 s2, 64x3 s1).
- `impala_resnet`: the IMPALA paper's residual net, three stages of [16, 32, 32] channels, each
  conv3x3 -> max-pool 3 s2 -> two residual blocks (ReLU, conv3x3, ReLU, conv3x3, + skip).
- `mlp`: Linear -> LayerNorm -> ReLU -> Linear for flattened float vectors (POPGym, classic
  control). The LayerNorm makes the features O(1) whatever the observations' scale (CartPole's
  angles are ~0.05): without it an LSTM core sees near-constant inputs and learns very slowly.
"""
import torch
from torch import nn

from .options import TORSOS


class NatureTorso(nn.Module):
    def __init__(self, obs_shape):
        super().__init__()
        c = obs_shape[0]
        self.net = nn.Sequential(
            nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.Flatten())
        self.output_size = _flat_size(self.net, obs_shape)

    def forward(self, x):
        return self.net(x)


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaResNetTorso(nn.Module):
    def __init__(self, obs_shape, channels=(16, 32, 32)):
        super().__init__()
        layers, c_in = [], obs_shape[0]
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1),
                       ResidualBlock(c), ResidualBlock(c)]
            c_in = c
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.output_size = _flat_size(self.net, obs_shape)

    def forward(self, x):
        return self.net(x)


class MLPTorso(nn.Module):
    def __init__(self, obs_shape, hidden_size):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_shape[0], hidden_size), nn.LayerNorm(hidden_size),
                                 nn.ReLU(), nn.Linear(hidden_size, hidden_size))
        self.output_size = hidden_size

    def forward(self, x):
        return self.net(x)


def _flat_size(net, obs_shape):
    with torch.no_grad():  # one zero observation through the net: cheap, and exact for any shape
        return net(torch.zeros(1, *obs_shape)).shape[1]


def resolve_torso(name, obs_shape):
    """The torso a config names for observations of `obs_shape` ("auto": by the number of dims)."""
    if name not in TORSOS:
        raise ValueError(f"unknown torso {name!r}; choose one of {', '.join(TORSOS)}")
    dims = len(obs_shape)
    if name == "auto":
        if dims == 3:
            return "impala_resnet"
        if dims == 1:
            return "mlp"
        raise ValueError(f"torso 'auto' takes images [C, H, W] (impala_resnet) or flat vectors [F] (mlp); "
                         f"got an observation of shape {tuple(obs_shape)}: flatten it or stack it as [C, H, W]")
    want = 1 if name == "mlp" else 3
    if dims != want:
        layout = "a flat vector [F]" if want == 1 else "an image [C, H, W]"
        raise ValueError(f"torso {name!r} needs {layout}, got an observation of shape {tuple(obs_shape)}")
    return name


def make_torso(name, obs_shape, hidden_size):
    """Build torso `name` (one of TORSOS) for observations of `obs_shape`; has `.output_size`."""
    name = resolve_torso(name, obs_shape)
    if name == "nature":
        return NatureTorso(obs_shape)
    if name == "impala_resnet":
        return ImpalaResNetTorso(obs_shape)
    return MLPTorso(obs_shape, hidden_size)
