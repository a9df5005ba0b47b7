"""Print, as JSON, torch's thread count in every process that computes a shard under each
executor, in the order ``local``, ``processes``, ``dask``, ``processes`` again (after a local
Dask cluster's nannies wrote their variables into this process's environment).

Run as a script (``python tests/scripts/thread_counts.py``, the repository on ``PYTHONPATH``):
the file is then each spawned worker's ``__mp_main__``, whence :func:`count` is unpickled.
"""

import json

import torch

from moe_theory.executors import map_shards


def count(shard: int) -> int:
    return torch.get_num_threads()


if __name__ == "__main__":
    runs = [("local", {}), ("processes", {"local_workers": 2}), ("dask", {"local_workers": 1}),
            ("processes", {"local_workers": 2})]
    print(json.dumps([[executor, sorted(set(map_shards(count, range(4), executor=executor,
                                                        **options)))]
                      for executor, options in runs]))
