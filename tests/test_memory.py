"""mrcnn_batch.memory hands the C allocator's free pages back where the C library can."""

from __future__ import annotations

import platform

from mrcnn_batch import memory


def test_freed_memory_is_given_back_where_the_c_library_is_glibc():
    memory.give_back_freed_memory()  # (twice: the function is looked up once)
    memory.give_back_freed_memory()
    assert bool(memory._trim) == (platform.libc_ver()[0] == "glibc")
