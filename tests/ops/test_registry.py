"""One declaration per function: both surfaces take its options, run its checks and its steps."""

import inspect
import pickle
import warnings

import numpy as np
import pytest

import mmbeam.transforms as mt
from mmbeam import col
from mmbeam.errors import ConfigError
from mmbeam.expr import ir
from mmbeam.ops import functions as fns
from mmbeam.ops.engine import RowWindow, chain_steps, reduced_box
from mmbeam.ops.registry import FRAME, TRANSFORM, Call, registered
from mmbeam.ops.rowchain import RowChain
from mmbeam.ops.store import content_name
from mmbeam.testing.images import encode_sample, make_image

DECLARED = [f for f in registered() if f.transform]


def _frame_method(function):
    namespace = getattr(col("x"), function.namespace)
    return getattr(namespace, function.method)


@pytest.mark.parametrize("function", DECLARED, ids=lambda f: f.stage)
def test_every_frame_method_takes_its_transforms_options(function):
    transform = inspect.signature(getattr(mt, function.stage)).parameters
    frame = inspect.signature(_frame_method(function)).parameters
    shared = {o.name for o in function.options if set(o.surfaces) == {TRANSFORM, FRAME}}
    assert shared <= set(transform) and shared <= set(frame)
    assert "on_error" in shared
    assert set(transform) - shared == {"keyed", "label"}


@pytest.mark.parametrize("function", registered(), ids=lambda f: f.name)
def test_on_error_is_checked_the_same_on_both_surfaces(function):
    args = {"image.resize": (8, 8), "image.crop": ((0, 0, 1, 1),), "image.to_mode": ("L",),
            "url.upload": ("/tmp/x",)}.get(function.name, ())
    with pytest.raises(ConfigError, match="on_error"):
        _frame_method(function)(*args, on_error="ignore")
    if function.transform:
        with pytest.raises(ConfigError, match="on_error"):
            getattr(mt, function.stage)(*args, on_error="ignore")


def test_one_format_list_gif_fails_when_built_on_both_surfaces():
    with pytest.raises(ConfigError, match="GIF"):
        col("i").image.encode("GIF")
    with pytest.raises(ConfigError, match="GIF"):
        mt.EncodeImage("GIF")
    assert "GIF" not in fns.ENCODE_FORMATS


def test_download_options_are_checked_when_built_and_native_downloader_warns():
    for bad in ({"timeout_s": 0}, {"retries": -1}, {"max_connections": 0}):
        with pytest.raises(ConfigError):
            col("u").url.download(**bad)
        with pytest.raises(ConfigError):
            mt.Download(**bad)
    with pytest.warns(DeprecationWarning, match="use_native_downloader"):
        expr = col("u").url.download(use_native_downloader=True)
    assert "use_native_downloader" not in dict(expr.node.options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        col("u").url.download()  # no warning unless the argument is given


def test_explain_text_hides_credentials_and_defaults():
    from mmbeam.io import IOConfig, S3Config

    io = IOConfig(s3=S3Config(key_id="AKIA", access_key="s3cr3t"))
    expr = col("u").url.download(io_config=io, retries=5).image.resize(64, 32, on_error="null")
    text = ir.render(expr.node)
    assert text == ("image.resize(url.download(col(u), retries=5), width=64, height=32, "
                    "on_error='null')")
    assert "s3cr3t" not in repr(expr)


def test_crop_by_a_column_is_an_argument_checked_by_type():
    expr = col("img").image.crop(col("box"))
    node = expr.node
    assert dict(node.options)["bbox"] == ir.Arg(1) and node.args[1] == ir.Column("box")
    with pytest.raises(ConfigError, match="constant"):
        col("img").image.resize(col("w"), 8)


def test_reduced_box_comes_from_what_reads_the_decode():
    resize = Call(fns.RESIZE, fns.RESIZE.bind(TRANSFORM, (64, 48), {}))
    tall = Call(fns.RESIZE, fns.RESIZE.bind(TRANSFORM, (32, 100), {"mode": "fit"}))
    encode = Call(fns.ENCODE, fns.ENCODE.bind(TRANSFORM, (), {}))
    assert reduced_box([resize, tall]) == (64, 100)
    assert reduced_box([resize, encode]) is None  # the encoder needs every pixel
    assert reduced_box([resize, None]) is None  # an unknown reader (a beam.Map)
    assert reduced_box([]) is None
    decode = Call(fns.DECODE, fns.DECODE.bind(TRANSFORM, (), {}))
    (step, _) = chain_steps([decode, resize])
    assert step.fn.keywords["min_size"] == (64, 48)
    given = Call(fns.DECODE, fns.DECODE.bind(TRANSFORM, (), {"min_size": (10, 10)}))
    assert chain_steps([given, resize])[0].fn.keywords["min_size"] == (10, 10)


def test_calls_and_steps_pickle_by_declaration():
    call = Call(fns.RESIZE, fns.RESIZE.bind(TRANSFORM, (8, 8), {}))
    again = pickle.loads(pickle.dumps(call))
    assert again.function is fns.RESIZE and again.options == call.options
    chain = pickle.loads(pickle.dumps(RowChain(chain_steps([call]))))
    out = chain.submit(np.zeros((20, 30, 3), np.uint8)).result()
    assert out.value.shape == (8, 8, 3)


def test_frame_steps_take_per_row_options_and_never_name_by_row_index(tmp_path):
    upload = Call(fns.UPLOAD, fns.UPLOAD.bind(FRAME, (str(tmp_path),), {}))
    data = [encode_sample(make_image(16, 16, seed=i)) for i in range(3)]
    named = RowWindow(RowChain(chain_steps([upload], rows=[{"name": ["a.jpg", "b.jpg", None]}])))
    paths = [o.value for o in named.run(data, ["r0", "r1", "r2"])]
    assert paths[:2] == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert paths[2] == str(tmp_path / content_name(data[2]))  # null name: content hash
    counts = named.counts.take()
    assert counts == {"Upload": {"succeeded": 3, "failed": 0, "nulls": 0, "bytes": 0}}
    assert named.counts.take() == {}  # taken: counting starts afresh


def test_window_size_rule_is_one_for_every_driver():
    download = Call(fns.DOWNLOAD, fns.DOWNLOAD.bind(TRANSFORM, (8,), {}))
    decode = Call(fns.DECODE, fns.DECODE.bind(TRANSFORM, (), {}))
    io_only = RowWindow(RowChain(chain_steps([download])))
    mixed = RowWindow(RowChain(chain_steps([download, decode])))
    assert (io_only.workers, io_only.headroom) == (8, 1.5)
    assert mixed.headroom == 2.0 and mixed.size == mixed.chain.min_window()


class _Gauge:
    """Counts rows inside a step at once (the peak)."""

    def __init__(self):
        import threading

        self.lock, self.now, self.peak = threading.Lock(), 0, 0

    def __call__(self, value, key):
        import time

        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(0.01)
        with self.lock:
            self.now -= 1
        return value


async def _never(value, key):  # the blocking form runs instead
    raise AssertionError


def test_row_window_bounds_rows_learns_and_resizes():
    from mmbeam.ops.rowchain import Step

    gauge = _Gauge()
    window = RowWindow(RowChain([Step("Wait", "io", _never, limit=3, blocking=gauge)]),
                       max_window=5)
    assert window.size == window.floor == min(5, window.chain.min_window())
    outcomes = window.run(list(range(40)), [f"r{i}" for i in range(40)])
    assert [o.value for o in outcomes] == list(range(40))
    assert gauge.peak <= 3  # the step's limit: its own threads
    assert window.held == 0
    assert len(window.take_sizes()) == 40 // 8  # a size chosen every 8 rows
    assert window.controller.seconds_per_element > 0.005
    assert window.counts.take() == {"Wait": {"succeeded": 40, "failed": 0, "nulls": 0,
                                             "bytes": 0}}
