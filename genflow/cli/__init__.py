"""Command-line tools: genflow-train (genflow/train.py, Hydra) and genflow-sample (flags)."""
