"""A plain U-Net (Ronneberger et al. 2015) with a configurable width and depth.

Two 3x3 convolutions with batch normalisation and ReLU per level, max-pooling down,
transposed convolutions up, skip connections by concatenation, a 1x1 head with two classes
(background, nucleus).  Inputs are float RGB in [0, 1]; the network normalises them itself,
so every caller feeds the same thing.  Height and width must be multiples of
``2 ** depth``; :func:`mcf_fast.segmentation.train.predict_proba` pads for you.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["UNet"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` down-samplings; level ``i`` has ``width * 2**i`` channels.

    Parameters
    ----------
    width : int
        Channels of the first level.
    depth : int
        Number of 2x down-samplings; inputs must be multiples of ``2 ** depth``.
    in_channels, n_classes : int
        3 (RGB) and 2 (background, nucleus) for mcf_fast.

    Examples
    --------
    >>> net = UNet(width=4, depth=2)
    >>> net(torch.zeros(1, 3, 16, 16)).shape
    torch.Size([1, 2, 16, 16])
    """

    def __init__(
        self, *, width: int = 16, depth: int = 4, in_channels: int = 3, n_classes: int = 2
    ) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"UNet: width and depth must be positive, got {width}, {depth}")
        self.hparams: dict[str, Any] = {
            "width": width,
            "depth": depth,
            "in_channels": in_channels,
            "n_classes": n_classes,
        }
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(_block(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.up.append(nn.ConvTranspose2d(chans[i], chans[i - 1], 2, stride=2))
            self.merge.append(_block(2 * chans[i - 1], chans[i - 1]))
        self.head = nn.Conv2d(chans[0], n_classes, 1)
        # H&E images are bright; centre them roughly without depending on the data
        self.register_buffer(
            "mean",
            torch.tensor([0.65, 0.5, 0.7]).view(1, 3, 1, 1)[:, :in_channels],
            persistent=False,
        )
        self.register_buffer(
            "std",
            torch.tensor([0.2, 0.2, 0.15]).view(1, 3, 1, 1)[:, :in_channels],
            persistent=False,
        )

    @property
    def multiple(self) -> int:
        """Height and width of an input must be multiples of this."""
        return 2 ** self.hparams["depth"]

    @property
    def reach(self) -> int:
        """Pixels of context on each side that one output pixel depends on.

        ``7 * 2**depth - 5``: two 3x3 convolutions at each of the ``depth + 1`` levels down
        and ``depth`` levels up (``6 * 2**depth - 4``), plus up to ``2**depth - 1`` by which
        pooling and the transposed convolutions snap a position to the coarsest grid.  The
        input gradient gives 9, 23, 50, 106, 218 for depths 1 to 5 (this bound: 9, 23, 51,
        107, 219).  Outputs equal those of a larger image only where the input reaches this
        far, and only when the crop starts on the pooling grid (a multiple of
        :attr:`multiple` from the larger image's origin).
        """
        return 7 * self.multiple - 5

    def for_inference(self) -> UNet:
        """An evaluation-mode copy with each batch normalisation folded into its convolution.

        The same function as ``self.eval()`` (to float rounding), about a tenth cheaper on
        a CPU.  The copy is cached and rebuilt whenever a parameter or buffer has changed
        since (a training step, a loaded state), so it is never stale.
        """
        device = next(self.parameters()).device
        key = (str(device), *(t._version for t in (*self.parameters(), *self.buffers())))
        cached = getattr(self, "_folded", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        folded = UNet(**self.hparams).to(device)
        folded.load_state_dict(self.state_dict())
        folded.eval()
        with torch.no_grad():
            for block in (*folded.down, *folded.merge):
                for i in (0, 3):
                    conv, bn = block[i], block[i + 1]
                    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    fused = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1)
                    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                    fused.bias.copy_(bn.bias - bn.running_mean * scale)
                    block[i], block[i + 1] = fused.to(device), nn.Identity()
        for p in folded.parameters():
            p.requires_grad_(False)
        self.__dict__["_folded"] = (key, folded)  # a plain attribute, not a submodule
        return folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, n_classes, H, W) for RGB input (B, 3, H, W) in [0, 1]."""
        x = (x - self.mean) / self.std
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            x = up(x)
            x = merge(torch.cat([skips.pop(), x], dim=1))
        return self.head(x)
