"""The smoke inference: a script run by the target environment's own Python (runner.py), and
the orchestration that runs it, explains failures and records the result in the lock (run.py)."""
