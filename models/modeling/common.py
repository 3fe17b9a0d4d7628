"""Small building blocks shared by the image encoders (window partitioning), the prompt encoder and the mask decoder."""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (SAM's formulation, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The same normalisation for a tensor whose last axis holds the channels."""
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class MLPBlock(nn.Module):
    """Two linear layers with an activation between them (the transformer's feed-forward)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def window_partition(x: torch.Tensor, window_size: int, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad (B, H, W, C) to multiples of ``window_size`` and cut it into (B * windows, ws, ws, C).

    ``size`` is (H, W) as Python ints, so a traced graph (OpenVINO export) keeps the padding static.
    Returns the windows and the padded (H, W).
    """
    h, w = size
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    ph, pw = h + pad_h, w + pad_w
    c = x.shape[-1]
    x = x.view(-1, ph // window_size, window_size, pw // window_size, window_size, c).transpose(2, 3)
    return x.reshape(-1, window_size, window_size, c), (ph, pw)


def window_unpartition(windows: torch.Tensor, window_size: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: stitch the windows back and crop the padding."""
    ph, pw = padded
    h, w = size
    c = windows.shape[-1]
    nh, nw = ph // window_size, pw // window_size
    x = windows.view(-1, nh, nw, window_size, window_size, c).transpose(2, 3).reshape(-1, ph, pw, c)
    if ph != h or pw != w:
        x = x[:, :h, :w].contiguous()
    return x
