"""Rebuild the bundled sample (data/01_raw/sample) from the full Chest CT-Scan archive.

Draws a few distinct images per split and class, keeps the archive's layout (long class folder
names in train/valid, short ones in test) and its quirks (a JPEG named ``.png``, a ``.jpg``,
greyscale and RGB images beside the usual RGBA), and downscales each image so the whole sample
stays small enough to ship in git.

    python scripts/make_sample.py ../shared/data/chest-ct-scan.zip
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import shutil
import zipfile
from collections import defaultdict
from pathlib import Path, PurePosixPath

from PIL import Image

PER_SPLIT = {"train": 8, "valid": 3, "test": 3}
MAX_SIDE = 256
# Quirks worth keeping in the sample, so the default run and the tests meet them.
MUST_HAVE = (
    "Data/train/normal/n7.png",  # JPEG bytes behind a .png name
    "Data/train/normal/n6.jpg",  # a real .jpg
)

SOURCE_NOTE = """# Bundled sample of the Chest CT-Scan images dataset

{count} real images, drawn by `scripts/make_sample.py` (seed {seed}) from the public
"Chest CT-Scan images Dataset" (Mohamed Hany, Kaggle `mohamedhanyyy/chest-ctscan-images`, 2020;
listed as CC0: Public Domain). Each image was downscaled so that its longer side is at most
{max_side} pixels, keeping its mode and its real format (one `.png` here is really a JPEG, as in the
original archive). Layout and folder names are the original archive's: long class folder names in
`train/` and `valid/`, short ones in `test/`.

Images are distinct by content: no file here is a copy of another.

This sample is for the offline demo (`kedro run`) and the tests; it is far too small to train a
useful model. Use the full dataset for that (see the README).
"""


def _downscale(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.load()
    real_format = image.format
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if real_format == "JPEG":
        image.save(out, format="JPEG", quality=90)
    else:
        image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def build_sample(archive: Path, target: Path, seed: int = 0) -> int:
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.namelist() if not m.endswith("/")]
        contents = {m: zf.read(m) for m in members}
    digests = {m: hashlib.sha256(b).hexdigest() for m, b in contents.items()}

    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for member in sorted(members):
        parts = PurePosixPath(member).parts
        groups[(parts[1], parts[2])].append(member)

    rng = random.Random(seed)
    chosen: list[str] = []
    used: set[str] = set()
    for (split, folder), files in sorted(groups.items()):
        wanted = PER_SPLIT[split]
        picks = [m for m in MUST_HAVE if m in files]
        used.update(digests[m] for m in picks)
        pool = files[:]
        rng.shuffle(pool)
        for member in pool:
            if len(picks) >= wanted:
                break
            if digests[member] not in used:
                picks.append(member)
                used.add(digests[member])
        chosen.extend(picks)
        print(f"{split}/{folder}: {len(picks)}")

    if target.exists():
        shutil.rmtree(target)
    for member in chosen:
        out = target / member
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(_downscale(contents[member]))
    (target / "README.md").write_text(
        SOURCE_NOTE.format(count=len(chosen), seed=seed, max_side=MAX_SIDE), encoding="utf-8"
    )
    total = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"{len(chosen)} images, {total / 1e6:.2f} MB in {target}")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="the full chest-ct-scan.zip")
    parser.add_argument("--target", type=Path, default=Path("data/01_raw/sample"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build_sample(args.archive, args.target, args.seed)


if __name__ == "__main__":
    main()
