"""Throughput of tokenisation and packing on this machine, cold and from the token cache.

Generates a general-corpus JSON-lines file, trains the demo-style tokenizer on a sample of it,
then times (best of ``--repeats``):

- ``tokenize``: ``tokenize_documents`` on in-memory documents (the tokenizer alone);
- ``cold``: ``token_stream`` with an empty cache: load through ``datasets``, records to text,
  tokenise, write the cache;
- ``cached``: ``token_stream`` again: fingerprint the file and memory-map the cache entry;
- ``batches_cached``: ``token_batches`` from the cache, packed and sampled to int64 tensors.

Writes ``bench/results/data_packing_cpu.json``.

    .venv/bin/python bench/data_packing.py [--documents 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import tokenizers
import torch
import transformers

from sharpmix.assets.corpora import general_documents
from sharpmix.assets.vocab import train_tokenizer
from workers.data import DataSource, LoadPolicy, token_batches, token_stream
from workers.data.packing import tokenize_documents

RESULT = Path(__file__).parent / "results" / "data_packing_cpu.json"


def best_of(repeats: int, run: Callable[[], object], reset: Callable[[], None]) -> float:
    """Fastest wall time of ``run`` over ``repeats`` tries, calling ``reset`` before each."""
    times = []
    for _ in range(repeats):
        reset()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    datasets.disable_progress_bars()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="sharpmix-bench-"))
    try:
        documents = general_documents(args.documents, seed=0, world_seed=0)
        data = work / "general.jsonl"
        data.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
        file_bytes = data.stat().st_size
        tokenizer = train_tokenizer(documents[:5000], vocab_size=512)
        policy = LoadPolicy(allowed_roots=(work,), cache_dir=work / "cache")
        src = DataSource("general", path=data.name)

        def clear_cache() -> None:
            shutil.rmtree(policy.cache_dir, ignore_errors=True)

        n_tokens = len(tokenize_documents(documents, tokenizer))
        seq_len, batch_size = 128, 64
        num_batches = n_tokens // (seq_len * batch_size)
        timings = {
            "tokenize": best_of(
                args.repeats, lambda: tokenize_documents(documents, tokenizer), lambda: None
            ),
            "cold": best_of(
                args.repeats, lambda: token_stream(src, tokenizer, policy), clear_cache
            ),
        }
        token_stream(src, tokenizer, policy)  # fill the cache for the cached runs
        timings["cached"] = best_of(
            args.repeats, lambda: token_stream(src, tokenizer, policy), lambda: None
        )
        timings["batches_cached"] = best_of(
            args.repeats,
            lambda: token_batches(
                src,
                tokenizer,
                policy,
                seq_len=seq_len,
                batch_size=batch_size,
                num_batches=num_batches,
                seed=0,
            ),
            lambda: None,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            # Other jobs share these cores; a high load average means slower, noisier numbers.
            "load_average_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "datasets": datasets.__version__,
        },
        "workload": {
            "documents": args.documents,
            "tokens": n_tokens,
            "file_bytes": file_bytes,
            "tokenizer": "byte-level BPE, 512 tokens (demo-style)",
            "batches": {"seq_len": seq_len, "batch_size": batch_size, "num_batches": num_batches},
            "repeats": args.repeats,
            "statistic": "best of repeats",
        },
        "seconds": {k: round(v, 4) for k, v in timings.items()},
        "tokens_per_second": {k: round(n_tokens / v) for k, v in timings.items()},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
