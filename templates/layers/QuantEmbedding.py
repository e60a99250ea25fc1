# needs: torch, QuantLinear
class QuantEmbedding(QuantLinear):
    """Embedding table [num, dim] with 4-bit rows, as QuantLinear stores a weight [out, in]:
    groups of `group_size` along the embedding dim, an fp16 scale each. A lookup dequantizes
    only the rows it gathers; a linear head tied to the table shares its codes and scales."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        format: str = "nf4",
        group_size: int = 64,
        std: float = 1.0,
    ) -> None:
        super().__init__(embedding_dim, num_embeddings, format, group_size, bias=False)
        self.quantize_(torch.randn(num_embeddings, embedding_dim) * std)  # nn.Embedding's init

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dequantize(self.qweight[ids], self.scales[ids])
