"""The MNIST example (see README.md)."""
