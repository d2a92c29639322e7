"""The U-Net and its trainer: with detection/torch_engine.py, the only modules that import torch."""
