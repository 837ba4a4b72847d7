"""Tools for testing polyproc itself: ``python -m polyproc.testing.cpython`` runs CPython's
own multiprocessing and process-pool test suites against polyproc (see that module)."""
