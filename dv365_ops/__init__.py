"""dv365_ops: torch custom ops (``torch.ops.dv365.*``) for DV365's hot paths.

Families (each module holds the wrapper, fake impl and autograd of its ops; ``reference`` holds the
pure-torch semantics of all of them):

- :mod:`dv365_ops.jagged` — jagged weighted mean pooling
- :mod:`dv365_ops.token_pool` — token-axis strided mean pooling (between funnel blocks)
- :mod:`dv365_ops.int4` — int4 rowwise quantize / dequantize (136-byte rows for D = 256)
- :mod:`dv365_ops.slicing` — multi-slicing: ``slice_timeline`` and the fused ``sliced_pool``
"""

import torch  # noqa: F401  (libtorch must be loaded before _C: the extension has no rpath to it)


def _check_torch_version() -> None:
    """_C links against torch's C++ API, which has no stable ABI across minor releases: a build loaded into
    another torch fails with undefined symbols at best. Say so before loading it (docs/packaging.md)."""
    try:
        from ._build_info import TORCH_VERSION
    except ImportError:  # a build older than the record: nothing to compare
        return
    built = TORCH_VERSION.split("+")[0].split(".")[:2]
    running = torch.__version__.split("+")[0].split(".")[:2]
    if built != running:
        raise ImportError(
            f"dv365_ops was built against torch {TORCH_VERSION} but torch {torch.__version__} is running: the "
            f"compiled kernels only load into torch {'.'.join(built)}.x. Install torch {'.'.join(built)}.* or "
            f"rebuild dv365 against this torch (pip install --no-build-isolation --force-reinstall --no-deps .)"
        )


_check_torch_version()

from . import _C  # noqa: E402,F401  (registers the schemas and the C++ kernels)
from . import program, reference  # noqa: E402,F401
from ._backend import InputError, get_backend, set_backend, use_backend  # noqa: E402,F401
from .deferred import check_deferred, deferred_checks, deferred_checks_enabled, set_deferred_checks  # noqa: E402,F401
from . import int4, jagged, slicing, token_pool  # noqa: E402,F401
from .int4 import *  # noqa: E402,F401,F403
from .jagged import *  # noqa: E402,F401,F403
from .slicing import *  # noqa: E402,F401,F403
from .token_pool import *  # noqa: E402,F401,F403

try:
    import triton  # noqa: F401
except ImportError:  # Triton is optional: the compiled kernels serve every op without it
    triton = None
if triton is not None:
    from . import triton_kernels  # noqa: F401  (registers the dv365::*_triton ops)

__version__ = "0.1.0"
