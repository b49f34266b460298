"""Built-in strategies; importing this package registers them."""

from sslkd.strategies import byol, dino, dml, dogo, lmcl, mcl, mocov3, mokd, sdssl, simclr, simsiam, supervised  # noqa: F401
