# needs: torch, Attention, QuantLinear
class QuantAttention(Attention):
    """Attention whose q/k/v and output projections hold 4-bit weights (QuantLinear: groups of
    `group_size` inputs with an fp16 scale each, dequantized on the fly); biases stay fp32."""

    def __init__(
        self,
        dim: int,
        heads: int,
        format: str = "nf4",
        group_size: int = 64,
        bias: bool = True,
        out_bias: bool | None = None,
        **options,
    ) -> None:
        super().__init__(dim, heads, bias=bias, out_bias=out_bias, **options)
        qkv, out = self.qkv, self.out
        self.qkv = QuantLinear(dim, qkv.out_features, format, group_size, qkv.bias is not None)
        self.out = QuantLinear(out.in_features, dim, format, group_size, out.bias is not None)
