"""C3A that reads kernel[j, i] for block (i, j) of a square layer (the block grid transposed: output-block
and input-block indices swapped, an easy slip when the kernel is laid out (d_in/b, d_out/b, b) in one place and
(d_out/b, d_in/b, b) in another). On a square layer the shapes agree and nothing raises; every block is still a
circulant and the zero init exact. Non-square layers keep the right order (so no shape error gives it away)."""
from audit.mutants import Mutant
from variants.c3a import C3A, BlockCirculant


class BlockIndexSwapped(C3A):
    def forward(self, layer, x, y):
        w = layer.adapter_kernel
        if w.shape[0] == w.shape[1]:
            w = w.transpose(0, 1)
        d_in = x.shape[-1]
        h = BlockCirculant.apply(x.reshape(-1, d_in).to(w.dtype), w / d_in)
        return y + h.view(y.shape).to(y.dtype)

    def merged_weights(self, layer):
        return super(C3A, self).merged_weights(layer)


MUTANT = Mutant("c3a_block_index_swapped", "c3a", "block index swapped",
                "block (i, j) of a square layer built from kernel[j, i]: circulant, zero at init, right shapes; "
                "a different ΔW", ("paper_parity",), BlockIndexSwapped)
