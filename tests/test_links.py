"""Links in a labeled folder count by where they really lead, never by how their names sort
(issue 44, item 2): an image is its real folder's class, a linked class folder is its real one."""

import shutil

from conftest import TINY, cli
from golabels_cli.data import scan_labeled


def labeled(tmp_path, domains):
    shutil.copytree(domains[0], tmp_path / "src")
    return tmp_path / "src"


def test_a_link_to_another_class_image_counts_in_that_class_whatever_the_names_sort(domains, tmp_path):
    src = labeled(tmp_path, domains)
    (src / "circle").rename(src / "acircle")  # the link's folder sorts first, as 'acat' before 'dog'
    real = sorted((src / "square").iterdir())[0]
    (src / "acircle" / "zz.png").symlink_to(real)
    images = scan_labeled(src)
    by_path = {p: images.classes[label] for p, label in zip(images.paths, images.labels)}
    assert by_path[real] == "square"  # the real image is read, in its own class
    assert src / "acircle" / "zz.png" not in by_path
    assert any(p == src / "acircle" / "zz.png" and "counts there" in why for p, why in images.skipped)


def test_a_link_to_a_class_folder_never_takes_the_class_from_it(domains, tmp_path):
    src = labeled(tmp_path, domains)
    (src / "circle").rename(src / "zcircle")
    (src / "alink").symlink_to("zcircle")  # sorts before the real folder
    images = scan_labeled(src)
    assert images.classes == ["square", "triangle", "zcircle"]
    assert any(p == src / "alink" and "a link to class folder zcircle" in why for p, why in images.skipped)


def test_a_link_to_a_folder_outside_is_a_class_of_its_own(domains, tmp_path):
    src = labeled(tmp_path, domains)
    shutil.move(src / "circle", tmp_path / "photos-of-circles")
    (src / "circle").symlink_to(tmp_path / "photos-of-circles")  # the only name it has in the folder
    assert scan_labeled(src).classes == ["circle", "square", "triangle"]


def test_adapt_says_where_the_linked_image_counts(domains, tmp_path):
    src = labeled(tmp_path, domains)
    (src / "circle" / "zz.png").symlink_to(sorted((src / "square").iterdir())[0])
    result = cli("adapt", src, domains[1], *TINY, "--iters", "1", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "zz.png (a link to an image of class folder square: it counts there" in result.stderr
    assert "unreadable" not in result.stderr
