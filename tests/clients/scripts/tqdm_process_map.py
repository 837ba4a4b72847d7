import multiprocessing
import sys

from tqdm.contrib.concurrent import process_map


def sq(x): return x * x
if __name__ == "__main__":
    method = sys.argv[1]
    multiprocessing.set_start_method(method)
    r = process_map(sq, range(50), max_workers=2, chunksize=5, disable=True)
    print(method, sum(r), multiprocessing.__name__)
