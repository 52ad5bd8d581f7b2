"""hrm_jax.training"""
