# needs: torch, F
class LoRALinear(nn.Module):
    """Linear layer with a frozen base weight and a trainable low-rank update (Hu et al. 2021):
    y = x W^T + b + (alpha / rank) dropout(x) A^T B^T, A [rank, in], B [out, rank]. B starts at
    zero, so a fresh adapter is the base layer; A starts like PEFT's (kaiming-uniform)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        if bias:
            bound = in_features**-0.5  # nn.Linear's init, for a model built without weights
            self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound), False)
        else:
            self.register_parameter("bias", None)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / rank
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + update * self.scaling
