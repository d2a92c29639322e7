"""The U-Net and its trainer: the only subpackage that imports torch."""
