"""Benchmarks: flaxen against plain JAX and peer libraries. Run ``python -m benchmarks``."""
