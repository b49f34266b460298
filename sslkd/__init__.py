"""sslkd: self-supervised knowledge-distillation methods side by side."""

__version__ = "0.1.0"
