"""Benchmark: batch scoring on one machine (the local `inference` pipeline) against Spark
(`batch_scoring`) with one and two local executor cores, in one run, on the same images.

    python scripts/benchmark_batch_scoring.py --images ../shared/data/extracted/Data/test
    python scripts/benchmark_batch_scoring.py            # the bundled sample's test images

Each mode runs as a user runs it (`kedro run --pipelines ...`, a new process), once on a
folder of one image (the fixed cost: start-up, Spark's JVM, loading the model) and once on all
the images; throughput is the extra images over the extra time. The local pipeline scores the
project's model file, Spark the registered champion: register it first (`make run`). Results go
to ``data/08_reporting/batch_scoring_benchmark.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_serving import cpu_name  # the scripts folder is on sys.path when run

PROJECT = Path(__file__).resolve().parents[1]
MODES = {
    "local pipeline (inference)": ("inference", None),
    "Spark local[1]": ("batch_scoring", "local[1]"),
    "Spark local[2]": ("batch_scoring", "local[2]"),
}


def _run(pipeline: str, master: str | None, folder: Path) -> float:
    key = "inference" if pipeline == "inference" else "batch_scoring"
    env = {**os.environ, "CHEST_CT_SPARK_MASTER": master or "local[*]"}
    started = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "kedro"), "run", "--pipelines", pipeline,
         "--params", f"{key}.input_path={folder}"],
        cwd=PROJECT, env=env, check=True, capture_output=True, timeout=3600,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = PROJECT / "data/01_raw/sample/Data/test"
    parser.add_argument("--images", type=Path, default=default, help="a folder of images")
    args = parser.parse_args()
    images = sorted(p for p in args.images.rglob("*") if p.is_file())
    if len(images) < 2:
        raise SystemExit(f"{args.images} has fewer than two files")
    with tempfile.TemporaryDirectory() as temporary:
        one = Path(temporary) / "one"
        one.mkdir()
        shutil.copy2(images[0], one / images[0].name)
        results = {}
        for name, (pipeline, master) in MODES.items():
            fixed = _run(pipeline, master, one)
            whole = _run(pipeline, master, args.images)
            per_second = (len(images) - 1) / max(whole - fixed, 1e-9)
            results[name] = {"start_up_s": round(fixed, 1), "all_s": round(whole, 1),
                             "images_per_s": round(per_second, 2)}  # fmt: skip
            print(name, results[name], flush=True)
    report = {"cpu": cpu_name(), "cores": os.cpu_count(), "images": len(images),
              "folder": str(args.images), "modes": results}  # fmt: skip
    out = PROJECT / "data/08_reporting/batch_scoring_benchmark"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Batch scoring benchmark ({report['cpu']}, {report['cores']} cores, "
        f"{len(images)} images)", "",
        "| mode | fixed cost (1 image), s | all images, s | images/s beyond the fixed cost |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {r['start_up_s']} | {r['all_s']} | {r['images_per_s']} |"
          for name, r in results.items()],
    ]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
