"""Benchmark: the web app served as in production (gunicorn, as the Dockerfile starts it) against
the raw model forward pass, in one run, on real images.

    python scripts/benchmark_serving.py                        # data/06_models/classifier.keras
    python scripts/benchmark_serving.py --model path/to/classifier.keras --clients 8 --requests 25

Measures:

- raw forward: the served model's compiled forward pass on one preprocessed image (batch 1), and
  the preprocessing of one image file, in this process, before the server starts;
- one client: ``POST /predict`` latency (p50, p95) over ``--single`` sequential requests;
- ``--clients`` concurrent clients x ``--requests`` each: throughput (images/s), latency, errors,
  and whether every answer equals the one-client answer for the same image (answers never mixed);
- peak resident memory of the gunicorn worker.

Results go to ``data/08_reporting/serving_benchmark.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from chest_ct_classifier.preprocessing import fitted_rgb, scale_for_vgg16
from chest_ct_classifier.serving.served_model import load_served_model
from chest_ct_classifier.serving.settings import ServingSettings

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = PROJECT / "data" / "01_raw" / "sample" / "Data"
REPORT = PROJECT / "data" / "08_reporting" / "serving_benchmark"


def _images(folder: Path, limit: int) -> list[bytes]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not paths:
        raise SystemExit(f"no images under {folder}")
    return [p.read_bytes() for p in paths[:limit]]


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "mean_ms": round(float(ms.mean()), 1),
    }


def raw_forward(model_path: Path, images: list[bytes], repeats: int) -> dict:
    served = load_served_model(ServingSettings(project_path=PROJECT, model_path=model_path))
    size = served.image_size
    preprocess, forward = [], []
    for i in range(repeats):
        data = images[i % len(images)]
        start = time.perf_counter()
        batch = scale_for_vgg16(fitted_rgb(data, size))[None]
        preprocess.append(time.perf_counter() - start)
        start = time.perf_counter()
        served.forward(batch)  # what the app calls per request
        forward.append(time.perf_counter() - start)
    return {
        "image_size": size,
        "forward_batch1": _percentiles(forward),
        "preprocess": _percentiles(preprocess),
        "images_per_second_batch1": round(1 / statistics.median(forward), 2),
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_gunicorn(model_path: Path, port: int, threads: int) -> subprocess.Popen:
    # The one model file, one worker: nothing from the caller's serving settings.
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHEST_CT_") and k not in {"WEB_CONCURRENCY", "GUNICORN_THREADS"}
    }
    env = {
        **inherited,
        "PORT": str(port),
        "GUNICORN_THREADS": str(threads),
        "CHEST_CT_MODEL_PATH": str(model_path),
        "CHEST_CT_PROJECT_PATH": str(PROJECT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    process = subprocess.Popen(
        ["gunicorn", "app:app", "--access-logfile", "/dev/null"],
        cwd=PROJECT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except requests.RequestException:  # not listening yet, or still loading the model
            pass
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with {process.returncode}")
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise SystemExit("the app did not become healthy in 180 s")


def _peak_rss_mb(process: subprocess.Popen) -> float:
    """Largest peak RSS (VmHWM) among gunicorn's processes: the worker holding the model."""
    peaks = []
    pids = [process.pid]
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    if children.exists():
        pids += [int(pid) for pid in children.read_text().split()]
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return round(max(peaks), 1)


def _post(session: requests.Session, url: str, data: bytes) -> tuple[float, dict | None]:
    start = time.perf_counter()
    answer = session.post(url, files={"file": ("image.png", data)}, timeout=300)
    elapsed = time.perf_counter() - start
    return elapsed, answer.json() if answer.status_code == 200 else None


def served(base: str, images: list[bytes], single: int, clients: int, per_client: int) -> dict:
    url = f"{base}/predict"
    with requests.Session() as session:
        _post(session, url, images[0])  # warm-up
        expected: dict[int, dict] = {}
        latencies = []
        for i in range(single):
            elapsed, body = _post(session, url, images[i % len(images)])
            latencies.append(elapsed)
            if body is not None:
                expected.setdefault(i % len(images), body["probabilities"])
        for i in range(len(images)):
            if i not in expected:
                expected[i] = _post(session, url, images[i])[1]["probabilities"]

    def client(number: int) -> list[tuple[int, float, dict | None]]:
        results = []
        with requests.Session() as own:
            for request in range(per_client):
                index = (number * per_client + request) % len(images)
                elapsed, body = _post(own, url, images[index])
                results.append((index, elapsed, body))
        return results

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    errors = sum(body is None for _, _, body in results)
    mismatched = sum(
        body is not None
        and any(abs(body["probabilities"][k] - v) > 1e-5 for k, v in expected[index].items())
        for index, _, body in results
    )
    return {
        "single_client": {"requests": single, **_percentiles(latencies)},
        "concurrent": {
            "clients": clients,
            "requests": len(results),
            "errors": errors,
            "answers_not_matching_single_client": mismatched,
            "wall_seconds": round(wall, 2),
            "images_per_second": round(len(results) / wall, 2),
            **_percentiles([elapsed for _, elapsed, _ in results]),
        },
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _markdown(report: dict) -> str:
    raw, one, many = (
        report["raw"],
        report["served"]["single_client"],
        report["served"]["concurrent"],
    )
    return "\n".join(
        [
            "# Serving benchmark",
            "",
            f"{report['machine']}; model {report['model']} ({raw['image_size']} px); "
            f"gunicorn, 1 worker, {report['threads']} threads; {report['images']} real images.",
            "",
            "| measure | p50 ms | p95 ms | images/s |",
            "|---|---:|---:|---:|",
            f"| raw forward, batch 1 | {raw['forward_batch1']['p50_ms']} | "
            f"{raw['forward_batch1']['p95_ms']} | {raw['images_per_second_batch1']} |",
            f"| preprocessing of one file | {raw['preprocess']['p50_ms']} | "
            f"{raw['preprocess']['p95_ms']} | |",
            f"| `/predict`, 1 client | {one['p50_ms']} | {one['p95_ms']} | "
            f"{round(1000 / one['p50_ms'], 2)} |",
            f"| `/predict`, {many['clients']} clients x {many['requests'] // many['clients']} | "
            f"{many['p50_ms']} | {many['p95_ms']} | {many['images_per_second']} |",
            "",
            f"Concurrent run: {many['errors']} errors, "
            f"{many['answers_not_matching_single_client']} answers different from the one-client "
            "answer for the same image. "
            f"Worker peak RSS {report['peak_rss_mb']} MB. "
            f"`/predict` p50 / raw forward p50 = {report['latency_over_forward']}.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=PROJECT / "data/06_models/classifier.keras")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--max-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=50, help="raw forward passes timed")
    parser.add_argument("--single", type=int, default=50, help="one-client requests")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads")
    parser.add_argument("--output", type=Path, default=REPORT)
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"no model at {args.model}: run `make run` (or `kedro run`) first")

    images = _images(args.images, args.max_images)
    raw = raw_forward(args.model.resolve(), images, args.repeats)
    port = _free_port()
    process = start_gunicorn(args.model.resolve(), port, args.threads)
    try:
        measured = served(
            f"http://127.0.0.1:{port}", images, args.single, args.clients, args.requests
        )
        peak = _peak_rss_mb(process)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    report = {
        "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs",
        "model": str(args.model),
        "images": len(images),
        "threads": args.threads,
        "raw": raw,
        "served": measured,
        "peak_rss_mb": peak,
        "latency_over_forward": round(
            measured["single_client"]["p50_ms"] / raw["forward_batch1"]["p50_ms"], 2
        ),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
