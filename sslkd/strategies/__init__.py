"""Built-in strategies; importing this package registers them."""

from sslkd.strategies import dino, mokd  # noqa: F401
