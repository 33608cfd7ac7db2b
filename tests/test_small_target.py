"""A target too small to adapt on (issue 45 item 3): warned with the number that makes it safe, and
--method auto ships its source-only candidate (benchmarks/RESULTS.md: with 1 and 4 target images
adapting lost to source-only on every seed of both tasks)."""

import json
import shutil

from conftest import TINY, cli, cli_subprocess
from golabels_cli.remedies import SMALL_TARGET, small_target_warning
from golabels_cli.training.search import pick


def _few_targets(target, folder, n):
    folder.mkdir()
    for i, path in enumerate(sorted(p for p in target.rglob("*.png"))[:n]):
        shutil.copy(path, folder / f"{i}.png")
    return folder


def test_an_adapting_run_on_a_tiny_target_is_warned_with_the_safe_number(domains, tmp_path):
    source, target = domains
    few = _few_targets(target, tmp_path / "few", 3)
    result = cli_subprocess("adapt", source, few, *TINY, "--method", "dann", "--iters", "2", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "the target folder holds" in line]
    assert warned == [f"warning: the target folder holds 3 images: adapting on fewer than {SMALL_TARGET} lost to source-only on every task "
                      "measured (1 image: 16-20 points below source-only, 4 images: 5-7); add target images, or train --method source-only"]
    baseline = cli("adapt", source, few, *TINY, "--method", "source-only", "--iters", "2", "--out", tmp_path / "baseline")
    assert baseline.exit_code == 0 and "the target folder holds" not in baseline.stderr  # nothing to adapt: nothing to warn


def test_a_search_on_a_tiny_target_ships_its_source_only_candidate(domains, tmp_path):
    source, target = domains
    few = _few_targets(target, tmp_path / "few", 2)
    result = cli("adapt", source, few, *TINY, "--freeze-backbone", "--search-recipes", "dann,mcc,source-only", "--iters", "2",
                 "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr
    search = json.loads(result.stdout)["search"]
    assert search["shipped"] == "source-only" and search["members"] == ["source-only"]
    assert search["why"].startswith(f"source-only: the target holds 2 images, fewer than {SMALL_TARGET}, too few to adapt on")
    assert result.stderr.count("the target folder holds 2 images") == 1  # said once for the search's adapting candidates


def test_the_rule_and_its_threshold():
    records = [{"recipe": r, "validators": {}} for r in ("cdan-e+bnm", "mcc", "source-only")]
    assert pick(records, "ensemble", SMALL_TARGET - 1)[0] == "source-only"
    assert pick(records, "ensemble", SMALL_TARGET)[0] == "ensemble"
    assert pick(records[:2], "ensemble", 1)[0] == "ensemble"  # no source-only candidate to ship: the rule's pick
    assert small_target_warning(SMALL_TARGET, "hint") is None and small_target_warning(1, None) is None
    assert small_target_warning(1, "hint").startswith("the target folder holds 1 image:")
