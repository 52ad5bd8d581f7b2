"""The original's ACT loss head (`ACTLossHead`): stablemax / softmax cross entropy, Q losses and metrics.

Additions beyond the original (all off by default): label smoothing through optax, per-class weights and a
focal term for imbalanced vocabularies, and per-class accuracy counts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

IGNORE_LABEL_ID = -100


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How the lm loss is computed; the defaults are the original's."""

  loss_type: str = "stablemax_cross_entropy"
  label_smoothing: float = 0.0
  class_weights: tuple[float, ...] | None = None  # one weight per vocabulary id
  focal_gamma: float = 0.0

  def kwargs(self) -> dict:
    weights = None if self.class_weights is None else jnp.asarray(self.class_weights, jnp.float32)
    return {"loss_type": self.loss_type, "label_smoothing": self.label_smoothing,
            "class_weights_V": weights, "focal_gamma": self.focal_gamma}


def _loss_dtype():
  # The original computes stablemax in float64; JAX does so only when x64 is enabled.
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def stablemax_s(x: jax.Array) -> jax.Array:
  """s(x) = 1/(1 - x + 1e-30) for x < 0, else x + 1, with each branch fed only its own domain.

  A plain `where(x < 0, 1/(1 - x + 1e-30), x + 1)` differentiates both branches; near x = 1 the unused one
  has a derivative of ~1e60, which is inf in float32 and turns the gradient into NaN (0 * inf).
  """
  negative = x < 0
  x_neg = jnp.where(negative, x, 0.0)
  x_pos = jnp.where(negative, 0.0, x)
  return jnp.where(negative, 1.0 / (1.0 - x_neg + 1e-30), x_pos + 1.0)


def log_stablemax(x: jax.Array, axis: int = -1) -> jax.Array:
  s = stablemax_s(x)
  return jnp.log(s / jnp.sum(s, axis=axis, keepdims=True))


def token_cross_entropy(logits_BxSxV: jax.Array, labels_BxS: jax.Array, *,
                        loss_type: str = "stablemax_cross_entropy", label_smoothing: float = 0.0,
                        class_weights_V: jax.Array | None = None, focal_gamma: float = 0.0) -> jax.Array:
  """Per-token loss `[B, S]`, zero where the label is IGNORE_LABEL_ID."""
  valid = labels_BxS != IGNORE_LABEL_ID
  safe_labels = jnp.where(valid, labels_BxS, 0)
  if loss_type == "stablemax_cross_entropy":
    logp = log_stablemax(logits_BxSxV.astype(_loss_dtype()))
  elif loss_type == "softmax_cross_entropy":
    logp = jax.nn.log_softmax(logits_BxSxV.astype(jnp.float32), axis=-1)
  else:
    raise ValueError(f"Unknown loss_type {loss_type!r}; use 'stablemax_cross_entropy' or "
                     "'softmax_cross_entropy'")
  logp_label = jnp.take_along_axis(logp, safe_labels[..., None], axis=-1)[..., 0]
  if label_smoothing > 0:
    targets = optax.smooth_labels(jax.nn.one_hot(safe_labels, logp.shape[-1], dtype=logp.dtype),
                                  label_smoothing)
    loss = -jnp.sum(targets * logp, axis=-1)
  else:
    loss = -logp_label
  if focal_gamma > 0:
    loss = loss * (1.0 - jnp.exp(logp_label)) ** focal_gamma
  if class_weights_V is not None:
    loss = loss * jnp.asarray(class_weights_V, loss.dtype)[safe_labels]
  return jnp.where(valid, loss, 0.0)


def bce_with_logits_sum(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Summed binary cross entropy on logits, in PyTorch's numerically stable form."""
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  per_row = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return jnp.sum(per_row)


def act_loss(outputs: dict[str, jax.Array], labels_BxS: jax.Array, halted_B: jax.Array,
             steps_B: jax.Array, *, loss_type: str = "stablemax_cross_entropy",
             label_smoothing: float = 0.0, class_weights_V: jax.Array | None = None,
             focal_gamma: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total loss (summed over rows, not yet divided by the batch) and the original's metrics as raw sums.

  lm_loss = Σ_rows mean_over_valid_tokens(CE); total = lm_loss + 0.5·(q_halt_loss + q_continue_loss).
  Metrics count only rows that halted and have at least one valid label.
  """
  logits = outputs["logits"]
  mask_BxS = labels_BxS != IGNORE_LABEL_ID
  loss_counts_B = jnp.sum(mask_BxS, axis=-1)
  loss_divisor_B = jnp.maximum(loss_counts_B, 1)[:, None]
  is_correct_BxS = mask_BxS & (jnp.argmax(logits, axis=-1) == labels_BxS)
  seq_is_correct_B = jnp.sum(is_correct_BxS, axis=-1) == loss_counts_B

  valid_B = halted_B & (loss_counts_B > 0)
  q_halt = outputs["q_halt_logits"]
  metrics = {
      "count": jnp.sum(valid_B).astype(jnp.int32),
      "accuracy": jnp.sum(jnp.where(
          valid_B, jnp.sum(is_correct_BxS.astype(jnp.float32) / loss_divisor_B, axis=-1), 0.0)),
      "exact_accuracy": jnp.sum(valid_B & seq_is_correct_B).astype(jnp.int32),
      "q_halt_accuracy": jnp.sum(valid_B & ((q_halt >= 0) == seq_is_correct_B)).astype(jnp.int32),
      "steps": jnp.sum(jnp.where(valid_B, steps_B, 0)).astype(jnp.int32),
  }
  token_loss = token_cross_entropy(logits, labels_BxS, loss_type=loss_type, label_smoothing=label_smoothing,
                                   class_weights_V=class_weights_V, focal_gamma=focal_gamma)
  lm_loss = jnp.sum(token_loss / loss_divisor_B)
  q_halt_loss = bce_with_logits_sum(q_halt, seq_is_correct_B)
  metrics.update(lm_loss=lm_loss, q_halt_loss=q_halt_loss)
  total = lm_loss + 0.5 * q_halt_loss
  if "target_q_continue" in outputs:
    q_continue_loss = bce_with_logits_sum(outputs["q_continue_logits"], outputs["target_q_continue"])
    metrics["q_continue_loss"] = q_continue_loss
    total = total + 0.5 * q_continue_loss
  metrics = {k: jax.lax.stop_gradient(v) for k, v in metrics.items()}
  return total, metrics


def per_class_counts(logits_BxSxV: jax.Array, labels_BxS: jax.Array, valid_B: jax.Array,
                     num_classes: int) -> tuple[jax.Array, jax.Array]:
  """(correct_V, total_V): per label class, correct argmax predictions and supervised tokens of valid rows."""
  mask = (labels_BxS != IGNORE_LABEL_ID) & valid_B[:, None]
  safe = jnp.where(mask, labels_BxS, 0)
  correct = mask & (jnp.argmax(logits_BxSxV, axis=-1) == labels_BxS)
  one_hot = jax.nn.one_hot(safe, num_classes, dtype=jnp.int32)
  total_V = jnp.sum(one_hot * mask[..., None], axis=(0, 1))
  correct_V = jnp.sum(one_hot * correct[..., None], axis=(0, 1))
  return correct_V, total_V
