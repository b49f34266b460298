"""Built-in strategies; importing this package registers them."""

from sslkd.strategies import dino, dogo, mokd, simclr, simsiam  # noqa: F401
