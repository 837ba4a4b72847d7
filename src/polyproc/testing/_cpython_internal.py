"""CPython test-suite tests that assert CPython's private internals.

Each entry: (suite, fnmatch pattern on ``Class.test_method``, why). Built by reading the source
of each failing test: an entry names the private attribute or CPython-internal module the test
needs (``<M>`` in a futures class name is any of Fork/Forkserver/Spawn, written as ``*``).
Such a test, when it fails, is reported as "internal" and not counted as a failure; when it
passes it counts as passed. Tests that merely differ from CPython on purpose
(docs/migrating.md) are NOT listed here: they are failures, for a person to judge.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

_MP = "multiprocessing"
_FUT = "futures"

INTERNAL: list[tuple[str, str, str]] = [
    # --- test._test_multiprocessing ---
    (_MP, "WithProcessesTestHeap.*", "tests the private heap allocator multiprocessing.heap"),
    (_MP, "WithProcessesTestBarrier.*",
     "its helper _DummyList allocates its shared counter with the private "
     "multiprocessing.heap.BufferWrapper"),
    (_MP, "TestResourceTracker.*",
     "drives CPython's resource tracker internals (resource_tracker._resource_tracker, "
     "_CLEANUP_FUNCS, register) and its warning text"),
    (_MP, "WithProcessesTestSharedMemory.test_shared_memory_cleaned_after_process_termination",
     "calls multiprocessing.resource_tracker.unregister and expects CPython's tracker warning "
     "text"),
    (_MP, "WithProcessesTestSharedMemory.test_shared_memory_basics",
     "mock.patch of the private shared_memory._make_filename"),
    (_MP, "WithProcessesTestSharedMemory.test_shared_memory_recreate",
     "mock.patch of the private shared_memory._make_filename"),
    (_MP, "WithProcessesTestSharedMemory.test_shared_memory_name_with_embedded_null",
     "after its public check (passes), reads the private shared_memory._USE_POSIX and sets "
     "SharedMemory._name"),
    (_MP, "WithProcessesTestSharedMemory.test_shared_memory_tracking",
     "expects CPython's resource-tracker warning text and calls "
     "multiprocessing.resource_tracker.unregister (it also expects SharedMemory(name, "
     "track=True) to register an attached block, which polyproc never does on purpose: "
     "docs/migrating.md)"),
    (_MP, "ChallengeResponseTest.test_challengeresponse",
     "calls the private connection._create_response/_verify_challenge"),
    (_MP, "OtherTest.test_answer_challenge_auth_failure",
     "fakes the handshake with the protocol's challenge prefix constant "
     "(connection.CHALLENGE up to 3.11, the private _CHALLENGE since 3.12)"),
    (_MP, "tearDownClass (WithProcessesTestPicklingConnections)",
     "calls the private multiprocessing.resource_sharer.stop"),
    (_MP, "With*TestPool.test_make_pool", "reads the private Pool._pool (list of workers)"),
    (_MP, "WithProcessesTestPoolWorkerLifetime.test_pool_worker_lifetime",
     "reads the private Pool._pool (list of workers)"),
    (_MP, "WithManagerTestMyManager.test_mymanager*",
     "after the (passing) manager checks, reads the private manager._process.exitcode"),
    (_MP, "TestSimpleQueue.test_closed", "reads the private SimpleQueue._reader/_writer"),
    (_MP, "WithProcessesTestQueue.test_queue_feeder_on_queue_feeder_error",
     "overrides the private Queue._on_queue_feeder_error hook of CPython's feeder thread"),
    (_MP, "WithProcessesTestProcess.test_forkserver_sig*",
     "reads the private multiprocessing.forkserver._forkserver._forkserver_pid"),
    (_MP, "WithProcessesTestFinalize.test_finalize",
     "asserts the private util._finalizer_registry is empty around the test"),
    (_MP, "_TestImportStar.test_import",
     "lists the package directory's files and expects CPython's module files "
     "(popen_spawn_win32, popen_forkserver, ...)"),
    # --- test.test_concurrent_futures (process pools) ---
    (_FUT, "ProcessPool*FailingInitializerTest.test_initializer",
     "polls the private executor._broken"),
    (_FUT, "ProcessPool*ExecutorDeadlockTest.test_gh105829_should_not_deadlock_if_wakeup_pipe_full",
     "patches the private concurrent.futures.process._ExecutorManagerThread/_ThreadWakeup"),
    (_FUT, "ProcessPool*ExecutorDeadlockTest.test_shutdown_deadlock_pickle",
     "reads the private executor._executor_manager_thread"),
    (_FUT, "ProcessPool*ProcessPoolShutdownTest.test_del_shutdown",
     "reads the private executor._executor_manager_thread/_call_queue"),
    (_FUT, "ProcessPool*ProcessPoolShutdownTest.test_shutdown_no_wait",
     "reads the private executor._executor_manager_thread/_call_queue"),
    (_FUT, "ProcessPool*ProcessPoolExecutorTest.test_traceback",
     "asserts the type is the private concurrent.futures.process._RemoteTraceback"),
    (_FUT, "ProcessPool*ProcessPoolExecutorTest.test_python_finalization_error",
     "mocks the private threading._start_joinable_thread to fail CPython's second thread"),
    (_FUT, "ProcessPool*ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context",
     "reads the private executor._mp_context"),
]


def internal_reason(suite: str, short_id: str) -> str | None:
    """Why ``short_id`` (``Class.test_method``) of ``suite`` needs CPython internals, or None."""
    for s, pattern, why in INTERNAL:
        if s == suite and fnmatchcase(short_id, pattern):
            return why
    return None
