"""Shape manipulation and multi-input arithmetic: functional, no parameters."""

from __future__ import annotations

import sympy
from pydantic import Field, model_validator

from nlc.ir.types import TensorType, dims_equal, norm, prod
from nlc.ops.base import Attrs, Op, ShapeError, norm_axis, register


def broadcast(types: list[TensorType], op: str) -> TensorType:
    rank = max(t.rank for t in types)
    shape = []
    for i in range(1, rank + 1):
        dims = [t.shape[-i] for t in types if t.rank >= i]
        real = [d for d in dims if not (isinstance(d, int) and d == 1)]
        if any(not dims_equal(d, real[0]) for d in real[1:]):
            listed = ", ".join(str(t) for t in types)
            raise ShapeError(
                f"{op}: input shapes {listed} do not broadcast (dim -{i} differs)",
                "inputs must have equal sizes or size 1 in every dimension",
            )
        shape.append(real[0] if real else 1)
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        raise ShapeError(
            f"{op}: inputs have different dtypes {sorted(dtypes)}",
            "feed it tensors of one dtype (an embedding turns integer ids into f32)",
        )
    return TensorType(tuple(reversed(shape)), types[0].dtype)


class _Elementwise(Op):
    min_inputs = 2
    max_inputs = None
    symbol: str

    def infer(self, a, ins):
        return [broadcast(ins, self.name)]

    def call(self, a, args, mod, lit):
        return f" {self.symbol} ".join(args)


@register
class Add(_Elementwise):
    name = "add"
    doc = "Elementwise sum of two or more inputs (residual connections), with broadcasting."
    symbol = "+"
    saves = "none"


@register
class Mul(_Elementwise):
    name = "mul"
    doc = "Elementwise product of two or more inputs (gating), with broadcasting."
    symbol = "*"


@register
class Matmul(Op):
    name = "matmul"
    doc = "Batched matrix product of two inputs (`a @ b`)."
    min_inputs = max_inputs = 2
    kind = "matmul"
    elem_flops = 0

    def infer(self, a, ins):
        x, y = ins
        if x.rank < 2 or y.rank < 2:
            raise ShapeError(
                f"matmul needs inputs of rank >= 2, got {x} and {y}",
                "reshape vectors into [1, n] or [n, 1] matrices",
            )
        if not dims_equal(x.shape[-1], y.shape[-2]):
            raise ShapeError(
                f"matmul: inner dimensions differ: {x} @ {y} ({x.shape[-1]} vs {y.shape[-2]})",
                "transpose one input so the last dim of the first equals the second-last of "
                "the second",
            )
        batch = broadcast(
            [TensorType(x.shape[:-2], x.dtype), TensorType(y.shape[:-2], y.dtype)], self.name
        )
        return [x.with_shape((*batch.shape, x.shape[-2], y.shape[-1]))]

    def macs(self, a, ins, outs):
        return norm(outs[0].numel() * ins[0].shape[-1])

    def call(self, a, args, mod, lit):
        return f"{args[0]} @ {args[1]}"


class ConcatAttrs(Attrs):
    dim: int = 1


@register
class Concat(Op):
    name = "concat"
    doc = "Concatenate two or more inputs along `dim`."
    Attrs = ConcatAttrs
    min_inputs = 2
    max_inputs = None
    needs = ("torch",)
    kind = "copy"
    elem_flops = 0
    saves = "none"

    def infer(self, a, ins):
        rank = ins[0].rank
        axis = norm_axis(a.dim, rank, self.name)
        for t in ins[1:]:
            same = t.rank == rank and all(
                dims_equal(p, q)
                for i, (p, q) in enumerate(zip(ins[0].shape, t.shape, strict=True))
                if i != axis
            )
            if not same:
                raise ShapeError(
                    f"concat along dim {a.dim}: {ins[0]} and {t} differ outside that dimension",
                    "inputs must agree in every dim except the one they are joined along",
                )
        total = norm(sum(t.shape[axis] for t in ins))
        return [ins[0].with_shape((*ins[0].shape[:axis], total, *ins[0].shape[axis + 1 :]))]

    def call(self, a, args, mod, lit):
        return f"torch.cat([{', '.join(args)}], dim={lit(a.dim, 'dim')})"


class SplitAttrs(Attrs):
    sizes: list[int] | None = Field(default=None, description="sizes of the pieces")
    chunks: int | None = Field(default=None, gt=1, description="number of equal pieces")
    dim: int = -1

    @model_validator(mode="after")
    def _one_of(self):
        if (self.sizes is None) == (self.chunks is None):
            raise ValueError("give exactly one of `sizes` or `chunks`")
        return self


@register
class Split(Op):
    name = "split"
    doc = "Split one input into several outputs along `dim` (refer to them as `name[i]`)."
    Attrs = SplitAttrs
    needs = ("torch",)
    kind = "view"

    def infer(self, a, ins):
        (x,) = ins
        axis = norm_axis(a.dim, x.rank, self.name)
        size = x.shape[axis]
        if a.chunks is not None:
            if not isinstance(size, int) or size % a.chunks:
                raise ShapeError(
                    f"split: dim {a.dim} of {x} does not split into {a.chunks} chunks",
                    "choose chunks that divide the size, or give `sizes`",
                )
            sizes = [size // a.chunks] * a.chunks
        else:
            sizes = a.sizes
            if not dims_equal(sum(sizes), size):
                raise ShapeError(
                    f"split: sizes {sizes} add up to {sum(sizes)}, not {size} of {x}",
                    f"make the sizes add up to {size}",
                )
        return [x.with_shape((*x.shape[:axis], s, *x.shape[axis + 1 :])) for s in sizes]

    def call(self, a, args, mod, lit):
        if a.chunks is not None:
            return f"{args[0]}.chunk({lit(a.chunks, 'chunks')}, dim={lit(a.dim, 'dim')})"
        return f"torch.split({args[0]}, {lit(a.sizes, 'sizes')}, dim={lit(a.dim, 'dim')})"


class FlattenAttrs(Attrs):
    start: int = 1
    end: int = -1


@register
class Flatten(Op):
    name = "flatten"
    doc = "Merge dimensions start..end into one."
    Attrs = FlattenAttrs
    kind = "view"

    def infer(self, a, ins):
        (x,) = ins
        s, e = norm_axis(a.start, x.rank, self.name), norm_axis(a.end, x.rank, self.name)
        if s > e:
            raise ShapeError(
                f"flatten: start {a.start} comes after end {a.end} for {x}",
                "start must not come after end",
            )
        return [x.with_shape((*x.shape[:s], prod(x.shape[s : e + 1]), *x.shape[e + 1 :]))]

    def call(self, a, args, mod, lit):
        end = "" if a.end == -1 else f", {lit(a.end, 'end_dim')}"
        return f"{args[0]}.flatten({lit(a.start, 'start_dim')}{end})"


class ReshapeAttrs(Attrs):
    shape: list[int] = Field(description="new sizes; 0 keeps the input size, -1 is inferred")


@register
class Reshape(Op):
    name = "reshape"
    doc = "Reshape to `shape` (0 keeps that input dimension, one -1 is inferred)."
    Attrs = ReshapeAttrs
    kind = "view"

    def infer(self, a, ins):
        (x,) = ins
        if sum(1 for d in a.shape if d == -1) > 1 or any(d < -1 for d in a.shape):
            raise ShapeError(
                f"reshape: bad shape {a.shape}: at most one -1, no other negatives",
                "use -1 once for the size to infer and 0 to keep an input dim",
            )
        out = [x.shape[i] if d == 0 else d for i, d in enumerate(a.shape)]
        if any(d == 0 for d in a.shape[x.rank :]):
            raise ShapeError(
                f"reshape: 0 keeps an input dimension, but {x} has rank {x.rank}",
                f"use 0 only in the first {x.rank} positions",
            )
        known = prod(d for d in out if not (isinstance(d, int) and d == -1))
        total = x.numel()
        if -1 in out:
            rest = norm(sympy.sympify(total) / known)
            if not isinstance(rest, int) and rest.is_number:
                raise ShapeError(
                    f"reshape: {x} cannot be viewed as {a.shape}",
                    "the sizes other than -1 must divide the number of elements",
                )
            out[out.index(-1)] = rest
        elif not dims_equal(known, total):
            raise ShapeError(
                f"reshape: {x} has {total} elements, {a.shape} has {known}",
                "the new shape must hold the same number of elements (use -1 to infer one)",
            )
        return [x.with_shape(out)]

    def call(self, a, args, mod, lit):
        dims = [
            f"{args[0]}.shape[{i}]" if d == 0 else lit(d, "shape") for i, d in enumerate(a.shape)
        ]
        return f"{args[0]}.reshape({', '.join(dims)})"


class PermuteAttrs(Attrs):
    dims: list[int]


@register
class Permute(Op):
    name = "permute"
    doc = "Reorder dimensions."
    Attrs = PermuteAttrs
    kind = "view"

    def infer(self, a, ins):
        (x,) = ins
        if sorted(d % x.rank for d in a.dims) != list(range(x.rank)) or len(a.dims) != x.rank:
            raise ShapeError(
                f"permute: dims {a.dims} are not a permutation of {x.rank} dims",
                f"list each of the dims 0..{x.rank - 1} exactly once",
            )
        return [x.with_shape([x.shape[d] for d in a.dims])]

    def call(self, a, args, mod, lit):
        return f"{args[0]}.permute({', '.join(lit(d, 'dims') for d in a.dims)})"


class TransposeAttrs(Attrs):
    dim0: int
    dim1: int


@register
class Transpose(Op):
    name = "transpose"
    doc = "Swap two dimensions."
    Attrs = TransposeAttrs
    kind = "view"

    def infer(self, a, ins):
        (x,) = ins
        i, j = norm_axis(a.dim0, x.rank, self.name), norm_axis(a.dim1, x.rank, self.name)
        shape = list(x.shape)
        shape[i], shape[j] = shape[j], shape[i]
        return [x.with_shape(shape)]

    def call(self, a, args, mod, lit):
        return f"{args[0]}.transpose({lit(a.dim0, 'dim0')}, {lit(a.dim1, 'dim1')})"


class SelectAttrs(Attrs):
    dim: int
    index: int


@register
class Select(Op):
    name = "select"
    doc = "Take one index along `dim`, dropping that dimension (e.g. the class token)."
    Attrs = SelectAttrs
    kind = "view"

    def infer(self, a, ins):
        (x,) = ins
        axis = norm_axis(a.dim, x.rank, self.name)
        size = x.shape[axis]
        if isinstance(size, int) and not -size <= a.index < size:
            raise ShapeError(
                f"select: index {a.index} is out of range for dim {a.dim} of {x}",
                f"use an index from 0 to {size - 1}",
            )
        return [x.with_shape(x.shape[:axis] + x.shape[axis + 1 :])]

    def call(self, a, args, mod, lit):
        if a.dim >= 0:
            return f"{args[0]}[{':, ' * a.dim}{lit(a.index, 'index')}]"
        return f"{args[0]}.select({lit(a.dim, 'dim')}, {lit(a.index, 'index')})"


class MeanAttrs(Attrs):
    dims: list[int]
    keepdim: bool = False


@register
class Mean(Op):
    name = "mean"
    doc = "Mean over `dims` (e.g. token pooling)."
    Attrs = MeanAttrs
    kind = "reduce"
    elem_flops = 0
    in_flops = 1
    saves = "none"

    def infer(self, a, ins):
        (x,) = ins
        axes = {norm_axis(d, x.rank, self.name) for d in a.dims}
        if a.keepdim:
            return [x.with_shape([1 if i in axes else d for i, d in enumerate(x.shape)])]
        return [x.with_shape([d for i, d in enumerate(x.shape) if i not in axes])]

    def call(self, a, args, mod, lit):
        dims = lit(tuple(a.dims), "dims") if len(a.dims) > 1 else lit(a.dims[0], "dim")
        keep = ", keepdim=True" if a.keepdim else ""
        return f"{args[0]}.mean({dims}{keep})"


@register
class Identity(Op):
    name = "identity"
    doc = "Its input unchanged: the `skip` choice of a search space, and an optional item left out."
    kind = "view"
    saves = "none"

    def infer(self, a, ins):
        return list(ins)

    def call(self, a, args, mod, lit):
        return args[0]
