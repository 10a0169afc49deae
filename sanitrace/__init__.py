"""sanitrace: trace mlx-lm conversions into reviewable plans and replay them with flat memory."""

__version__ = "0.1.0"
