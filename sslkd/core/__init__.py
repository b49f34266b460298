"""The bottom layer: checkpoint files and RNG state, torch.distributed helpers and schedules (plain functions of the
step). Everything else may import it; it imports nothing of sslkd but ``errors``."""
