"""hrm_jax.data"""
