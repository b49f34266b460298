#!/usr/bin/env python
"""``sslkd reproduce`` as a script (the commands in results/README.md call it so): same options, output and layout.

    python tools/reproduce.py --list
    python tools/reproduce.py mokd_table1 --proxy --seeds 1

The tables are the files in tables/; the runner is sslkd.reproduce.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslkd.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
