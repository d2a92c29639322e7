"""The framework: fitting MCF rounds, the fitted MCFModel, its residual and checkpoints."""
