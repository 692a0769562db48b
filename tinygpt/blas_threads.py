"""Hold BLAS to one thread while a kernel calls it from its own OpenMP threads.

OpenBLAS threads started inside an OpenMP parallel region would only fight the OpenMP threads
for the same cores. threadpoolctl reaches every BLAS loaded in the process, including the one
scipy.linalg.cython_blas calls.
"""
from threadpoolctl import ThreadpoolController

_controller = None


def one_blas_thread():
    """Context manager: BLAS runs single-threaded inside it."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
