"""The error a training run raises when it cannot go on; its message names the problem and the fix."""


class TrainingError(RuntimeError):
  """A run that cannot go on; the message says why and what to do (printed as one `error:` line)."""
