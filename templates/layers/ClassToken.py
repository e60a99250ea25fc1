# needs: torch
class ClassToken(nn.Module):
    """Prepends a learned class token: [B, N, D] -> [B, N + 1, D]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1)
