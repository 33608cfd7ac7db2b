"""The peer library TLlib's own MCC and CDAN+E, trained on golabels' cached frozen-backbone features,
in a table beside golabels' rows.

Each peer row trains TLlib's classes (tllib.self_training.mcc.MinimumClassConfusionLoss,
tllib.alignment.cdan.ConditionalDomainAdversarialLoss with tllib.modules.DomainDiscriminator, and
their ImageClassifier: bottleneck Linear -> BatchNorm1d -> ReLU, then a Linear head) in the loop of
TLlib's examples/domain_adaptation/image_classification/{mcc,cdan}.py train(): per iteration one
source and one target batch (ForeverDataIterator over shuffled drop_last loaders), one forward pass
of both, cross-entropy on the source plus trade-off x the transfer loss; SGD (momentum 0.9,
Nesterov, weight decay 1e-3) on classifier.get_parameters() (+ the discriminator's), LambdaLR
lr x (1 + lr_gamma x i)^-0.75 stepped every iteration; at the end TLlib's validate on every target
image (classifier.eval(), top-1 %). The inputs are the features golabels' --freeze-backbone trains
on, read from (or added to) the same cache: TLlib's backbone is an identity with out_features = the
feature size and pool_layer=nn.Identity(). The peer trains on every source image (TLlib holds none
out; golabels holds --val-split out for its validators).

TLlib itself is never copied nor installed: --tllib PATH names an unpacked checkout, put on sys.path
here. What had to change for it to import and run on this torch/numpy is a runtime shim each,
listed in PEER_PATCHES and printed with the table. Without --tllib (or when PATH is not a TLlib
checkout) the peer rows are skipped, with a line that says so, and the golabels rows still print.

golabels' rows are read from finished benchmarks/uda.py sweeps (--golabels-runs OUT, repeatable):
OUT/<src>-<tgt>/<cell>/seed<k>/summary.json, one row per cell.

Each peer run is kept in OUT/<src>-<tgt>/<recipe>/seed<k>.json (accuracy, seconds, settings,
environment) and read instead of run again; the tables go to OUT/results.md and stdout.

    OMP_NUM_THREADS=1 python benchmarks/peer.py --root /tmp/golabels-data --tasks amazon:webcam,webcam:amazon \\
        --seeds 5 --iters 1000 --backbone tf_efficientnet_lite0 \\
        --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors --cache-dir /tmp/gl-cache \\
        --device cpu --workers 0 --tllib /tmp/tllib --out /tmp/peer --golabels-runs /tmp/sw/o31/lrg
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import random
import re
import statistics
import sys
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.optim import SGD  # noqa: E402
from torch.optim.lr_scheduler import LambdaLR  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from golabels.hooks import backbone_features, create_backbone, model_key, pick_device, resolve_data_config, scan_labeled  # noqa: E402

# The runtime shims applied to make TLlib import and run here, one line each (filled by load_tllib as it applies them).
PEER_PATCHES: list[str] = []


@dataclass(frozen=True)
class Recipe:
    mcc: bool  # MinimumClassConfusionLoss(temperature) on the target logits
    cdan: bool  # ConditionalDomainAdversarialLoss, entropy conditioning, multilinear map (not randomized)
    bottleneck: int
    lr: float
    batch: int  # per domain
    trade_off: float = 1.0  # each transfer loss's weight
    temperature: float = 2.5
    disc_hidden: int = 1024


RECIPES = {
    "tllib-mcc": Recipe(mcc=True, cdan=False, bottleneck=256, lr=0.01, batch=32),
    # TLlib's mcc.sh Office-31 lines: --bottleneck-dim 1024, and mcc.py's defaults lr 0.005, batch 36
    "tllib-mcc-office31": Recipe(mcc=True, cdan=False, bottleneck=1024, lr=0.005, batch=36),
    # cdan.py's defaults (trade-off 1, bottleneck 256, lr 0.01, batch 32) with --entropy
    "tllib-cdan-e": Recipe(mcc=False, cdan=True, bottleneck=256, lr=0.01, batch=32),
    "tllib-cdan-e+mcc": Recipe(mcc=True, cdan=True, bottleneck=256, lr=0.01, batch=32),
}


class PeerUnavailable(Exception):
    """Why the peer rows cannot be run."""


def _stub_package(name: str, folder: Path) -> None:
    """`name` as a package whose __init__ is not run: its submodules still import, one by one."""
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    module.__package__ = name
    sys.modules[name] = module


def load_tllib(path: str | None) -> types.SimpleNamespace:
    """TLlib's classes used here, imported from the checkout at `path` (its parent of tllib/)."""
    if not path:
        raise PeerUnavailable("no --tllib PATH given")
    root = Path(path).expanduser()
    needed = ["tllib/self_training/mcc.py", "tllib/alignment/cdan.py", "tllib/modules/classifier.py",
              "tllib/modules/domain_discriminator.py", "tllib/utils/data.py", "tllib/utils/metric/__init__.py"]
    if not root.is_dir():
        raise PeerUnavailable(f"--tllib {path} does not exist")
    missing = [n for n in needed if not (root / n).is_file()]
    if missing:
        raise PeerUnavailable(f"--tllib {path} is not a TLlib checkout (no {missing[0]})")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    # tllib/__init__.py imports every sub-package (tllib.vision's datasets, tllib.ranking's numba, ...)
    # and tllib.alignment's / tllib.self_training's import every method: only the modules used are imported.
    stubs = [name for name in ("tllib", "tllib.alignment", "tllib.self_training") if name not in sys.modules]
    for name in stubs:
        _stub_package(name, root / name.replace(".", "/"))
    if stubs:
        PEER_PATCHES.append("tllib, tllib.alignment, tllib.self_training: package __init__ not run (sys.modules stubs with "
                            "__path__), so that only the modules used are imported, not tllib.vision nor tllib.ranking (numba)")
    try:
        importlib.import_module("prettytable")
    except ImportError:
        sys.modules["prettytable"] = types.ModuleType("prettytable")
        PEER_PATCHES.append("prettytable (imported by tllib.utils.metric, used only by ConfusionMatrix.format, not here) "
                            "is not installed: an empty sys.modules stub")
    import numpy as np

    if "float" not in np.__dict__:
        np.float = float  # type: ignore[attr-defined]
        PEER_PATCHES.append(f"numpy {np.__version__} has no np.float (removed in 1.24), which "
                            "tllib.modules.grl.WarmStartGradientReverseLayer.forward calls: np.float = float")
    try:
        mcc = importlib.import_module("tllib.self_training.mcc")
        cdan = importlib.import_module("tllib.alignment.cdan")
        return types.SimpleNamespace(
            MinimumClassConfusionLoss=mcc.MinimumClassConfusionLoss, MccImageClassifier=mcc.ImageClassifier,
            ConditionalDomainAdversarialLoss=cdan.ConditionalDomainAdversarialLoss, CdanImageClassifier=cdan.ImageClassifier,
            DomainDiscriminator=importlib.import_module("tllib.modules.domain_discriminator").DomainDiscriminator,
            ForeverDataIterator=importlib.import_module("tllib.utils.data").ForeverDataIterator,
            accuracy=importlib.import_module("tllib.utils.metric").accuracy,
            version=_tllib_version(root),
        )
    except Exception as exc:  # an incompatibility no shim above covers: say which, run the rest
        raise PeerUnavailable(f"importing TLlib from {path} failed ({type(exc).__name__}: {exc})") from exc


def _tllib_version(root: Path) -> str:
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", (root / "tllib" / "__init__.py").read_text())
    return match.group(1) if match else "?"


class FeatureInput(nn.Identity):
    """TLlib's backbone, on features: the input as it is, with the out_features its classifiers read."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features


def train_peer(tl, recipe: Recipe, xs, ys, xt, yt, num_classes: int, seed: int, iters: int, lr_gamma: float,
               device: torch.device) -> float:
    """Target top-1 (%) of TLlib's recipe, trained as its examples' main() and train() do."""
    random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)  # both loaders' shuffles, as the global generator in TLlib
    source_loader = DataLoader(TensorDataset(xs, ys), batch_size=recipe.batch, shuffle=True, drop_last=True, generator=generator)
    target_loader = DataLoader(TensorDataset(xt, yt), batch_size=recipe.batch, shuffle=True, drop_last=True, generator=generator)
    test_loader = DataLoader(TensorDataset(xt, yt), batch_size=recipe.batch, shuffle=False)
    source_iter = tl.ForeverDataIterator(source_loader)
    target_iter = tl.ForeverDataIterator(target_loader)

    make = tl.CdanImageClassifier if recipe.cdan else tl.MccImageClassifier
    classifier = make(FeatureInput(xs.shape[1]), num_classes, bottleneck_dim=recipe.bottleneck, pool_layer=nn.Identity()).to(device)
    parameters = classifier.get_parameters()
    domain_adv = None
    if recipe.cdan:
        discriminator = tl.DomainDiscriminator(classifier.features_dim * num_classes, hidden_size=recipe.disc_hidden).to(device)
        parameters += discriminator.get_parameters()
    optimizer = SGD(parameters, recipe.lr, momentum=0.9, weight_decay=1e-3, nesterov=True)
    lr_scheduler = LambdaLR(optimizer, lambda x: recipe.lr * (1. + lr_gamma * float(x)) ** (-0.75))
    if recipe.cdan:
        domain_adv = tl.ConditionalDomainAdversarialLoss(discriminator, entropy_conditioning=True, num_classes=num_classes,
                                                         features_dim=classifier.features_dim, randomized=False).to(device)
    mcc = tl.MinimumClassConfusionLoss(temperature=recipe.temperature) if recipe.mcc else None

    classifier.train()
    if domain_adv is not None:
        domain_adv.train()
    for _ in range(iters):
        x_s, labels_s = next(source_iter)[:2]
        x_t, = next(target_iter)[:1]
        x_s, x_t, labels_s = x_s.to(device), x_t.to(device), labels_s.to(device)
        x = torch.cat((x_s, x_t), dim=0)
        y, f = classifier(x)
        y_s, y_t = y.chunk(2, dim=0)
        f_s, f_t = f.chunk(2, dim=0)
        cls_loss = F.cross_entropy(y_s, labels_s)
        transfer_loss = 0.
        if domain_adv is not None:
            transfer_loss = transfer_loss + domain_adv(y_s, f_s, y_t, f_t)
        if mcc is not None:
            transfer_loss = transfer_loss + mcc(y_t)
        loss = cls_loss + transfer_loss * recipe.trade_off
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_scheduler.step()

    # TLlib's utils.validate: top-1 per batch, averaged weighted by the batch size
    classifier.eval()
    correct, count = 0.0, 0
    with torch.no_grad():
        for images, target in test_loader:
            output = classifier(images.to(device))
            acc1, = tl.accuracy(output, target.to(device), topk=(1,))
            correct += acc1.item() * images.size(0)
            count += images.size(0)
    return correct / count


def environment(tl, device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "tllib": tl.version, "cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "device": str(device),
            **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {})}


def task_dir(task: str) -> str:
    return task.replace(":", "-")


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def golabels_rows(dirs: list[str], task: str) -> list[tuple[str, list[float], list[float]]]:
    """(row name, target top-1 % per seed, seconds per seed) of every cell of the sweeps in `dirs`."""
    rows = []
    for d in dirs:
        folder = Path(d) / task_dir(task)
        if not folder.is_dir():
            continue
        for cell in sorted(p for p in folder.iterdir() if p.is_dir()):
            seeds = sorted((p for p in cell.glob("seed*") if (p / "summary.json").is_file() and p.name[4:].isdigit()),
                           key=lambda p: int(p.name[4:]))
            summaries = [json.loads((p / "summary.json").read_text()) for p in seeds]
            summaries = [s for s in summaries if s.get("target_acc") is not None]
            if not summaries:
                continue
            name = f"golabels {Path(d).resolve().name}/{cell.name}" if len(dirs) > 1 else f"golabels {cell.name}"
            rows.append((name, [100 * s["target_acc"] for s in summaries], [s.get("seconds", float("nan")) for s in summaries]))
    return rows


def table(task: str, rows: list[tuple[str, list[float], list[float]]]) -> str:
    lines = [f"### {task.replace(':', ' → ')}", "",
             "| recipe | target top-1 % (mean ± std) | seeds | per seed (seed 0, 1, …) | s / run |", "| --- | --- | --- | --- | --- |"]
    for name, accs, seconds in rows:
        lines.append(f"| {name} | {mean_std(accs)} | {len(accs)} | {', '.join(f'{a:.2f}' for a in accs) or '—'} | "
                     f"{statistics.mean(seconds):.1f} |" if seconds else f"| {name} | — | 0 | — | — |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder holding one sub-folder per domain (each <class>/<image>)")
    parser.add_argument("--tasks", default="amazon:webcam,webcam:amazon", help="comma-separated SOURCE:TARGET domain names")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated peer recipes: {', '.join(RECIPES)}")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights")
    parser.add_argument("--no-pretrained", action="store_true")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--cache-dir", help="golabels' feature cache (as adapt --cache-dir); shared with golabels' runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="loader workers for the features not yet cached")
    parser.add_argument("--lr-gamma", type=float, default=0.001)
    parser.add_argument("--tllib", help="an unpacked TLlib checkout (the folder holding tllib/)")
    parser.add_argument("--golabels-runs", action="append", default=[], metavar="DIR",
                        help="a benchmarks/uda.py sweep's --out folder: its cells become golabels rows (repeatable)")
    parser.add_argument("--out", default="benchmarks/runs/peer")
    args = parser.parse_args(argv)

    tasks = [t for t in args.tasks.split(",") if t]
    recipes = [r for r in args.recipes.split(",") if r]
    for recipe in recipes:
        if recipe not in RECIPES:
            raise SystemExit(f"peer.py: unknown recipe {recipe!r}: choose from {', '.join(RECIPES)}")
    for task in tasks:
        if task.count(":") != 1:
            raise SystemExit(f"peer.py: a task is SOURCE:TARGET, got {task!r}")
    root, out = Path(args.root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    notes = []
    tl = None
    try:
        tl = load_tllib(args.tllib)
    except PeerUnavailable as exc:
        notes.append(f"peer rows skipped: {exc}")
        print(notes[-1], file=sys.stderr)

    results: dict[tuple[str, str], list[dict]] = {}
    if tl is not None:
        device = pick_device(args.device)
        torch.manual_seed(0)  # --no-pretrained: the same random backbone (and feature cache) on every call
        backbone = create_backbone(args.backbone, not args.no_pretrained, args.weights).to(device)
        data_config = resolve_data_config(backbone, args.image_size)
        key = model_key(args.backbone, backbone, data_config)
        env = environment(tl, device)
        for task in tasks:
            src, tgt = task.split(":")
            features = None
            for recipe_name in recipes:
                recipe = RECIPES[recipe_name]
                settings = {"task": task, "recipe": recipe_name, **asdict(recipe), "iters": args.iters, "lr_gamma": args.lr_gamma,
                            "backbone": args.backbone, "feature_key": key, "data_config": data_config}
                for seed in range(args.seeds):
                    path = out / task_dir(task) / recipe_name / f"seed{seed}.json"
                    if path.is_file():
                        done = json.loads(path.read_text())
                        if done["settings"] != settings:
                            changed = sorted(k for k in settings if done["settings"].get(k) != settings[k])
                            raise SystemExit(f"peer.py: {path} was run with other settings ({', '.join(changed)}): "
                                             "pass another --out, or delete it to run it again")
                        results.setdefault((task, recipe_name), []).append(done)
                        continue
                    if features is None:
                        features = _task_features(root, src, tgt, backbone, key, data_config, device, args)
                    xs, ys, xt, yt, classes = features
                    if min(len(xs), len(xt)) < recipe.batch:  # a drop_last loader would yield no batch at all
                        raise SystemExit(f"peer.py: {recipe_name} draws batches of {recipe.batch} per domain, and task {task} "
                                         f"has {len(xs)} source and {len(xt)} target images")
                    start = time.perf_counter()
                    acc = train_peer(tl, recipe, xs, ys, xt, yt, classes, seed, args.iters, args.lr_gamma, device)
                    seconds = time.perf_counter() - start
                    done = {"accuracy": acc, "seconds": round(seconds, 2), "seed": seed, "settings": settings,
                            "images": {"source": len(xs), "target": len(xt)}, "patches": PEER_PATCHES, "environment": env}
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".json.tmp")
                    tmp.write_text(json.dumps(done, indent=1) + "\n")
                    tmp.replace(path)
                    print(f"{task} {recipe_name} seed {seed}: {acc:.2f} % in {seconds:.1f} s", file=sys.stderr)
                    results.setdefault((task, recipe_name), []).append(done)

    text = [f"# TLlib on golabels' features: {args.backbone}, {args.iters} iterations, lr-gamma {args.lr_gamma}, "
            f"seeds 0–{args.seeds - 1}", "",
            "Target top-1 %, mean ± sample standard deviation over seeds (statistics.stdev, as benchmarks/uda.py); "
            "s / run: seconds of one run's training and evaluation (golabels: summary.json's seconds).", ""]
    if tl is not None:
        text += [f"Environment: {json.dumps(env)}", ""]
        text += ["PEER_PATCHES:", *[f"- {p}" for p in PEER_PATCHES], ""]
    text += [*notes, *([""] if notes else [])]
    for task in tasks:
        rows = [(name, [r["accuracy"] for r in results.get((task, name), [])], [r["seconds"] for r in results.get((task, name), [])])
                for name in (recipes if tl is not None else [])]
        rows += golabels_rows(args.golabels_runs, task)
        text += [table(task, rows)]
    report = "\n".join(text)
    (out / "results.md").write_text(report)
    print(report)
    return report


def _task_features(root: Path, src: str, tgt: str, backbone, key: str, data_config: dict, device, args):
    """(source features, labels, target features, labels, classes) from golabels' feature cache, as
    golabels' --freeze-backbone reads them (training/build.py's _cached_features)."""
    source = scan_labeled(root / src, "source")
    target = scan_labeled(root / tgt, "target")
    if source.classes != target.classes:
        raise SystemExit(f"peer.py: {root / src} and {root / tgt} have different class folders")
    feats = {}
    for role, images in (("source", source), ("target", target)):
        got = backbone_features(images, backbone, key, data_config, device, args.cache_dir, 64, args.workers, f"features: {role}")
        print(f"features of {root / (src if role == 'source' else tgt)}: {got.cached} cached, {got.computed} computed", file=sys.stderr)
        feats[role] = got.values
    return (feats["source"], torch.tensor(source.labels), feats["target"], torch.tensor(target.labels), len(source.classes))


if __name__ == "__main__":
    main()
