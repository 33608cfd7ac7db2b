"""adapt's remedies for an imbalanced source and a label shift (docs/label-shift.md), and the
words the warnings that recommend them end with. Torch-free: the console's run report names them
too, and `predict` imports the console without PyTorch."""

from __future__ import annotations

from collections.abc import Sequence

REMEDIES = ("balance_source", "balance_target", "label_shift_weights")


# A source whose largest class holds more than this many times the images of its smallest is
# warned about, and balanced by default for an adversarial method: config.resolve_balancing says
# what the value was measured from.
IMBALANCE_WARNING = 3.0

# A target folder of fewer images is too small to adapt on: with 1 and 4 target images the frozen
# default (--method auto) lost 16-20 and 5-7 points to source-only on Office-31 amazon <-> webcam,
# on every seed; with 16 it was above it on the mean of both tasks (+1.8 and +0.5 points, 2 of
# 10 task-seeds below; benchmarks/RESULTS.md, issue 45).
SMALL_TARGET = 16
SMALL_TARGET_LOSS = "1 image: 16-20 points below source-only, 4 images: 5-7"


def remedy_flags(options) -> list[str]:
    """The remedies a run's options (a config dict or AdaptConfig) turn on, as command-line flags."""
    get = options.get if isinstance(options, dict) else lambda k: getattr(options, k, False)
    return [f"--{k.replace('_', '-')}" for k in REMEDIES if get(k)]


def remedy_hint(flags: Sequence[str], by_default: Sequence[str] = (), recommend: bool = True) -> str:
    """The end of an imbalance or label-shift warning: what to try, or what to check when the run
    already uses a remedy (measured safe on the recorded tasks, not on every folder: docs/label-shift.md).
    `by_default`: the flags among them that the run did not ask for (config.resolve_balancing).
    `recommend`: False where no measurement supports a remedy (a source balanced within 3:1)."""
    if not flags and not recommend:
        return (f"compare with --method source-only on labeled target images; balancing (--balance-source --balance-target) "
                f"was measured to help only on sources imbalanced above {IMBALANCE_WARNING:g}:1 (docs/label-shift.md)")
    if not flags:
        return (f"try --balance-source --balance-target (an adversarial --method's default when the source is imbalanced above "
                f"{IMBALANCE_WARNING:g}:1) and compare with --method source-only on labeled target images (docs/label-shift.md)")
    chosen, off = "", " ".join("--no-" + f[2:] for f in by_default)
    if by_default and list(by_default) == list(flags):
        chosen = f", the default on a source imbalanced above {IMBALANCE_WARNING:g}:1 ({off} to train without)"
    elif by_default:
        chosen = f" ({' '.join(by_default)} by default on a source imbalanced above {IMBALANCE_WARNING:g}:1; {off} to train without)"
    return f"this run uses {' '.join(flags)}{chosen}: compare it with --method source-only on labeled target images (docs/label-shift.md)"


def small_target_warning(images: int, hint: str | None) -> str | None:
    """The warning for a target folder too small to adapt on; None when it is not, or for a
    recipe that does not adapt to the target (hint None)."""
    if images >= SMALL_TARGET or hint is None:
        return None
    return (f"the target folder holds {images} image{'' if images == 1 else 's'}: adapting on fewer than {SMALL_TARGET} lost to "
            f"source-only on every task measured ({SMALL_TARGET_LOSS}); {hint}")
