"""hrm_jax.evaluation: scoring, solving with and exporting a trained model."""
