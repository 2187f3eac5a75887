"""Step stability: clipping that reports, NaN-safe steps, mixed precision, gradient
accumulation and batch-size scaling. The public names are re-exported from ``descent``."""
