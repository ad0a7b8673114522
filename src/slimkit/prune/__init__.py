"""Pruning: unstructured magnitude pruning now; structured surgery, N:M, second-order and schedules next."""
from .magnitude import MagnitudePrune, prunable_params

__all__ = ["MagnitudePrune", "prunable_params"]
