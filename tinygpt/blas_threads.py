"""Hold BLAS to one thread while a kernel calls it from its own OpenMP threads.

OpenBLAS threads started inside an OpenMP parallel region would only fight the OpenMP threads
for the same cores. threadpoolctl finds every BLAS loaded in the process, including the one
scipy.linalg.cython_blas calls; they are looked up once, on first use (the kernels that call
BLAS have loaded it by then), and after that entering and leaving costs two ctypes calls per
library (threadpoolctl's own limit() would search the process again each time: about 12 us).
"""
from threadpoolctl import ThreadpoolController

_libraries = None


def _blas_libraries():
    global _libraries
    if _libraries is None:
        _libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    return _libraries


class one_blas_thread:
    """Context manager: BLAS runs single-threaded inside it; each library gets its own thread
    count back on exit."""

    __slots__ = ("_restore",)

    def __enter__(self):
        self._restore = []
        for library in _blas_libraries():
            n = library.get_num_threads()
            if n != 1:
                library.set_num_threads(1)
                self._restore.append((library, n))
        return self

    def __exit__(self, *exc_info):
        for library, n in reversed(self._restore):
            library.set_num_threads(n)
        return False
