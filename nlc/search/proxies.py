"""Zero-cost proxies: scores of an untrained network that rank architectures without training.

- synflow (Tanaka et al. 2020): with every weight replaced by its absolute value and an
  all-ones input, the sum over parameters of |theta * d(sum of outputs)/d(theta)|;
- naswot (Mellor et al. 2021): the log-determinant of the Hamming-similarity kernel of the
  samples' binary activation codes on one batch (the signs of every leaf module's output: a
  ReLU after a conv or norm is on exactly where its input is positive);
- grad_norm: the norm of the loss gradient on one batch.

They run in a child process (`python -m nlc.search.proxies`) on the trial's generated package,
one torch thread, so trials never share torch state; the batch comes from the package's data
module when the spec has a `train:` section, else it is random.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BATCH = 32


def run_proxies(
    package: Path, name: str, shape: list[int], names: list[str], seed: int, data_root: Path
) -> dict[str, float]:
    """The proxies `names` of the model of the package in `package` (its module `name`), on
    inputs of per-sample `shape` (data files under `data_root`); the child's cwd is the
    package's parent folder. Raises RuntimeError with the child's last error line."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(package.resolve()), env.get("PYTHONPATH")])
    )
    args = [json.dumps(shape), ",".join(names), str(seed), str(data_root.resolve())]
    command = [sys.executable, "-m", "nlc.search.proxies", name, *args]
    done = subprocess.run(
        command, env=env, cwd=package.parent, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _batch(name: str, shape: list[int], seed: int, root: Path) -> tuple[Any, Any]:
    import torch

    try:
        train = importlib.import_module(f"{name}.train")
        data = importlib.import_module(f"{name}.data")
    except ModuleNotFoundError:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn([BATCH, *shape], generator=generator), None
    cfg = train.namespace(train.CONFIG)
    data.prepare(cfg, root, Path("."))
    dataset, _, _ = data.datasets(cfg, root, Path("."))
    rows = [dataset[i] for i in range(min(BATCH, len(dataset)))]
    return torch.stack([r[0] for r in rows]), torch.as_tensor([int(r[1]) for r in rows])


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, tuple | list) else out


def synflow(model: Any, x: Any) -> float:
    import torch

    model = model.double().eval()
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.abs_()
    model.zero_grad()
    out = _first(model(torch.ones_like(x, dtype=torch.float64)))
    out.sum().backward()
    score = sum((p * p.grad).abs().sum().item() for p in model.parameters() if p.grad is not None)
    return float(score)


def naswot(model: Any, x: Any) -> float:
    import torch

    codes: list[Any] = []

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            codes.append((output.detach().reshape(output.shape[0], -1) > 0).double())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    if not codes:
        return 0.0
    c = torch.cat(codes, dim=1)
    kernel = c @ c.T + (1 - c) @ (1 - c).T
    return float(torch.linalg.slogdet(kernel)[1])


def grad_norm(model: Any, x: Any, y: Any) -> float:
    import torch
    import torch.nn.functional as F

    model.train().zero_grad()
    out = _first(model(x))
    loss = F.cross_entropy(out, y) if y is not None else out.pow(2).mean()
    loss.backward()
    norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def main() -> None:
    import torch

    name, shape, names, seed, root = sys.argv[1:6]
    torch.set_num_threads(1)
    torch.manual_seed(int(seed))
    model_class = importlib.import_module(f"{name}.model").Model
    x, y = _batch(name, json.loads(shape), int(seed), Path(root))
    scores = {}
    for proxy in names.split(","):
        torch.manual_seed(int(seed))
        model = model_class()
        if proxy == "synflow":
            scores[proxy] = synflow(model, x)
        elif proxy == "naswot":
            scores[proxy] = naswot(model, x)
        else:
            scores[proxy] = grad_norm(model, x, y)
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
