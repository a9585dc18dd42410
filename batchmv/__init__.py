"""batchmv: apply one shared matrix A (m, n) to a batch of vectors, ``y[..., :] = A @ x[..., :]``,
from any array library, as one GEMM on views, without copying A.

>>> import numpy as np, batchmv
>>> batchmv.matvec(np.eye(2), np.arange(6.0).reshape(3, 2)).tolist()
[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
"""

from ._api import matvec, plan, rmatvec
from ._errors import CopyRequiredError
from ._operator import MatVec, prepare
from ._plan import Plan
from ._registry import available_backends
from ._select import use_backend

__all__ = [
    "CopyRequiredError", "MatVec", "Plan", "available_backends", "matvec", "plan", "prepare", "rmatvec",
    "use_backend",
]  # fmt: skip
__version__ = "0.1.0"
