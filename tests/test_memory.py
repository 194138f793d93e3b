"""mrcnn_batch.memory hands the C allocator's free pages back where the C library can."""

from __future__ import annotations

import platform

from mrcnn_batch import memory


def test_freed_memory_is_given_back_where_the_c_library_is_glibc():
    memory.give_back_freed_memory()  # (twice: the function is looked up once)
    memory.give_back_freed_memory()
    assert bool(memory._trim) == (platform.libc_ver()[0] == "glibc")


def _arrow_pool_in_fresh_process(env_pool: str | None) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if env_pool is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = env_pool
    code = "import mrcnn_batch, pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_arrow_allocates_with_the_system_allocator_once_mrcnn_batch_is_imported():
    # (Arrow's default, mimalloc, keeps the freed Parquet buffers' pages from NumPy's arrays)
    assert _arrow_pool_in_fresh_process(None) == "system"


def test_an_arrow_allocator_named_in_the_environment_is_kept():
    assert _arrow_pool_in_fresh_process("mimalloc") == "mimalloc"
