# needs: torch
def dft_tables(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the n-point DFT angles 2 pi jk / n, [n, n]. jk is reduced mod n in
    integers first: float32 angles up to 2 pi n would lose the precision that the DFT needs."""
    k = torch.arange(n, device=device)
    angles = torch.fmod(torch.outer(k, k), n).float() * (2 * torch.pi / n)
    return angles.cos(), angles.sin()


class SpectralMixing(nn.Module):
    """FNet token mixing: the real part of a 2-D FFT over the sequence and hidden dims."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            # The same sum as DFT matmuls, Re(F_T X F_D) = C_T X C_D - S_T X S_D: ONNX's DFT op
            # is off by 1.4e-4 of the output scale in onnxruntime at T = 509; these by 5e-7.
            x32 = x.float()
            cos_t, sin_t = dft_tables(x.shape[-2], x.device)
            cos_d, sin_d = dft_tables(x.shape[-1], x.device)
            return (cos_t @ x32 @ cos_d - sin_t @ x32 @ sin_d).to(x.dtype)
        return torch.fft.fft2(x.float(), dim=(-2, -1)).real.to(x.dtype)
