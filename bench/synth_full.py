"""Time and memory of the synthetic MicroLens generator at a given scale.

    python bench/synth_full.py                    # full scale into a temporary folder
    python bench/synth_full.py --scale small      # a quick try
    python bench/synth_full.py --out /data/synth  # keep the dataset

Prints wall time per stage, peak memory and the size of every file written. Peak memory:
``ru_maxrss`` of this process and of its largest child (image workers), and, when psutil
is installed, the sampled peak of the summed resident memory of the whole process tree.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path


class TreeMemorySampler:
    """Samples the summed RSS of this process and its children every ``interval`` s."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import psutil
        except ImportError:
            self._proc = None
        else:
            self._proc = psutil.Process()

    @property
    def available(self) -> bool:
        return self._proc is not None

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self._proc] + self._proc.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        continue
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemorySampler":
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def _dir_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full", help="tiny, small or full (default full)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="dataset root to keep (default: temp, removed)")
    parser.add_argument("--image-zip", action="store_true", help="write item_images.zip")
    parser.add_argument("--no-images", action="store_true", help="skip the cover images")
    parser.add_argument("--workers", type=int, default=None, help="image workers (default 2)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    args = parser.parse_args(argv)

    from mmembed.datasets.synthetic import generate

    tmp = None
    root = args.out
    if root is None:
        tmp = tempfile.mkdtemp(prefix=f"synth_{args.scale}_")
        root = Path(tmp) / "data"
    try:
        with TreeMemorySampler() as sampler:
            t0 = time.perf_counter()
            summary = generate(root, scale=args.scale, seed=args.seed, progress=args.progress,
                               image_zip=args.image_zip, with_images=not args.no_images,
                               workers=args.workers)
            wall = time.perf_counter() - t0
        self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"scale {args.scale}, seed {args.seed}: wall {wall:.1f} s")
        print("stages (s): " + json.dumps(summary["seconds"]))
        print(f"peak RSS: this process {_gib(self_kib * 1024)}, largest child "
              f"{_gib(child_kib * 1024)}", end="")
        if sampler.available:
            print(f", sampled whole tree {_gib(sampler.peak)}")
        else:
            print(" (install psutil for the whole-tree figure)")
        print("files:")
        total = 0
        for path in sorted(root.iterdir()):
            entries = [path] if path.is_file() or path.name == "item_images" \
                else sorted(path.iterdir())
            for sub in entries:
                if sub.is_dir():
                    count, size = _dir_size(sub)
                    label = f"{sub.relative_to(root)}/ ({count} files)"
                else:
                    size = sub.stat().st_size
                    label = str(sub.relative_to(root))
                total += size
                print(f"  {label:<45s} {size / 2**20:10.1f} MiB")
        print(f"  {'total':<45s} {total / 2**20:10.1f} MiB")
        print("summary: " + json.dumps({k: summary[k] for k in (
            "n_items", "n_users", "n_train", "n_valid", "n_test", "n_images",
            "positive_rate", "n_new_items", "new_item_rows")}))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
