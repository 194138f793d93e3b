"""Read and decode: bytes from any fsspec URL, then RGB pixels or a status saying why not."""

from mrcnn_batch.read.decode import Decoded, decode_image
from mrcnn_batch.read.fetch import TooLarge, fetch_all

__all__ = ["Decoded", "TooLarge", "decode_image", "fetch_all"]
