"""The adaptation model: timm backbone -> bottleneck -> head, and the domain discriminator.

    backbone (timm, num_classes=0) -> bottleneck (Linear -> BatchNorm1d -> ReLU, 256) -> head (Linear, C)
    discriminator, --discriminator batchnorm (TLlib's DomainDiscriminator; DANN, CDAN):
        Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear -> 1          (width 1024)
    discriminator, --discriminator dropout (the original CDAN, GVB and ASAN code's AdversarialNetwork):
        Linear -> ReLU -> Dropout(0.5) -> Linear -> ReLU -> Dropout(0.5) -> Linear -> 1

GVB gives the head and the discriminator a bridge (a parallel output layer subtracted from the
main one); ASAN puts spectral normalization on the discriminator's linear layers, with no
normalization after them (BatchNorm would rescale their outputs and undo the bound the spectral
norm enforces), so its default discriminator is `dropout`, as is GVB's.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from .choices import DISCRIMINATORS
from .errors import InputError, reason
from .images import require_regular

log = logging.getLogger("golabels")


class BridgedHead(nn.Module):
    """GVB's classifier head: logits = fc(z) - bridge(z). The training loss penalizes mean |bridge(z)|,
    so the bridge, which absorbs domain-specific parts of the output, gradually vanishes."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)
        self.bridge = nn.Linear(in_dim, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z) - self.bridge(z)


class Classifier(nn.Module):
    """What gets adapted and shipped. forward() returns (logits, bottleneck features); a shipped
    model's logits are divided by its `temperature` (calibration.py; 1 while it trains)."""

    temperature = 1.0

    def __init__(self, backbone: nn.Module, num_classes: int, bottleneck_dim: int = 256, bridged: bool = False):
        super().__init__()
        self.backbone = backbone
        self.bottleneck = nn.Sequential(
            nn.Linear(backbone.num_features, bottleneck_dim), nn.BatchNorm1d(bottleneck_dim), nn.ReLU()
        )
        self.head = BridgedHead(bottleneck_dim, num_classes) if bridged else nn.Linear(bottleneck_dim, num_classes)
        # --freeze-bn: the backbone's BatchNorm layers stay in eval mode, normalizing with their
        # pretrained running statistics, whatever train() is called with (their scale and shift still learn).
        self.backbone_bn_frozen = False

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if mode and self.backbone_bn_frozen:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classify(self.backbone(x))

    def classify(self, backbone_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The part after the backbone: what --freeze-backbone trains on cached features."""
        features = self.bottleneck(backbone_features)
        logits = self.head(features)
        return (logits if self.temperature == 1.0 else logits / self.temperature), features


class HeadEnsemble(nn.Module):
    """Several adapted heads (bottleneck and head, each trained by another recipe) on one backbone
    that runs once (--method auto --search-pick ensemble). forward() returns (log of the members'
    mean softmax, their bottleneck features side by side): a softmax of those logits is the mean
    of the members' probabilities, so eval, export and predict read it as any classifier's. Its
    `temperature` divides those logits (its members' own are not applied)."""

    temperature = 1.0

    def __init__(self, backbone: nn.Module, members: list[Classifier]):
        super().__init__()
        self.backbone = backbone
        self.members = nn.ModuleList(_head_of(m) for m in members)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classify(self.backbone(x))

    def classify(self, backbone_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [member(backbone_features) for member in self.members]
        probabilities = torch.stack([logits.float().softmax(1) for logits, _ in outputs]).mean(0)
        # The floor keeps a class no member gives any probability finite (softmax of it stays ~0).
        logits = probabilities.clamp_min(1e-30).log()
        return (logits if self.temperature == 1.0 else logits / self.temperature), torch.cat([features for _, features in outputs], 1)


class _Head(nn.Module):
    """A Classifier without its backbone: the part a member of a HeadEnsemble keeps."""

    temperature = 1.0  # the ensemble's own is applied to the mean

    def __init__(self, bottleneck: nn.Module, head: nn.Module):
        super().__init__()
        self.bottleneck, self.head = bottleneck, head

    forward = Classifier.classify  # (logits, bottleneck features), as the whole classifier computes them


def _head_of(model: Classifier) -> _Head:
    return _Head(model.bottleneck, model.head)


class Discriminator(nn.Module):
    """Domain discriminator; forward() returns (logits [N], bridge output [N] or None).

    `layers` is "batchnorm" (Linear, BN, ReLU per hidden layer) or "dropout" (Linear, ReLU,
    Dropout 0.5). With `bridge` (GVB), logits = out(h) - bridge(h) on the last hidden layer h, and
    the loss penalizes mean |bridge(h)|. With `spectral` (ASAN), every linear layer is spectrally
    normalized.
    """

    def __init__(self, in_dim: int, hidden: int = 1024, bridge: bool = False, spectral: bool = False, layers: str = "batchnorm"):
        super().__init__()
        if layers not in DISCRIMINATORS:
            raise ValueError(f"unknown discriminator {layers!r}; expected one of {', '.join(DISCRIMINATORS)}")
        norm = nn.utils.parametrizations.spectral_norm if spectral else (lambda layer: layer)

        def hidden_layer(width_in: int) -> list[nn.Module]:
            if layers == "batchnorm":
                return [norm(nn.Linear(width_in, hidden)), nn.BatchNorm1d(hidden), nn.ReLU()]
            return [norm(nn.Linear(width_in, hidden)), nn.ReLU(), nn.Dropout(0.5)]

        self.body = nn.Sequential(*hidden_layer(in_dim), *hidden_layer(hidden))
        self.out = norm(nn.Linear(hidden, 1))
        self.bridge = nn.Linear(hidden, 1) if bridge else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.body(x)
        logits = self.out(h).squeeze(1)
        if self.bridge is None:
            return logits, None
        bridge = self.bridge(h).squeeze(1)
        return logits - bridge, bridge


def check_backbone_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), 3, 0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "list them with python -c 'import timm; print(timm.list_models())'"
        raise InputError(f"unknown backbone {name!r}", hint)


def create_backbone(name: str, pretrained: bool = True, weights: str | None = None) -> nn.Module:
    """A timm feature extractor (no classifier). Local `weights` win over downloading pretrained ones."""
    import timm

    check_backbone_name(name)
    if weights is not None:
        backbone = timm.create_model(name, pretrained=False, num_classes=0)
        load_backbone_weights(backbone, weights)
        return backbone
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=0)
    hub = hub_unreachable()
    try:
        with _hub_offline(hub is not None):  # unreachable: the local cache only, instead of a minute of retries
            return timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError, ValueError) as exc:
        why = f"{hub}, and they are not in the local cache" if hub else reason(exc)
        raise InputError(f"cannot fetch pretrained weights for {name} ({why})",
                         "pass --weights FILE with a local timm state dict, or --no-pretrained to start from random init") from exc


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the model hub cannot be reached (offline asked for, or no connection to it within
    `timeout` seconds), or None. Behind a proxy the hub's own client knows best: not probed."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host} cannot be reached: {reason(exc)}"
    return None


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """huggingface_hub's offline mode for the block (it reads the flag at each call)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


WEIGHTS_HINT = "pass a .safetensors or .pth state dict"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch file loaded with weights_only=True."""
    path = Path(path)
    require_regular(path, "weights file", WEIGHTS_HINT)  # a FIFO or /dev/zero would block or never end
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch's own advice on unpickling is not for golabels' users
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"weights file {path} holds pickled Python objects (a whole model, or a checkpoint with more than tensors), "
                         "which golabels never unpickles: it could run any code",
                         "save the state dict instead: torch.save(model.state_dict(), FILE), or a .safetensors file") from exc
    except Exception as exc:  # corrupt or truncated: unusable alike
        raise InputError(f"cannot read weights file {path} ({reason(exc)})", WEIGHTS_HINT) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _preview(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a timm state dict, ignoring the backbone's own classifier; any other mismatch is an error.
    A golabels model (a run's model.safetensors) gives its backbone: adapting from a source-only run."""
    state = read_state_dict(path)
    if any(k.startswith("head.") for k in state) and any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    classifiers = backbone.pretrained_cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    state = {k: v for k, v in state.items() if not any(k.startswith(c + ".") for c in classifiers)}
    own = backbone.state_dict()
    name = backbone.pretrained_cfg.get("architecture", type(backbone).__name__)
    shared = [k for k in state if k in own]
    if len(shared) < len(own) // 2:
        raise InputError(
            f"weights file {path} is for another architecture than {name} ({len(shared)} of {len(own)} keys match)",
            "pass --backbone with the architecture the weights were trained for",
        )
    wrong_shape = [k for k in shared if state[k].shape != own[k].shape]
    if wrong_shape:
        raise InputError(
            f"weights file {path} does not fit {name}: wrong shapes for {_preview(wrong_shape)}",
            "pass --backbone with the architecture the weights were trained for",
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = ([f"missing keys {_preview(missing)}"] if missing else []) + (
            [f"unexpected keys {_preview(unexpected)}"] if unexpected else []
        )
        raise InputError(f"weights file {path} does not match {name}: {'; '.join(parts)}", "check the file and --backbone")
    backbone.load_state_dict(state, strict=True)
    log.info("loaded %d backbone tensors from %s", len(state), path)


def resolve_data_config(backbone: nn.Module, image_size: int | None) -> dict:
    """timm's data config for the backbone (size, mean, std, interpolation, crop), size overridable."""
    from timm.data import resolve_data_config as timm_resolve

    args = {"input_size": (3, image_size, image_size)} if image_size else {}
    cfg = timm_resolve(args, model=backbone)
    return {
        "input_size": [int(v) for v in cfg["input_size"]],
        "interpolation": str(cfg["interpolation"]),
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "crop_pct": float(cfg["crop_pct"]),
        "crop_mode": str(cfg.get("crop_mode", "center")),
    }


def input_width(module: nn.Module) -> int:
    """The input width of a module's first Linear layer (a discriminator's, a head's)."""
    return next(m for m in module.modules() if isinstance(m, nn.Linear)).in_features
