# needs: torch
class SpectralMixing(nn.Module):
    """FNet token mixing: the real part of a 2-D FFT over the sequence and hidden dims."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(x.float(), dim=(-2, -1)).real.to(x.dtype)
