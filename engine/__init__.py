"""Training and evaluation machinery: config, stages, checkpoints, logging. Used by the CLI scripts."""
