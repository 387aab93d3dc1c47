"""Benchmark of the store's codecs on real activations: compression ratio, write, read and verify speed.

    python -m pipeline.bench.store STORE [--hook H] [--rows N] [--repeats R]

Reads N rows of one hook from an existing store, then for each (dtype, codec) writes them into a
fresh store in a temporary folder shard by shard, as a harvest does, reads them back, and checks every
shard against its checksums as `pipeline verify` does.
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pipeline.bench.options import at_least_one, harvested
from pipeline.store import codecs
from pipeline.store.activation_store import ActivationStore
from pipeline.store.verify import corrupt_shards


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _one(source: ActivationStore, rows: torch.Tensor, dtype: str, codec: str, folder: Path) -> dict:
    attrs = {**source.attrs, "codec": {**source.attrs["codec"], "dtype": dtype, "codec": codec}, "hooks": ["bench"]}
    n_contexts = len(rows) // source.layout.rows_per_context
    attrs["layout"] = {**attrs["layout"], "n_contexts": n_contexts - n_contexts % source.layout.contexts_per_shard}
    store = ActivationStore.create(folder, attrs, rows.shape[1])
    per_shard = store.layout.rows_per_shard
    data = rows[: store.layout.n_rows]
    start = time.perf_counter()
    for shard in range(store.layout.n_shards):
        store.write_shard(shard, {"bench": data[shard * per_shard : (shard + 1) * per_shard]})
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    for shard in range(store.layout.n_shards):
        store.read_rows("bench", shard * per_shard, (shard + 1) * per_shard)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    if corrupt_shards(store, "full"):
        raise RuntimeError(f"{folder}: a shard just written differs from its checksum")
    verify_s = time.perf_counter() - start
    logical_bytes = data.numel() * torch.empty(0, dtype=codecs.DTYPES[dtype][1]).element_size()
    on_disk = _folder_bytes(folder / "acts")
    return {
        "ratio": logical_bytes / on_disk,
        "write_gbs": logical_bytes / write_s / 1e9,
        "read_gbs": logical_bytes / read_s / 1e9,
        "verify_gbs": logical_bytes / verify_s / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path, metavar="STORE", help="a completely harvested activation store")
    parser.add_argument("--hook", default="", help="the hook whose rows are written (default: the store's first)")
    parser.add_argument("--rows", type=at_least_one, default=200_000, help="rows read (at most the store's)")
    parser.add_argument("--repeats", type=at_least_one, default=3, help="runs per dtype and codec (median reported)")
    args = parser.parse_args()
    source, hook = harvested(parser, "STORE", args.store, args.hook)
    rows = source.read_rows(hook, 0, min(args.rows, source.layout.n_rows)).float()
    print(
        f"{len(rows):,} rows x {rows.shape[1]} of {hook} from {args.store}; median of {args.repeats} runs; "
        "write includes the read-back check and completion record"
    )
    print(f"{'dtype':<9} {'codec':<11} {'ratio':>6} {'write GB/s':>11} {'read GB/s':>10} {'verify GB/s':>12}")
    # A wider dtype than the source's would hold zero low bits and flatter its compression.
    widths = {"float16": 2, "bfloat16": 2, "float32": 4}
    for dtype in [d for d in widths if widths[d] <= widths[source.dtype]]:
        for codec in codecs.CODECS:
            results = []
            for _ in range(args.repeats):
                folder = Path(tempfile.mkdtemp()) / "bench.zarr"
                try:
                    results.append(_one(source, rows, dtype, codec, folder))
                finally:
                    shutil.rmtree(folder.parent)
            median = {k: sorted(r[k] for r in results)[len(results) // 2] for k in results[0]}
            print(
                f"{dtype:<9} {codec:<11} {median['ratio']:>6.2f} "
                f"{median['write_gbs']:>11.2f} {median['read_gbs']:>10.2f} {median['verify_gbs']:>12.2f}"
            )


if __name__ == "__main__":
    main()
