"""Check big numbers for primality with a process pool executor.

``polyproc.futures`` stands in for ``concurrent.futures``.
Run: ``python examples/executor_primes.py``
"""

import math

import polyproc.futures

NUMBERS = [
    1_000_000_000_039,
    2_147_483_647_013,
    1_099_511_627_791,
    999_999_999_989,
    1_000_000_007 * 1_000_003,
    99_999_999_907,
]


def is_prime(n):
    """Trial division: slow enough that spreading it over processes pays."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    for divisor in range(3, math.isqrt(n) + 1, 2):
        if n % divisor == 0:
            return False
    return True


if __name__ == "__main__":
    with polyproc.futures.ProcessPoolExecutor() as executor:
        for number, prime in zip(NUMBERS, executor.map(is_prime, NUMBERS), strict=True):
            print(f"{number} is prime: {prime}")
