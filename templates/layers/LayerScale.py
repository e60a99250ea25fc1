# needs: torch
class LayerScale(nn.Module):
    """Learned per-channel scale of the last dimension, initialised small (CaiT)."""

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
