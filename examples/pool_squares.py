"""Square numbers in a pool of worker processes (the classic ``Pool.map`` example).

Run: ``python examples/pool_squares.py``
"""

import polyproc


def square(x):
    """Return ``x`` squared; runs in a worker process."""
    return x * x


if __name__ == "__main__":
    with polyproc.Pool(processes=2) as pool:
        print(pool.map(square, range(10)))
        print(sorted(pool.imap_unordered(square, range(5))))
        result = pool.apply_async(square, (12,))
        print(result.get(timeout=30))
