"""Backends run the scheduler's batches: ``local`` (processes), ``threads``, ``dask``."""
