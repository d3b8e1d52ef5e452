"""One rank of the Horovod smoke test (tests/test_horovod.py launches two with horovodrun).

Every rank runs the same collectives on CPU tensors whose values depend on its rank,
and writes what it got back to <out_dir>/rank<rank>.json; the test checks the values.
"""

import json
import os
import sys

import torch
import horovod.torch as hvd


def main(out_dir: str) -> None:
    hvd.init()
    rank, size = hvd.rank(), hvd.size()

    # rank r holds (r + 1) * [1, 2, 3]
    x = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)
    average = hvd.allreduce(x, name="average")  # Horovod's default op is Average
    total = hvd.allreduce(x, name="sum", op=hvd.Sum)
    int_total = hvd.allreduce(torch.tensor([rank + 1, 10 * (rank + 1)], dtype=torch.int64),
                              name="int_sum", op=hvd.Sum)

    # rank r contributes r + 1 rows of value r: first dimensions differ between ranks
    gathered = hvd.allgather(torch.full((rank + 1, 2), float(rank)), name="gather")

    # rank r holds 100 * r + [0, 1, 2, 3]; broadcast from each root in turn
    own = torch.arange(4, dtype=torch.float32) + 100 * rank
    from_root0 = hvd.broadcast(own, root_rank=0, name="bcast0")
    from_root1 = hvd.broadcast(own, root_rank=1, name="bcast1")
    obj = hvd.broadcast_object({"rank": rank, "tag": "from-%d" % rank}, root_rank=1, name="obj")

    result = {
        "rank": rank,
        "size": size,
        "local_rank": hvd.local_rank(),
        "gloo_built": hvd.gloo_built(),
        "mpi_built": hvd.mpi_built(),
        "gloo_enabled": hvd.gloo_enabled(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "input": x.tolist(),
        "average": average.tolist(),
        "sum": total.tolist(),
        "int_sum": int_total.tolist(),
        "int_sum_dtype": str(int_total.dtype),
        "gathered": gathered.tolist(),
        "broadcast_root0": from_root0.tolist(),
        "broadcast_root1": from_root1.tolist(),
        "broadcast_object": obj,
        "devices": sorted({str(t.device) for t in (average, total, gathered, from_root0)}),
    }
    hvd.shutdown()
    path = os.path.join(out_dir, "rank%d.json" % rank)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)
    print("horovod-worker rank %d/%d ok" % (rank, size), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
