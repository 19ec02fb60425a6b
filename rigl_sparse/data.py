"""Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist`` package.

Looked up in ``--data-dir`` (or ``$RIGL_SPARSE_DATA``), then in
``/usr/share/datasets/fashion-mnist`` (where the package installs them), then in
the cache that ``python -m rigl_sparse.data fetch`` fills without root
(``apt-get download`` + ``dpkg -x``).  Nothing is ever downloaded implicitly.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def cache_dir() -> Path:
    """Where ``fetch`` unpacks the data by default: ``$XDG_CACHE_HOME/rigl_sparse/fashion-mnist`` (or
    ``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rigl_sparse" / "fashion-mnist"


def _candidates(data_dir) -> list[Path]:
    """Where to look: only ``data_dir`` when it is given."""
    if data_dir:
        return [Path(data_dir)]
    dirs = [Path(os.environ["RIGL_SPARSE_DATA"])] if os.environ.get("RIGL_SPARSE_DATA") else []
    return dirs + [SYSTEM_DIR, cache_dir() / "usr/share/datasets/fashion-mnist"]


def _file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find(data_dir=None) -> Path:
    """The first directory holding all four IDX files (plain or .gz)."""
    tried = _candidates(data_dir)
    for directory in tried:
        if all(_file(directory, stem) for stem in FILES.values()):
            return directory
    if data_dir:
        raise FileNotFoundError(f"data_dir={str(data_dir)!r} does not hold the Fashion-MNIST IDX files "
                                f"{sorted(FILES.values())} (plain or .gz)")
    raise FileNotFoundError(
        "Fashion-MNIST not found (looked in " + ", ".join(map(str, tried)) + "). Get it with "
        f"`python -m rigl_sparse.data fetch` (downloads Debian's {PACKAGE} into {cache_dir()}, no root needed), "
        f"`apt-get install {PACKAGE}`, or pass --data-dir DIR with the four IDX files."
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file" + (" (shorter than its header)" if len(data) < 4
                                                                       else ""))
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated: its header of {ndim} dimensions ends early ({len(data)} bytes)")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, found {array.size} bytes")
    return array.reshape(dims)


def load(data_dir=None) -> dict[str, torch.Tensor]:
    """``train_images [60000, 28, 28] uint8``, ``train_labels [60000] int64`` and the test pair."""
    directory = find(data_dir)
    out = {}
    for key, stem in FILES.items():
        path = _file(directory, stem)
        array = read_idx(path)
        if key.endswith("labels"):
            if array.ndim != 1 or (array.size and int(array.max()) >= 10):
                raise ValueError(f"{path} does not hold Fashion-MNIST labels: expected one dimension of classes "
                                 f"0-9, got shape {array.shape}" + (f" and a label {int(array.max())}"
                                                                    if array.size and array.ndim == 1 else ""))
            out[key] = torch.from_numpy(array.copy()).long()
        else:
            if array.ndim != 3 or array.shape[1:] != (28, 28):
                raise ValueError(f"{path} does not hold 28 x 28 images: shape {array.shape}")
            out[key] = torch.from_numpy(array.copy())
    for split in ("train", "test"):
        if len(out[f"{split}_images"]) != len(out[f"{split}_labels"]):
            raise ValueError(f"the {split} files disagree: {len(out[f'{split}_images'])} images, "
                             f"{len(out[f'{split}_labels'])} labels")
    return out


def fetch(target: Path | None = None) -> Path:
    """Download Debian's package with ``apt-get download`` and unpack it with ``dpkg -x`` (no root)."""
    target = Path(target) if target else cache_dir()
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"`{tool}` not found: fetching needs a Debian-based system; otherwise pass --data-dir")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, check=True)
        debs = list(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download produced no {PACKAGE} package")
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(debs[0]), str(target)], check=True)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rigl_sparse.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_p = sub.add_parser("fetch", help="download the data set into the cache unless it is already present")
    fetch_p.add_argument("--force", action="store_true", help="download even when the files are found")
    sub.add_parser("where", help="print the directory the data would be read from")
    args = parser.parse_args(argv)
    if args.command == "where":
        print(find())
        return 0
    if not args.force:
        try:
            print(f"Fashion-MNIST already present in {find()}")
            return 0
        except FileNotFoundError:
            pass
    fetch()
    print(f"Fashion-MNIST unpacked; reading from {find()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
