"""CPU rules (x86, AArch64, any LLVM CPU), one module per kernel kind.

:mod:`.conv` (the fused structured conv, hence every conv, 1×1 conv and Linear layer the
rewrites emit), :mod:`.winograd` (the structured 3×3 conv with a 2×2 ``alpha`` as Winograd
F(m, 2)), :mod:`.reduction` (pools, global pooling), :mod:`.injective` (transposes,
reshapes, elementwise), :mod:`.fallback` (anything else); :mod:`.tiling` holds the register
and task tiling of the conv rule, :mod:`.blocks` the block helpers the rules share.
"""
