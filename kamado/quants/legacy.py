"""(being written) Row-level quantize/dequantize tables for this family; see kamado/quants/__init__.py."""

DEQUANTIZE: dict = {}
QUANTIZE: dict = {}
DEQUANTIZE_TORCH: dict = {}
