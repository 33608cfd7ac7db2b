"""The paper's two toy problems: source-only vs. DANN vs. DANN + Go-labels on 2-D points.

* moons:    two inter-twinning moons; the target is the source rotated by 35 degrees, and a tenth
            of each target class lies in a small tail cluster at the end of its moon.
* clusters: per class a large cluster and, for class 1, a small tail cluster right beside class
            0's large one; the target is the source shifted and slightly stretched, so that its
            tail lies between the source's tail and the source's class-0 cluster.

A two-layer MLP feature extractor, a linear head, and golabels' own discriminator, adversarial
loss, Go-labels and gradient-reversal schedule (imported, not copied). Reported: target accuracy,
overall and on the tail points, mean ± std over seeds; with matplotlib, a PNG of the decision
boundaries of seed 0.

    python benchmarks/toy.py --seeds 10 --png benchmarks/toy.png
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from golabels.hooks import Adversary, Batch, adversarial_loss, get_method, grl_coeff

VARIANTS = (("source-only", None), ("dann", "fixed"), ("dann", "go"))


@dataclass
class Problem:
    xs: np.ndarray
    ys: np.ndarray
    xt: np.ndarray
    yt: np.ndarray
    tail: np.ndarray  # target points that belong to a tail cluster


def _moon(n: int, upper: bool, rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0, math.pi, n)
    pts = np.stack([np.cos(t), np.sin(t)], 1) if upper else np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)
    return pts + rng.normal(0, 0.1, (n, 2))


def moons(seed: int, n: int = 300) -> Problem:
    rng = np.random.default_rng(seed)
    xs = np.concatenate([_moon(n, True, rng), _moon(n, False, rng)])
    ys = np.repeat([0, 1], n)
    n_tail = n // 10
    # The target: rotated moons whose ends hold small, dense tail clusters.
    xt = np.concatenate([_moon(n - n_tail, True, rng), rng.normal([-1.0, 0.1], 0.06, (n_tail, 2)),
                         _moon(n - n_tail, False, rng), rng.normal([2.0, 0.4], 0.06, (n_tail, 2))])
    yt = np.repeat([0, 1], n)
    tail = np.zeros(2 * n, bool)
    tail[n - n_tail:n] = tail[2 * n - n_tail:] = True
    angle = math.radians(35)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return Problem(xs, ys, (xt - 0.5) @ rotation.T + 0.5, yt, tail)


def clusters(seed: int, n: int = 400, n_tail: int = 20) -> Problem:
    rng = np.random.default_rng(seed)

    def domain(shift: np.ndarray, stretch: float):
        head0 = rng.normal([0.0, 0.0], 0.5, (n, 2))
        head1 = rng.normal([4.0, 0.0], 0.5, (n, 2))
        tail1 = rng.normal([1.3, 1.3], 0.2, (n_tail, 2))  # class 1, next to class 0's large cluster
        x = np.concatenate([head0, head1, tail1]) * stretch + shift
        y = np.concatenate([np.zeros(n, int), np.ones(n + n_tail, int)])
        return x, y

    xs, ys = domain(np.array([0.0, 0.0]), 1.0)
    xt, yt = domain(np.array([-0.5, -0.2]), 1.05)  # the target tail lands between the source tail and class 0
    tail = np.zeros(len(yt), bool)
    tail[-n_tail:] = True
    return Problem(xs, ys, xt, yt, tail)


PROBLEMS = {"moons": moons, "clusters": clusters}


class Net(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        f = self.features(x)
        return self.head(f), f


def train(problem: Problem, method: str, labels: str | None, seed: int, iters: int = 1500, batch: int = 64) -> Net:
    torch.manual_seed(seed)
    net = Net()
    disc = get_method("dann").discriminator(64, 64)
    params = list(net.parameters()) + (list(disc.parameters()) if method != "source-only" else [])
    opt = torch.optim.Adam(params, lr=1e-3)
    xs, ys = torch.tensor(problem.xs, dtype=torch.float32), torch.tensor(problem.ys)
    xt = torch.tensor(problem.xt, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    domain = torch.cat([torch.ones(batch), torch.zeros(batch)])
    for it in range(iters):
        i = torch.randint(len(xs), (batch,), generator=g)
        j = torch.randint(len(xt), (batch,), generator=g)
        logits, f = net(torch.cat([xs[i], xt[j]]))
        loss = F.cross_entropy(logits[:batch], ys[i])
        if method != "source-only":
            adv, _, _ = adversarial_loss(Adversary(get_method(method), disc), Batch(f, logits, domain), labels, grl_coeff(it, iters))
            loss = loss + adv
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def accuracy(net: Net, problem: Problem) -> tuple[float, float]:
    with torch.no_grad():
        pred = net(torch.tensor(problem.xt, dtype=torch.float32))[0].argmax(1).numpy()
    right = pred == problem.yt
    return float(right.mean()), float(right[problem.tail].mean())


def run(problems: list[str], seeds: int, iters: int) -> dict[tuple[str, str], list[tuple[float, float]]]:
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name in problems:
        for seed in range(seeds):
            problem = PROBLEMS[name](seed)
            for method, labels in VARIANTS:
                key = (name, method if labels is None else f"{method} + {labels}")
                results.setdefault(key, []).append(accuracy(train(problem, method, labels, seed, iters), problem))
    return results


def table(results: dict[tuple[str, str], list[tuple[float, float]]]) -> str:
    def ms(values):
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"

    lines = ["| problem | variant | target accuracy | tail accuracy | seeds |", "| --- | --- | --- | --- | --- |"]
    for (name, variant), rows in results.items():
        lines.append(f"| {name} | {variant} | {ms([r[0] for r in rows])} | {ms([r[1] for r in rows])} | {len(rows)} |")
    return "\n".join(lines) + "\n"


def plot(path: str, problems: list[str], iters: int) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: no PNG (pip install matplotlib)")
        return False
    fig, axes = plt.subplots(len(problems), len(VARIANTS), figsize=(4 * len(VARIANTS), 4 * len(problems)), squeeze=False)
    for r, name in enumerate(problems):
        problem = PROBLEMS[name](0)
        pts = np.concatenate([problem.xs, problem.xt])
        lo, hi = pts.min(0) - 0.5, pts.max(0) + 0.5
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
        for c, (method, labels) in enumerate(VARIANTS):
            net = train(problem, method, labels, 0, iters)
            with torch.no_grad():
                prob = net(grid)[0].softmax(1)[:, 1].numpy().reshape(gx.shape)
            ax = axes[r][c]
            ax.contourf(gx, gy, prob, levels=[0, 0.5, 1], colors=["#cfe2f3", "#f4cccc"], alpha=0.8)
            ax.scatter(*problem.xs[problem.ys == 0].T, s=4, c="tab:blue", marker="o", label="source 0")
            ax.scatter(*problem.xs[problem.ys == 1].T, s=4, c="tab:red", marker="o", label="source 1")
            ax.scatter(*problem.xt[~problem.tail].T, s=4, c="black", marker=".", label="target")
            ax.scatter(*problem.xt[problem.tail].T, s=14, c="gold", marker="*", label="target tail")
            acc, tail = accuracy(net, problem)
            ax.set_title(f"{name}: {method}{' + ' + labels if labels else ''}\ntarget {100 * acc:.1f} %, tail {100 * tail:.1f} %")
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default="moons,clusters")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--png", help="write the decision boundaries of seed 0 here (needs matplotlib)")
    args = parser.parse_args(argv)
    problems = args.problems.split(",")
    text = table(run(problems, args.seeds, args.iters))
    print(text)
    if args.png and plot(args.png, problems, args.iters):
        print(f"decision boundaries: {args.png}")
    return text


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny networks: threads only add overhead
    main()
