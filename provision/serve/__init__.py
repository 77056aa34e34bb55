"""`provision serve`: the stack's OpenAI-compatible server with the limits the fit check chose.

`plan_serve` builds the command (plan.py), `start` / `serve_until_stopped` run it (run.py), and
`served(profile)` is a context manager for other stages (a dataset smoke "served"): it yields the
running server, whose `base_url` is the OpenAI base URL, and stops its process group on exit.
"""

from __future__ import annotations

from provision.serve.plan import ServePlan, plan_serve
from provision.serve.run import ServeFailed, Server, served, start

__all__ = ["ServeFailed", "ServePlan", "Server", "plan_serve", "served", "start"]
