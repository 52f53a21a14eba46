"""Frame.to_torch_iter_dataset with torch's DataLoader, in this process and in 2 workers."""

from __future__ import annotations

import pytest

import mmbeam.frame as mf
from mmbeam.frame import col
from mmbeam.plan import nodes as P
from mmbeam.testing.images import encode_sample, make_image

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402


@pytest.fixture
def urls(mmbeam_http):
    return [mmbeam_http.add(f"torch/{i}.jpg", encode_sample(make_image(20, 12, seed=i)))
            for i in range(150)]


def _frame(urls):
    return (mf.from_pydict({"id": list(range(len(urls))), "url": urls})
            .where(col("id") % 7 != 3)
            .with_column("image", col("url").url.download().image.decode()))


def test_rows_are_dicts_of_tensors_in_one_process(urls):
    ds = _frame(urls[:10]).to_torch_iter_dataset()
    assert isinstance(ds, torch.utils.data.IterableDataset)
    rows = list(ds)
    assert [int(r["id"]) for r in rows] == [i for i in range(10) if i % 7 != 3]
    assert rows[0]["image"].dtype == torch.uint8 and tuple(rows[0]["image"].shape) == (12, 20, 3)
    assert rows[0]["url"] == urls[0]


def test_two_dataloader_workers_give_every_row_exactly_once(urls, mmbeam_http):
    frame = _frame(urls)
    expected = [i for i in range(150) if i % 7 != 3]
    mmbeam_http.reset_stats()
    loader = DataLoader(frame.to_torch_iter_dataset(), batch_size=16, num_workers=2)
    ids, shapes = [], set()
    for batch in loader:
        ids.extend(batch["id"].tolist())
        shapes.add(tuple(batch["image"].shape[1:]))
    assert sorted(ids) == expected and len(ids) == len(expected)
    assert shapes == {(12, 20, 3)}
    # each row was downloaded once in all: the workers split the work, not just the output
    assert sum(mmbeam_http.hits(u) for u in urls) == len(expected)


def test_a_plan_that_cannot_be_cut_runs_once_and_the_workers_share_its_rows(urls, mmbeam_http):
    frame = _frame(urls[:40]).sort("id", desc=True).limit(30)
    mmbeam_http.reset_stats()
    ds = frame.to_torch_iter_dataset()
    assert isinstance(ds.plan, P.InMemory)  # computed when the dataset was made
    assert sum(mmbeam_http.hits(u) for u in urls) == 34  # the 34 rows kept by the filter
    ids = [int(i) for b in DataLoader(ds, batch_size=8, num_workers=2) for i in b["id"]]
    assert sorted(ids) == sorted(frame.to_pydict()["id"]) and len(ids) == 30
    assert sum(mmbeam_http.hits(u) for u in urls) == 34  # the workers downloaded nothing


def test_shard_cuts_blocks_round_robin_with_no_row_twice():
    table = mf.from_pydict({"i": list(range(1000))})
    shares = []
    for k in range(3):
        plan = P.Shard(table._plan, k, 3, 64)
        shares.append(mf.Frame(plan).to_pydict()["i"])
    assert sorted(sum(shares, [])) == list(range(1000))
    assert shares[1][:3] == [64, 65, 66] and shares[0][64] == 192
