# needs: torch, F
class QuantLinear(nn.Module):
    """Linear layer with 4-bit weights, dequantized on the fly (weight-only quantization).

    Each row of the weight [out, in] is cut into groups of `group_size` inputs. A group keeps
    a 4-bit code per weight, two to a byte (the even input in the low nibble), and one fp16
    scale; a weight is levels[code] * scale. nf4: the 16 NF4 levels of QLoRA (Dettmers et al.
    2023), scale = the group's absmax. int4: levels -8..7, scale = absmax / 7. The packed
    weight, the scales and the bias are frozen. With `rank`, a trainable low-rank update is
    added (QLoRA, Dettmers et al. 2023): (alpha / rank) dropout(x) A^T B^T, A [rank, in] and
    B [out, rank]; B starts at zero, so a fresh adapter leaves the outputs as they are.
    """

    NF4 = (
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    )  # fmt: skip

    def __init__(
        self,
        in_features: int,
        out_features: int,
        format: str = "nf4",
        group_size: int = 64,
        bias: bool = True,
        rank: int = 0,
        alpha: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        levels = self.NF4 if format == "nf4" else range(-8, 8)
        # Not in the state_dict: fixed by the format. A buffer follows .to() and .double().
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32), False)
        self.top = 1 if format == "nf4" else 7  # the level a group's absmax maps to
        self.group_size = group_size
        packed = torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
        self.qweight = nn.Parameter(packed, requires_grad=False)
        scales = torch.ones(out_features, in_features // group_size, dtype=torch.float16)
        self.scales = nn.Parameter(scales, requires_grad=False)
        if bias:
            bound = in_features**-0.5  # nn.Linear's init, for a model built without weights
            self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound), False)
        else:
            self.register_parameter("bias", None)
        weight = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(weight, a=5**0.5)
        self.quantize_(weight)
        self.rank = rank
        if rank:
            self.lora_A = nn.Parameter(torch.empty(rank, in_features))
            self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
            self.dropout = nn.Dropout(dropout)
            self.scaling = alpha / rank
            nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)  # as PEFT does

    @torch.no_grad()
    def quantize_(self, weight: torch.Tensor) -> None:
        """Store `weight` [out, in]: each weight gets the nearest level of its group."""
        groups = weight.float().unflatten(1, (-1, self.group_size))
        exact = groups.abs().amax(-1) / self.top
        scales = exact.half()
        # Round the scales up, so that no weight falls outside the levels; an all-zero group
        # gets scale 1.
        scales = torch.where(scales.float() < exact, scales.nextafter(scales + torch.inf), scales)
        scales = torch.where(exact == 0, torch.ones_like(scales), scales)
        levels = self.levels.float()
        middles = (levels[1:] + levels[:-1]) / 2
        codes = torch.bucketize(groups / scales[..., None].float(), middles).flatten(1)
        codes = codes.to(torch.uint8)
        self.qweight.copy_(codes[:, 0::2] | (codes[:, 1::2] << 4))
        self.scales.copy_(scales)

    def dequantized(self) -> torch.Tensor:
        """The weight [out, in] the codes and scales stand for, in the layer's float dtype."""
        return self.dequantize(self.qweight, self.scales)

    def dequantize(self, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """Rows [..., in] of the weight from their packed codes and scales."""
        # Low nibble first. Integer % and // rather than uint8 bit ops: ONNX exports them.
        packed = qweight.long()
        codes = torch.stack((packed % 16, packed // 16), -1).flatten(-2)
        groups = self.levels[codes].unflatten(-1, (-1, self.group_size))
        return (groups * scales[..., None].to(self.levels.dtype)).flatten(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.dequantized(), self.bias)
        if self.rank:
            y = y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling
        return y
