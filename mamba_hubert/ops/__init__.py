"""Selective-scan operators; no fairseq dependency."""

from mamba_hubert.ops.selective_scan import SCAN_IMPLS, resolve_scan_impl, selective_scan_fn, selective_scan_reference

__all__ = ["SCAN_IMPLS", "resolve_scan_impl", "selective_scan_fn", "selective_scan_reference"]
