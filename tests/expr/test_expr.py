"""Expressions: IR built by operators and namespaces, type inference, did-you-mean errors."""

from __future__ import annotations

import pytest

from mmbeam.errors import ConfigError, SchemaError, UnsupportedError
from mmbeam.expr import col, infer, ir, lit
from mmbeam.types import DataType, Schema

SCHEMA = Schema([
    ("first_name", DataType.string()),
    ("age", DataType.int64()),
    ("score", DataType.float32()),
    ("ok", DataType.bool()),
    ("bytes", DataType.binary()),
    ("img", DataType.image("RGB")),
    ("tags", DataType.list(DataType.string())),
])


def test_operators_build_nodes_without_evaluating():
    e = (col("age") + 1) * 2
    node = e._node
    assert isinstance(node, ir.BinaryOp) and node.op == "*"
    assert node.left == ir.BinaryOp("+", ir.Column("age"), ir.Literal(1, DataType.int64()))
    assert (1 - col("age"))._node.left == ir.Literal(1, DataType.int64())
    assert repr(col("a") + " " + col("b")) == "col(a) + lit(' ') + col(b)"


@pytest.mark.parametrize("expr, expected", [
    (col("age") + 1, DataType.int64()),
    (col("age") + col("score"), DataType.float64()),
    (col("score") * 2.5, DataType.float64()),
    (col("age") / 2, DataType.float64()),
    (col("age") % 7, DataType.int64()),
    (col("first_name") + " " + col("first_name"), DataType.string()),
    (col("age") > 3, DataType.bool()),
    ((col("age") > 3) & col("ok") | ~col("ok"), DataType.bool()),
    (col("age").is_null(), DataType.bool()),
    (col("age").not_null(), DataType.bool()),
    (col("age").fill_null(0), DataType.int64()),
    (col("ok").if_else(col("age"), 1.5), DataType.float64()),
    (col("age").cast(DataType.string()), DataType.string()),
    (col("first_name").str.contains("a"), DataType.bool()),
    (col("first_name").str.startswith("a"), DataType.bool()),
    (col("first_name").str.endswith("a"), DataType.bool()),
    (col("first_name").str.lower(), DataType.string()),
    (col("first_name").str.upper(), DataType.string()),
    (col("first_name").str.length(), DataType.int64()),
    (col("first_name").str.split(","), DataType.list(DataType.string())),
    (col("first_name").str.replace("a", "b"), DataType.string()),
    (col("first_name").url.download(), DataType.binary()),
    (col("bytes").url.upload("/tmp/x"), DataType.string()),
    (col("bytes").image.decode(), DataType.image(None)),
    (col("bytes").image.decode(mode="L"), DataType.image("L")),
    (col("img").image.resize(4, 4), DataType.image("RGB")),
    (col("img").image.encode("png"), DataType.binary()),
    (col("img").image.crop((0, 0, 2, 2)), DataType.image("RGB")),
    (col("img").image.to_mode("L"), DataType.image("L")),
    (col("img").image.width(), DataType.int64()),
    (col("img").image.height(), DataType.int64()),
    (col("age").sum(), DataType.int64()),
    (col("age").mean(), DataType.float64()),
    (col("age").count(), DataType.int64()),
    (col("first_name").min(), DataType.string()),
    (col("first_name").agg_list(), DataType.list(DataType.string())),
])
def test_type_inference(expr, expected):
    assert infer(expr._node, SCHEMA) == expected


def test_output_names_follow_the_leftmost_column_or_alias():
    assert (col("first_name") + " " + col("age").cast(DataType.string())).name() == "first_name"
    assert (lit(1) + col("age")).name() == "literal"  # as in Daft
    assert col("age").alias("x").alias("y").name() == "y"


def test_unknown_column_names_the_closest_and_what_exists():
    with pytest.raises(SchemaError) as err:
        infer((col("frist_name") + "x")._node, SCHEMA)
    msg = str(err.value)
    assert "'frist_name'" in msg and "Did you mean 'first_name'" in msg and "age" in msg


def test_type_mismatches_raise_schema_error_naming_the_column():
    with pytest.raises(SchemaError, match=r"image.resize expects an Image.*col\(first_name\) is Utf8"):
        infer(col("first_name").image.resize(2, 2)._node, SCHEMA)
    with pytest.raises(SchemaError, match="cannot apply '\\+'"):
        infer((col("first_name") + 1)._node, SCHEMA)
    with pytest.raises(SchemaError, match="Boolean"):
        infer((col("age") & col("ok"))._node, SCHEMA)
    with pytest.raises(SchemaError):
        infer(col("age").str.lower()._node, SCHEMA)
    with pytest.raises(SchemaError, match="Binary"):
        infer(col("first_name").image.decode()._node, SCHEMA)
    with pytest.raises(SchemaError):
        infer(col("tags").sum()._node, SCHEMA)


def test_non_constant_string_pattern_is_unsupported_not_wrong():
    with pytest.raises(UnsupportedError):
        infer(col("first_name").str.contains(col("first_name"))._node, SCHEMA)


def test_namespaces_suggest_the_closest_name():
    with pytest.raises(AttributeError, match="did you mean 'resize'"):
        col("img").image.resise(2, 2)
    with pytest.raises(AttributeError, match="did you mean 'download'"):
        col("u").url.donwload()
    with pytest.raises(AttributeError, match="did you mean 'contains'"):
        col("s").str.contain("x")
    with pytest.raises(AttributeError, match="did you mean 'image'"):
        _ = col("s").imag


@pytest.mark.parametrize("build", [
    lambda: col("i").image.resize(0, 4),
    lambda: col("i").image.resize(4, 4, mode="squash"),
    lambda: col("i").image.encode("JPEG", quality=0),
    lambda: col("i").image.encode("XYZ"),
    lambda: col("i").image.decode(mode="CMYK"),
    lambda: col("i").image.crop((0, 0, 0, 1)),
    lambda: col("u").url.download(on_error="ignore"),
    lambda: col("u").url.download(max_connections=0),
    lambda: col("u").url.upload(""),
    lambda: col(3),
    lambda: col("a").cast("int"),
])
def test_bad_arguments_fail_when_built(build):
    with pytest.raises(ConfigError):
        build()


def test_expressions_have_no_truth_value():
    with pytest.raises(TypeError, match="& \\| ~"):
        bool(col("a") == 1)


def test_options_are_recorded_on_the_node():
    node = col("u").url.download(max_connections=8, on_error="null")._node
    assert node.name == "url.download"
    assert node.option("max_connections") == 8 and node.option("on_error") == "null"
    enc = col("i").image.encode("jpg", quality=80)._node
    assert enc.option("format") == "JPEG" and enc.option("quality") == 80
