"""hrm_jax: a functional JAX/Flax reimplementation of the Hierarchical Reasoning Model (HRM)."""

__version__ = "0.1.0"
