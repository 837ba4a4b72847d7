"""The task engine shared by Pool, ProcessPoolExecutor and the Dask backend.

``scheduler`` decides what runs where (jobs, chunking, retries, timeouts, outcomes);
``results`` turns outcomes into what the caller waits on; ``worker`` is the loop a worker
process runs; ``wire`` frames messages (with fds and out-of-band buffers) between them.
Backends (``polyproc._backends``) drive the scheduler with real workers.
"""
