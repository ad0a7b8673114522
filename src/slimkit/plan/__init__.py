"""Automatic compression under a budget: ``slimkit plan`` (docs/plan.md).

- :mod:`.space`: planning units and candidate actions (recipe steps), :class:`SpaceConfig`.
- :mod:`.sensitivity`: dev-split metric drop per action, cached on disk.
- :mod:`.trials`: serial / Ray executors for the trials; :mod:`.jobs`: a trial's model and data
  rebuilt from a spec on any worker.
- :mod:`.lut`: latency lookup table on the serving runtime, and its additivity check.
- :mod:`.solve`: multiple-choice knapsack solvers (DP, greedy), pure functions.
- :mod:`.budget`: ``--budget`` strings.
- :mod:`.planner`: :func:`plan`, the whole job; :mod:`.verify`: back-off; :mod:`.report`.

Sits beside :mod:`slimkit.app`: it uses the method families, measure, zoo and core; nothing
below imports it.
"""
from .budget import Budgets, parse_budget, parse_budgets
from .planner import plan
from .solve import Choice, Solution, brute_force, solve, solve_dp, solve_greedy
from .space import Action, SpaceConfig, Unit, build_space, compose

__all__ = ["Action", "Budgets", "Choice", "Solution", "SpaceConfig", "Unit", "brute_force", "build_space",
           "compose", "parse_budget", "parse_budgets", "plan", "solve", "solve_dp", "solve_greedy"]
