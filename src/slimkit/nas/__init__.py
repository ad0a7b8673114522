"""Architecture search and lightweight blocks (issue 19): passes that change a layer's structure.

:mod:`.separable` converts standard convolutions into depthwise-separable ones
(``block.depthwise_separable``), initialised by the exact least-squares factorization in
:mod:`.separable_math`. See docs/blocks.md.
"""
