"""Benchmark: the web app served as in production (gunicorn, as the Dockerfile starts it) in each
precision, against the raw forward pass of the same precision and a seed-style baseline that
reloads the model for every request, in one run, on real images.

    python scripts/benchmark_serving.py                  # the project's model (make run first)
    python scripts/benchmark_serving.py --project ../full-run --precisions fp32,int8
    python scripts/benchmark_serving.py --model path/to/classifier.keras

Measures, per precision (``fp32``, ``bf16``, ``int8``):

- raw forward: the precision's forward pass in this process on preprocessed images, batch 1
  and batch 16 (per image), whatever the gate says;
- the app started with ``MODEL_PRECISION`` set to it: the precision it really serves (the gate
  may refuse a reduced one: then it serves fp32 and the table says so);
- one client: ``POST /predict`` latency (p50, p95) over ``--single`` sequential requests;
- ``--clients`` concurrent clients x ``--requests`` each: throughput (images/s), latency, errors,
  and whether every answer equals the one-client answer for the same image (answers never mixed);
- peak resident memory of the gunicorn worker;
- with ``--rounds N``, the served measurements N times, the precisions taking turns (fp32,
  bf16, int8, fp32, ...) on apps started once: a shared machine's speed drifts by tens of
  percent within minutes, and turns spread the drift over every precision alike. The table
  gives each precision's median round, each round's throughput and the ratio of the medians
  to fp32's;

and once: preprocessing of one file, and the seed's design (load the model, predict, per
request). Results go to ``data/08_reporting/serving_benchmark.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import requests

from chest_ct_classifier.images.preprocessing import (
    fitted_rgb,
    preprocess_image_bytes,
    scale_for_vgg16,
)
from chest_ct_classifier.model.numeric_precision import PRECISIONS, forward_for, median_seconds
from chest_ct_classifier.serving.served_model import model_files
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


def raw_forward(
    model: keras.Model, int8: bytes | None, precision: str, inputs: np.ndarray, repeats: int
) -> dict | None:
    """The precision's forward pass on batch 1 and batch 16 (per image), in this process."""
    if precision == "int8" and int8 is None:
        return None
    forward = forward_for(model, precision, int8)
    batch = np.concatenate([inputs] * (16 // len(inputs) + 1))[:16]
    one = [
        median_seconds(lambda i=i: forward(inputs[i : i + 1]), 1)
        for i in np.arange(repeats) % len(inputs)
    ]
    sixteen = median_seconds(lambda: forward(batch), max(1, repeats // 10))
    return {
        "forward_batch1": _percentiles(one),
        "images_per_second_batch1": round(1 / statistics.median(one), 2),
        "forward_batch16_per_image_ms": round(sixteen / 16 * 1000, 1),
        "images_per_second_batch16": round(16 / sixteen, 2),
    }


def preprocessing(images: list[bytes], size: int, repeats: int) -> dict:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        scale_for_vgg16(fitted_rgb(images[i % len(images)], size))
        times.append(time.perf_counter() - start)
    return _percentiles(times)


def seed_baseline(model_path: Path, images: list[bytes], requests_: int) -> dict:
    """The seed's design: every request loads the model file, then predicts with Keras."""
    times = []
    for i in range(requests_):
        start = time.perf_counter()
        model = keras.saving.load_model(model_path, compile=False)
        size = model.input_shape[1]
        model.predict(preprocess_image_bytes(images[i % len(images)], size)[None], verbose=0)
        times.append(time.perf_counter() - start)
        del model
        keras.backend.clear_session()
    return {"requests": requests_, **_percentiles(times),
            "images_per_second": round(1 / statistics.median(times), 2)}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_gunicorn(
    settings: ServingSettings, precision: str, port: int, threads: int | None
) -> subprocess.Popen:
    """The app in gunicorn serving ``settings``' model in ``precision``, with its batching."""
    # One worker serving the one model: nothing from the caller's serving settings.
    dropped = {"WEB_CONCURRENCY", "GUNICORN_THREADS", "MODEL_PRECISION"}
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith("CHEST_CT_") and k not in dropped
    }
    env = {
        **inherited,
        "PORT": str(port),
        "MODEL_PRECISION": precision,
        "CHEST_CT_PROJECT_PATH": str(settings.project_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    if settings.model_path:
        env["CHEST_CT_MODEL_PATH"] = str(settings.model_path)
    env["CHEST_CT_MAX_BATCH"] = str(settings.max_batch)
    env["CHEST_CT_BATCH_WAIT_MS"] = str(settings.batch_wait_ms)
    if threads:
        env["GUNICORN_THREADS"] = str(threads)
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
        and any(abs(body["probabilities"][k] - v) > 1e-4 for k, v in expected[index].items())
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


@contextlib.contextmanager
def running_app(
    settings: ServingSettings, precision: str, threads: int | None
) -> Iterator[tuple[subprocess.Popen, str, str]]:
    """The app started in ``precision`` for the block: its process, its address and the
    precision it really serves (the gate may refuse a reduced one)."""
    port = _free_port()
    process = start_gunicorn(settings, precision, port, threads)
    base = f"http://127.0.0.1:{port}"
    try:
        yield process, base, requests.get(f"{base}/health", timeout=30).json()["precision"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def median_round(rounds: list[dict]) -> dict:
    """The round of median concurrent throughput (the lower middle of an even count): one real
    run, not a blend of several."""
    ranked = sorted(rounds, key=lambda r: r["concurrent"]["images_per_second"])
    return ranked[(len(ranked) - 1) // 2]


def cpu_name() -> str:
    """The CPU's model name, as results.md records it beside every figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cell(value, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def _ratio(concurrent: dict, fp32: dict | None) -> str:
    base = fp32["concurrent"]["images_per_second"] if fp32 else None
    return f"{concurrent['images_per_second'] / base:.2f}" if base else "-"


def _markdown(report: dict) -> str:
    lines = [
        "# Serving benchmark",
        "",
        f"{report['machine']}; model {report['model']} ({report['image_size']} px); gunicorn, "
        f"1 worker, {report['threads']} threads, batches of up to {report['max_batch']} requests "
        f"(first waits {report['batch_wait_ms']} ms); "
        f"{report['images']} real images; {report['clients']} concurrent clients x "
        f"{report['requests_per_client']} requests; {report.get('rounds', 1)} round(s), the "
        "precisions taking turns (the median round shown).",
        "",
        "| precision asked (served) | forward b1 p50 ms | forward b16 ms/image | b16 images/s | "
        "`/predict` 1 client p50 / p95 ms | p50 / forward b1 | "
        f"{report['clients']} clients images/s (each round) | x fp32 | "
        f"{report['clients']} clients p50 / p95 ms | errors / mismatches | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fp32 = report["precisions"].get("fp32")
    for precision, row in report["precisions"].items():
        raw, one, many = row["raw"] or {}, row["single_client"], row["concurrent"]
        lines.append(
            f"| {precision} ({row['served_precision']}) | "
            f"{_cell(raw.get('forward_batch1', {}).get('p50_ms'))} | "
            f"{_cell(raw.get('forward_batch16_per_image_ms'))} | "
            f"{_cell(raw.get('images_per_second_batch16'))} | "
            f"{one['p50_ms']} / {one['p95_ms']} | {_cell(row['latency_over_forward'])} | "
            f"{many['images_per_second']} "
            f"({' / '.join(str(r) for r in row.get('rounds_images_per_second', []))}) | "
            f"{_ratio(many, fp32)} | {many['p50_ms']} / {many['p95_ms']} | "
            f"{many['errors']} / {many['answers_not_matching_single_client']} | "
            f"{row['peak_rss_mb']} |"
        )
    seed = report["seed_baseline"]
    lines += [
        f"| seed-style: model loaded per request, Keras `predict` | | | | "
        f"{seed['p50_ms']} / {seed['p95_ms']} | | {seed['images_per_second']} (1 client) | | | | |",
        "",
        f"Preprocessing of one file: p50 {report['preprocess']['p50_ms']} ms. "
        "Served precision: what `/health` reported (the gate can refuse a reduced one). "
        "p50 / forward b1: one-client `/predict` latency over the raw forward pass of the "
        "precision served. Mismatches: concurrent answers different from the one-client answer "
        "for the same image.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--project",
        type=Path,
        default=PROJECT,
        help="serve this project's model (its catalog names the files)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a model file instead (its int8 model and gate report beside it)",
    )
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--max-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20, help="raw forward passes timed")
    parser.add_argument("--single", type=int, default=30, help="one-client requests")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--baseline", type=int, default=5, help="seed-style requests")
    parser.add_argument(
        "--threads", type=int, default=None, help="gunicorn threads (default: gunicorn.conf.py's)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=ServingSettings.max_batch,
        help="requests per forward pass, at most (1: no batching)",
    )
    parser.add_argument("--batch-wait-ms", type=float, default=ServingSettings.batch_wait_ms)
    parser.add_argument(
        "--rounds", type=int, default=1, help="served measurements per precision, taking turns"
    )
    parser.add_argument("--output", type=Path, default=REPORT)
    args = parser.parse_args()  # fmt: skip
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise SystemExit(f"unknown precisions {sorted(unknown)}; choose among {PRECISIONS}")
    settings = ServingSettings(
        project_path=args.project.resolve(),
        model_path=args.model.resolve() if args.model else None,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
    )
    files = model_files(settings)
    if not files.model.is_file():
        raise SystemExit(f"no model at {files.model}: run `make run` (or `kedro run`) first")

    model = keras.saving.load_model(files.model, compile=False)
    size = model.input_shape[1]
    int8 = files.int8.read_bytes() if files.int8 and files.int8.is_file() else None
    images = _images(args.images, args.max_images)
    inputs = np.stack([preprocess_image_bytes(data, size) for data in images])
    threads = args.threads
    report = {
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs",
        "model": str(files.model),
        "image_size": size,
        "images": len(images),
        "threads": threads or _configured_threads(),
        "max_batch": settings.max_batch,
        "batch_wait_ms": settings.batch_wait_ms,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "rounds": args.rounds,
        "preprocess": preprocessing(images, size, args.repeats),
        "precisions": {},
    }
    raws = {p: raw_forward(model, int8, p, inputs, args.repeats) for p in precisions}
    rounds: dict[str, list[dict]] = {p: [] for p in precisions}
    with contextlib.ExitStack() as stack:
        # Each precision's app starts once and idles while another one is measured: a start
        # costs a TensorFlow import and a model load, and a round a warm-up request.
        apps = {p: stack.enter_context(running_app(settings, p, threads)) for p in precisions}
        for turn in range(args.rounds):
            for precision in precisions:
                _, base, served_precision = apps[precision]
                measured = served(base, images, args.single, args.clients, args.requests)
                rounds[precision].append({"served_precision": served_precision, **measured})
                print(f"round {turn + 1}, {precision}: {rounds[precision][-1]}", flush=True)
        peaks = {p: _peak_rss_mb(process) for p, (process, _, _) in apps.items()}
    for precision in precisions:
        measured = median_round(rounds[precision]) | {"peak_rss_mb": peaks[precision]}
        served_precision = measured["served_precision"]
        reference = raws.get(served_precision)
        report["precisions"][precision] = {
            "raw": raws[precision],
            **measured,
            "rounds_images_per_second": [
                r["concurrent"]["images_per_second"] for r in rounds[precision]
            ],
            "latency_over_forward": round(
                measured["single_client"]["p50_ms"] / reference["forward_batch1"]["p50_ms"], 2
            )
            if reference
            else None,
        }
    del model
    report["seed_baseline"] = seed_baseline(files.model, images, args.baseline)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))


def _configured_threads() -> int:
    # gunicorn.conf.py's default, read the way gunicorn reads it
    namespace: dict = {}
    exec((PROJECT / "gunicorn.conf.py").read_text(), namespace)
    return int(namespace["threads"])


if __name__ == "__main__":
    main()
