"""How a task hands its outputs back: as individually encoded elements cut from what Beam wrote
(not decoded and encoded again), an unkeyed output in ``pieces`` consecutive lists, a keyed one
in hash shards."""

from __future__ import annotations

import numpy as np
import pytest
from apache_beam.coders import coders
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from mmbeam.runners import worker
from mmbeam.transforms.coders import NdarrayCoder


def _windowed(coder):
    return coders.WindowedValueCoder(coder, coders.GlobalWindowCoder())


def _chunks(impl, values, per_chunk: int) -> list[bytes]:
    """The values as Beam's data channel hands them over: several encoded per chunk."""
    encoded = [impl.encode_nested(WindowedValue(v, 0, [window.GlobalWindow()])) for v in values]
    return [b"".join(encoded[i:i + per_chunk]) for i in range(0, len(encoded), per_chunk)]


@pytest.mark.parametrize("pieces", [1, 3, 7])
def test_unkeyed_output_comes_back_in_even_consecutive_pieces_of_the_written_bytes(pieces):
    coder = _windowed(NdarrayCoder())
    impl = coder.get_impl()
    images = [np.full((8 + i, 5, 3), i, np.uint8) for i in range(20)]
    chunks = _chunks(impl, images, per_chunk=6)
    spec = worker.OutputSpec("t", b"buffer", coder)

    lists = worker._split(spec, chunks, pieces)

    assert len(lists) == pieces
    assert max(map(len, lists)) - min(map(len, lists)) <= 1
    elements = [e for piece in lists for e in piece]
    assert b"".join(elements) == b"".join(chunks)  # every element, in order, its own bytes
    decoded = [impl.decode_nested(e).value for e in elements]
    assert [d.shape for d in decoded] == [a.shape for a in images]
    assert all((d == a).all() for d, a in zip(decoded, images, strict=True))


def test_keyed_output_is_sharded_by_key_and_keeps_each_elements_bytes():
    kv = coders.TupleCoder([coders.StrUtf8Coder(), coders.VarIntCoder()])
    coder = _windowed(kv)
    impl = coder.get_impl()
    pairs = [(f"k{i % 5}", i) for i in range(30)]
    chunks = _chunks(impl, pairs, per_chunk=4)
    spec = worker.OutputSpec("t", b"buffer", coder, coders.StrUtf8Coder(), 3)

    shards = worker._split(spec, chunks)

    assert len(shards) == 3
    seen = {}
    for index, shard in enumerate(shards):
        for element in shard:
            key, value = impl.decode_nested(element).value
            assert seen.setdefault(key, index) == index  # a key lives in one shard
            assert element == impl.encode_nested(WindowedValue((key, value), 0,
                                                               [window.GlobalWindow()]))
    assert sorted(impl.decode_nested(e).value for s in shards for e in s) == sorted(pairs)
