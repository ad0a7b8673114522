"""Parameter sharing across layers (tying weights so several modules store one copy).

Nothing lives here yet: vocabulary trimming, which used to, removes rows rather than
sharing them and is ``prune.vocab`` (:mod:`slimkit.prune.vocab`); k-means weight
sharing within a layer is ``quantize.kmeans`` (:mod:`slimkit.quantize.kmeans_method`).
"""
