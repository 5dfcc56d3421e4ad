"""How good the answers are, from labels and probabilities alone: negative log-likelihood,
macro-F1 and the full set of classification metrics. No models here: training's early
stopping, calibration and evaluation all score through this one place."""
