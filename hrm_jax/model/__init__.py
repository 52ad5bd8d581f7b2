"""hrm_jax.model"""
