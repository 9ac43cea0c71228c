"""AntiPaSTO rotating with Rᵀ (= R(−T)) instead of R."""
from audit.mutants import Mutant
from variants.antipasto import Antipasto, cayley_blocks


class AntipastoTransposed(Antipasto):
    def forward(self, layer, x, y):
        U, S, Vh, delta, T = (layer.adapter_U, layer.adapter_S, layer.adapter_Vh, layer.adapter_delta, layer.adapter_T)
        cfg = self.cfg
        rot = cayley_blocks(T, cfg.block_size, cfg.max_rotation_angle).transpose(-1, -2).to(Vh.dtype)
        n, bs = rot.shape[0], cfg.block_size
        vh_eff = (rot @ Vh.reshape(n, bs, -1)).reshape(Vh.shape)
        return y + (((x.to(Vh.dtype) @ vh_eff.t()) * (S + delta)) @ U.t()).to(y.dtype)


MUTANT = Mutant("antipasto_wrong_chirality", "antipasto", "a rotation of the wrong chirality",
                "V basis rotated by R_bdᵀ instead of R_bd", ("paper_parity",), AntipastoTransposed)
