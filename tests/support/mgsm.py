"""MGSM as the test Hub serves it: rows of the local copy (../shared/mgsm) and parquet files of them."""

from __future__ import annotations

import io
import json
from pathlib import Path


def parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def rows(mgsm: Path, lang: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (mgsm / lang / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
