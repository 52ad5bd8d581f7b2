"""hrm_jax.convert"""
