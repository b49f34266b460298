"""Pure loss functions, one module per family, each citing the equation it implements; targets are always detached
inside. Import from the module (``from sslkd.losses.dino import dino_loss``)."""
