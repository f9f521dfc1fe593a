"""Train the digits example's checkpoint: ``python examples/digits/train.py --help``.

The training loop lives in :mod:`bscrit.examples.digits.train`; this script writes ``ckpt.pt``
beside the spec by default.
"""

import sys
from pathlib import Path

from bscrit.examples.digits.train import main

if __name__ == "__main__":
    if not any(a == "--out" or a.startswith("--out=") for a in sys.argv[1:]):
        sys.argv += ["--out", str(Path(__file__).resolve().parent / "ckpt.pt")]
    sys.exit(main())
