# needs: torch, F
class Mixed(nn.Module):
    """DARTS mixed op (Liu et al. 2019): the sum of the inputs weighted by softmax(alpha), the
    architecture weights, which start equal."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(n))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(self.alpha, dim=0)
        return sum(w * x for w, x in zip(weights, xs, strict=True))
