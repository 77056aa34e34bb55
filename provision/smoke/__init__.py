"""The smoke inference: a script run by the target environment's own Python."""
