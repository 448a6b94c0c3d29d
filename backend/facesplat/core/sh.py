"""Real spherical harmonics as 3DGS uses them (Inria's sh_utils.py, gsplat): the constants and the
basis, one place for the renderer (torch tensors) and the transform baking (numpy arrays).

Order and signs follow the rendering code, so `shN[:, k]` multiplies the k-th term of band 1, 2
and 3 in turn; band 0 is the constant term of `sh0`. A colour is max(sum basis * coeff + 0.5, 0).
"""

from __future__ import annotations

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def band_terms(x, y, z, band: int) -> list:
    """The basis functions of one band (1-3) at unit directions with components x, y, z: numpy
    arrays or torch tensors alike (only arithmetic is used), as a list of 2*band+1 terms."""
    if band == 1:
        return [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    xx, yy, zz = x * x, y * y, z * z
    if band == 2:
        return [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * x * z,
                SH_C2[4] * (xx - yy)]
    if band == 3:
        return [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    raise ValueError(f"SH band {band} is not supported (1-3)")
