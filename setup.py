"""The package's compiled kernels; everything else is in pyproject.toml.

The mask encoder's paste + RLE (``mrcnn_batch/encode/masks.py`` says what it computes),
evaluation's greedy matching and OKS terms (``mrcnn_batch/evaluate/match.py``), accumulation loop
(``accumulate.py``), mask IoU, area and polygon rasterisation on RLE strings
(``similarity.py``) and the reader of plain results files (``jsonio.py``). All optional: where they cannot
be built (no C compiler), the package does the same computations in torch ops, numpy and
pycocotools, several times slower. ``-ffp-contract=off``: the compiler fuses no multiply-add the
source does not ask for (exactness depends on it).
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-ffp-contract=off"]
STRING = "mrcnn_batch/encode/rle_string.h"  # pycocotools' RLE string, written by two kernels

setup(
    ext_modules=[
        Extension("mrcnn_batch.encode._paste", ["mrcnn_batch/encode/_paste.c"], depends=[STRING], extra_compile_args=FLAGS,
                  libraries=["m"], optional=True),
        Extension("mrcnn_batch.evaluate._accumulate", ["mrcnn_batch/evaluate/_accumulate.c"],
                  extra_compile_args=FLAGS, optional=True),
        Extension("mrcnn_batch.evaluate._match", ["mrcnn_batch/evaluate/_match.c"], extra_compile_args=FLAGS, optional=True),
        Extension("mrcnn_batch.evaluate._oks", ["mrcnn_batch/evaluate/_oks.c"], extra_compile_args=FLAGS, optional=True),
        Extension("mrcnn_batch.evaluate._results", ["mrcnn_batch/evaluate/_results.c"], extra_compile_args=FLAGS,
                  optional=True),
        Extension("mrcnn_batch.evaluate._rle", ["mrcnn_batch/evaluate/_rle.c"], depends=[STRING], extra_compile_args=FLAGS,
                  libraries=["m"], optional=True),
    ]
)
