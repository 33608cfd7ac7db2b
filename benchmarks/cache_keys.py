"""What keying the caches by content costs (issue 54 item 2): seconds to list FOLDERS and key every
image, as a run does before it reads a cached feature or decoded image, side by side in one run:

    identity  the key before: sha256(device, inode, size, mtime) of each file (one stat)
    content   the key now: sha256 of each file's bytes (golabels.hooks.image_keys)

Each measurement runs in a fresh process (the keys are remembered within one), alternating,
--repeats times; the median of each and their ratio are printed. The files are read once before
the first round, so every round reads them from the page cache: a first run on a cold disk also
pays for reading the bytes once (the backbone then reads them again to compute the features).
Nothing else should run on the machine meanwhile.

    python benchmarks/cache_keys.py /tmp/golabels-data/amazon /tmp/golabels-data/webcam --repeats 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

WAYS = ("identity", "content")


def identity_key(path) -> str:
    st = os.stat(path)
    return hashlib.sha256(f"{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()


def measure(way: str, folders: list[str]) -> dict:
    """Seconds to list `folders` and key their images one way, in this process."""
    from golabels.hooks import image_keys, scan_labeled

    start = time.perf_counter()
    paths = [p for folder in folders for p in scan_labeled(folder).paths]
    listed = time.perf_counter()
    keys = [identity_key(p) for p in paths] if way == "identity" else image_keys(paths)
    done = time.perf_counter()
    return {"way": way, "images": len(paths), "bytes": sum(os.path.getsize(p) for p in paths), "list_s": listed - start,
            "key_s": done - listed, "total_s": done - start, "distinct": len(set(keys))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="labeled image folders (class subfolders)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", choices=WAYS, help=argparse.SUPPRESS)  # a single measurement, in a fresh process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.folders)))
        return
    for folder in args.folders:  # into the page cache, for every round alike
        for root, _, files in os.walk(folder):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    while f.read(1 << 20):
                        pass
    rows: dict[str, list[dict]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way in WAYS:
            out = subprocess.run([sys.executable, __file__, *args.folders, "--one", way], capture_output=True, text=True, check=True)
            rows[way].append(json.loads(out.stdout))
    first = rows[WAYS[0]][0]
    print(f"{first['images']} images, {first['bytes'] / 1e6:.1f} MB, {args.repeats} rounds (median seconds: list, key, total)")
    medians = {}
    for way in WAYS:
        medians[way] = {k: statistics.median(r[k] for r in rows[way]) for k in ("list_s", "key_s", "total_s")}
        m = medians[way]
        print(f"{way:>9}: list {m['list_s']:.3f}  key {m['key_s']:.3f}  total {m['total_s']:.3f}  "
              f"({rows[way][0]['distinct']} distinct keys)")
    print(f"content / identity, total: {medians['content']['total_s'] / medians['identity']['total_s']:.2f}x "
          f"(+{medians['content']['total_s'] - medians['identity']['total_s']:.3f} s)")


if __name__ == "__main__":
    main()
