"""The `rank` option shared by the decomposition passes, and how a rank is chosen.

A rank is an int (absolute, capped at the full rank), a float in (0, 1] (that fraction of the
full rank, rounded, at least 1; `1.0` is the full rank, `1` is rank one), or `{energy: e}`: the
smallest rank whose leading singular values keep the fraction `e` of the squared singular values
of the relevant unfolding. `energy` needs weights. What "full rank" means is each pass's own:
min(in, out) for SVD, per mode for Tucker, and see the CP and TT passes. `auto` leaves the
choice to `nlc.passes.auto`: a rank within an error budget, kept only where the layer runs
faster than the dense one (measured on the host target, else predicted by the cost model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from nlc.errors import NlcError

if TYPE_CHECKING:  # torch is only needed with weights; Node only in annotations
    import torch

    from nlc.ir import Node


class Energy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    energy: float = Field(gt=0, le=1, description="fraction of the squared singular values kept")


AUTO = "auto"


def _parse(value: Any) -> int | float | Energy | Literal["auto"]:
    """One clear message for a bad rank (a plain union would list a failure per member)."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool):
        raise ValueError("a rank is a number, not true/false")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"an absolute rank must be at least 1, got {value}")
        return value
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise ValueError(
                f"a fractional rank must be in (0, 1], got {value}; write an int for an "
                "absolute rank"
            )
        return value
    if isinstance(value, Energy):
        return value
    if isinstance(value, dict):
        try:
            return Energy.model_validate(value)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(map(str, err["loc"]))
            raise ValueError(f"{{energy: e}} with 0 < e <= 1: {where}: {err['msg']}") from None
    raise ValueError(
        f"a rank is an int, a fraction in (0, 1], {{energy: e}} or auto, got {value!r}"
    )


def _parse_pair(value: Any) -> int | float | Energy | tuple[int | float | Energy, ...]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"give one rank for both modes or a list [in, out], got {value}")
        if AUTO in value:
            raise ValueError("auto chooses both ranks: write rank: auto, not a list")
        return tuple(map(_parse, value))
    return _parse(value)


Rank = Annotated[int | float | Energy | Literal["auto"], PlainValidator(_parse)]
# One rank for two modes, or [in, out]: Tucker's input- and output-channel ranks.
RankPair = Annotated[Rank | tuple[Rank, Rank], PlainValidator(_parse_pair)]


def require_weights(rank: Rank | tuple[Rank, ...], weights: object) -> None:
    """`energy` ranks come from singular values, which a structural run does not have."""
    energy = [r for r in (rank if isinstance(rank, tuple) else (rank,)) if isinstance(r, Energy)]
    if weights is None and energy:
        raise NlcError(
            f"rank {{energy: {energy[0].energy}}} needs the weights, and this run has none "
            "(structural mode)",
            None,
            "give weights (a checkpoint), or an absolute rank (int) or a fraction of the full "
            "rank (float in (0, 1])",
        )


def check_fits(rank: object, full: int, node: Node) -> None:
    """An absolute rank above a layer's full rank asks for more than the layer holds: a typo or
    a selector that takes in a smaller layer, not a request for the full rank."""
    if isinstance(rank, int) and not isinstance(rank, bool) and rank > full:
        raise NlcError(
            f"rank {rank} is above the full rank {full} of {node.name} ({node.op})",
            None,
            f"give at most {full}, a fraction such as 0.5, or a select that leaves it out",
        )


def choose(rank: Rank, full: int, matrix: torch.Tensor | None = None) -> int:
    """The rank to use given the full one; `energy` counts the singular values of `matrix`,
    the unfolding that rank truncates.

    >>> choose(8, 5), choose(0.5, 5), choose(1.0, 5), choose(0.01, 5)
    (5, 3, 5, 1)
    """
    if isinstance(rank, Energy):
        import torch

        assert matrix is not None, "require_weights() checks energy ranks have weights"
        power = torch.linalg.svdvals(matrix.double()) ** 2
        total = float(power.sum())
        if total == 0:
            return 1
        kept = power.cumsum(0) / total
        return min(full, int((kept < rank.energy - 1e-12).sum()) + 1)
    if isinstance(rank, float):
        return max(1, min(full, int(rank * full + 0.5)))
    return min(rank, full)


def unfold(tensor: torch.Tensor, mode: int) -> torch.Tensor:
    """The mode-`mode` unfolding: that mode's fibres as columns, [size of mode, rest]."""
    return tensor.movedim(mode, 0).reshape(tensor.shape[mode], -1)
