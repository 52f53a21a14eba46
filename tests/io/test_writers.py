"""write_parquet / write_csv: files appear whole or not at all, and stay inside their root."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmbeam.frame as mf
from mmbeam.errors import UnsafePathError
from mmbeam.io.writers import WriteSpec, write_table

_KILLED_WRITER = r"""
import sys
import numpy as np
import pyarrow as pa
from mmbeam.io.writers import WriteSpec, write_table

rng = np.random.default_rng(0)
table = pa.table({"x": rng.random(4_000_000), "y": rng.integers(0, 1 << 60, 4_000_000)})
for _ in range(200):
    write_table(table, WriteSpec("parquet", sys.argv[1]))
"""


def _all_files(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]


def test_sigkilled_parquet_writer_leaves_no_partial_file(tmp_path):
    """Before: the file was written in place, so a kill left a truncated ``.parquet`` that
    read_parquet then failed on."""
    out = str(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, out],
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(out) and len(_all_files(out)) >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    files = _all_files(out)
    assert files and all(f.endswith(".parquet") and not os.path.basename(f).startswith(".")
                         for f in files)
    for f in files:
        assert pq.read_metadata(f).num_rows == 4_000_000
    assert mf.read_parquet(out).count_rows() == 4_000_000 * len(files)


def test_write_refuses_a_partition_folder_that_a_symlink_leads_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "k=a").symlink_to(outside)
    table = pa.table({"k": ["a", "b"], "v": [1, 2]})
    with pytest.raises(UnsafePathError, match="outside the destination"):
        write_table(table, WriteSpec("parquet", str(root), ("k",)))
    assert os.listdir(outside) == []
