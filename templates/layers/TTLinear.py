# needs: torch
class TTLinear(nn.Module):
    """Linear layer [..., in] -> [..., out] whose weight is a tensor-train matrix (Novikov et
    al. 2015), in = prod(in_modes) and out = prod(out_modes). Core k is [ranks[k], in_modes[k],
    out_modes[k], ranks[k + 1]]: TensorLy's TT-matrix of the transposed weight, whose entry
    (i, o) sums over the ranks the product of core k's entries at in-mode i_k and out-mode o_k.
    """

    def __init__(
        self, in_modes: list[int], out_modes: list[int], ranks: list[int], bias: bool = True
    ) -> None:
        super().__init__()
        shapes = zip(ranks, in_modes, out_modes, ranks[1:])
        self.cores = nn.ParameterList(nn.Parameter(torch.empty(s)) for s in shapes)
        if bias:
            self.bias = nn.Parameter(torch.zeros(torch.Size(out_modes).numel()))
        else:
            self.register_parameter("bias", None)
        # An entry of the full matrix sums prod(ranks) products of one entry per core: this
        # std gives it nn.Linear's variance, 1 / (3 * in).
        fan_in, paths = torch.Size(in_modes).numel(), torch.Size(ranks).numel()
        std = (3 * fan_in * paths) ** (-0.5 / len(in_modes))
        for core in self.cores:
            nn.init.normal_(core, std=std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Core by core on a state [tokens, in-modes k.., out-modes ..k, rank k] of `size`
        # values per token: moving in-mode k next to rank k (one copy) makes step k a matmul
        # with core k as it is stored, which leaves out-mode k and rank k + 1 in their place.
        h, size = x, x.shape[-1]
        for core in self.cores:
            r, m, n, s = core.shape
            h = h.reshape(-1, m, size // m).transpose(1, 2).reshape(-1, r * m)
            h = h @ core.reshape(r * m, n * s)
            size = size // (r * m) * n * s
        h = h.reshape(*x.shape[:-1], size)
        return h if self.bias is None else h + self.bias
