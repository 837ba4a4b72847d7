"""Whole-program mode: the stdlib's names are polyproc's, isinstance checks hold."""
import concurrent.futures
import multiprocessing
import multiprocessing.pool
import multiprocessing.queues
import sys
from concurrent.futures import ProcessPoolExecutor


def sq(x):
    return x * x


def names(_=None):
    import multiprocessing
    return multiprocessing.__name__


if __name__ == "__main__":
    method = sys.argv[1]
    ctx = multiprocessing.get_context(method)
    assert isinstance(ctx, multiprocessing.context.BaseContext)
    with ctx.Pool(2) as pool:
        assert isinstance(pool, multiprocessing.pool.Pool)
        child = pool.apply(names)
        result = pool.map(sq, range(10))
    with ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert isinstance(ex, concurrent.futures.ProcessPoolExecutor)
        futures_result = list(ex.map(sq, range(5)))
        child_futures = ex.submit(names).result()
    q = ctx.Queue()
    assert isinstance(q, multiprocessing.queues.Queue)
    try:
        from multiprocessing.heap import BufferWrapper
        BufferWrapper(10)
        internal = "usable"
    except NotImplementedError as e:
        internal = "refused: " + str(e).split(" is ")[0]
    except ImportError:
        internal = "absent"
    print(method, multiprocessing.__name__, child, child_futures, result, futures_result)
    print("internal", internal)
