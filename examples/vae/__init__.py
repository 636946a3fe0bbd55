"""The VAE example (see README.md)."""
