#!/usr/bin/env python
"""Weighted k-NN (DINO protocol, faiss) of any sslkd checkpoint; the same protocol as every run's summary.json.

    python tools/knn_eval.py --checkpoint runs/x/checkpoints/last.pt [--member NAME] [--data NAME --data-root DIR]
"""

import sys

from sslkd.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "knn", *sys.argv[1:]]))
