"""Built-in strategies; importing this package registers them."""

from sslkd.strategies import (  # noqa: F401
    byol, dino, dml, dogo, lmcl, mcl, mocov2, mocov3, mokd, sdssl, simclr, simsiam, supervised,
)
