"""Known library fixes: one module each, plus the apply/revert/status machinery."""
