import multiprocessing
import sys

import dask
import dask.bag as db


def sq(x): return x * x
if __name__ == "__main__":
    method = sys.argv[1]
    with dask.config.set(scheduler="processes", num_workers=2, **{"multiprocessing.context": method}):
        print(method, db.from_sequence(range(20), npartitions=4).map(sq).sum().compute(), multiprocessing.__name__)
