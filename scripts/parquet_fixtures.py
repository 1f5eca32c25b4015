"""Parquet files written by pyarrow, for the Parquet task-file tests.

    python scripts/parquet_fixtures.py fixtures crates/musketeers-verify/tests/fixtures/parquet
        The small committed fixtures (made-up rows), each beside the JSONL it must load as.
    python scripts/parquet_fixtures.py convert IN.jsonl OUT.parquet
        A JSONL file (GSM8K's, for CI) as the Parquet file Hugging Face would publish.

Needs `pyarrow` (a throwaway venv: python3 -m venv v && v/bin/pip install pyarrow==26.0.1).
"""

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write(table, out, jsonl_rows=None, **options):
    pq.write_table(table, out, **options)
    if jsonl_rows is not None:
        with open(out.with_suffix(".jsonl"), "w") as f:
            for row in jsonl_rows:
                f.write(json.dumps(row) + "\n")


def fixtures(out):
    out.mkdir(parents=True, exist_ok=True)
    # Question/answer under other names, a numeric answer, an extra column of a type a task
    # never reads (a list), two rows per row group.
    qa = [
        {"prompt": "What is 2 + 3?", "target": 5, "tags": [1, 2]},
        {"prompt": "What is 10 - 4?", "target": 6, "tags": []},
        {"prompt": "What is 7 * 6?", "target": 42, "tags": [3]},
        {"prompt": "What is 9 / 3?", "target": 3, "tags": [4, 5, 6]},
        {"prompt": "What is 100 + 1?", "target": 101, "tags": [7]},
    ]
    table = pa.Table.from_pylist(qa)
    write(table, out / "qa_renamed.parquet", qa, row_group_size=2)
    for codec in ["zstd", "gzip", "lz4", "none", "brotli"]:
        write(table, out / f"qa_{codec}.parquet", compression=codec)

    # GSM8K's layout (question, worked answer ending `#### N`), as the dataset's parquet has it.
    gsm8k = [
        {"question": "Ann has 3 apples and buys 4 more. How many apples?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
        {"question": "A box holds 12 eggs. How many eggs in 3 boxes?", "answer": "12 * 3 = <<12*3=36>>36\n#### 36"},
        {"question": "Tom had $1,200 and spent $150. How much is left?", "answer": "1200 - 150 = 1050\n#### 1,050"},
    ]
    write(pa.Table.from_pylist(gsm8k), out / "gsm8k_like.parquet", gsm8k)

    # Reasoning Gym's export: metadata is a struct column.
    rg = [
        {"question": "3 + 4 = ?", "answer": "7", "metadata": {"source_dataset": "chain_sum", "source_index": 0}},
        {"question": "10 - 2 = ?", "answer": "8", "metadata": {"source_dataset": "chain_sum", "source_index": 1}},
    ]
    write(pa.Table.from_pylist(rg), out / "reasoning_gym.parquet", rg)

    # Bad files: the question as a number; a null question in row 2.
    write(pa.table({"question": [1, 2], "answer": ["1", "2"]}), out / "question_is_int.parquet")
    write(
        pa.table({"question": ["a?", "b?", None], "answer": ["1", "2", "3"]}),
        out / "null_question.parquet",
    )


def convert(src, out):
    rows = [json.loads(line) for line in open(src) if line.strip()]
    pq.write_table(pa.Table.from_pylist(rows), out)
    print(f"{src} -> {out}: {len(rows)} rows")


if __name__ == "__main__":
    if sys.argv[1:2] == ["fixtures"] and len(sys.argv) == 3:
        fixtures(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["convert"] and len(sys.argv) == 4:
        convert(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
