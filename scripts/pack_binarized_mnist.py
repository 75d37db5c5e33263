"""Generate flowzoo's packaged copy of static binarized MNIST from the canonical files.

    python scripts/pack_binarized_mnist.py ../shared/data/binarized_mnist

Each ``binarized_mnist_{split}.amat`` must match its published SHA-256. The compact
copy (bit-packed, xz-compressed) is written to ``flowzoo/_data/`` and then read back
through flowzoo's loader, which expands it to the canonical text and checks the same
SHA-256.
"""

import argparse
import hashlib
from pathlib import Path

from flowzoo.datasets import BINARIZED_MNIST_SHA256, PACKAGED_DIR, BinarizedMNIST, pack_bits, parse_amat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="folder holding the canonical .amat files")
    args = parser.parse_args()
    PACKAGED_DIR.mkdir(exist_ok=True)
    for split, expected in BINARIZED_MNIST_SHA256.items():
        raw = (args.source / f"binarized_mnist_{split}.amat").read_bytes()
        if hashlib.sha256(raw).hexdigest() != expected:
            raise SystemExit(f"{split}: the source file does not match the published SHA-256 {expected}")
        target = PACKAGED_DIR / f"binarized_mnist_{split}.bits.xz"
        target.write_bytes(pack_bits(parse_amat(raw)))
        # Read back with no data root holding .amat files, so the packaged copy is what loads.
        images = BinarizedMNIST(root=str(PACKAGED_DIR / "no-such-root"), download=False).load(split)
        print(f"{split}: {images.shape[0]} images, {target.stat().st_size:,} bytes, SHA-256 verified")


if __name__ == "__main__":
    main()
