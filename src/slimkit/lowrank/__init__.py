"""Low-rank and tensor decomposition: replace a layer's weight by a product of smaller factors.

Every kind here builds the factorized layer, then gates it (:mod:`.gate`): with ``gate:
latency`` a factorization is kept only where it is measured faster than the dense layer on
the runtime that serves the artifact. See docs/lowrank.md.
"""
