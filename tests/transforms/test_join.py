"""Tests of ``mmbeam.transforms.join``: every join type against pandas, SQL nulls, errors."""

from __future__ import annotations

import pickle
import random
from collections import Counter

import apache_beam as beam
import pandas as pd
import pytest
from apache_beam.internal import pickler
from apache_beam.testing.util import BeamAssertException, assert_that

from mmbeam.errors import ConfigError, SchemaError
from mmbeam.runners.direct import local_pipeline
from mmbeam.transforms.join import (
    JOIN_TYPES,
    Join,
    _ColumnUnionFn,
    _JoinGroupFn,
    _key_of,
    _KeyRowsFn,
    _KeySpec,
    _merge_rows,
    _output_layout,
    _SemiAntiFn,
    _UnmatchedFn,
)

# --------------------------------------------------------------------------- helpers


def _row_items(row: dict) -> tuple:
    """A row as a hashable tuple of (column, value) pairs, in the row's column order."""
    return tuple(row.items())


def _same_rows(expected):
    """An ``assert_that`` matcher: the same rows (with the same column order), in any order."""
    expected = sorted(expected, key=repr)

    def match(actual):
        actual = sorted(actual, key=repr)
        if actual != expected:
            missing = Counter(expected) - Counter(actual)
            unexpected = Counter(actual) - Counter(expected)
            raise BeamAssertException(
                f"{len(actual)} rows, expected {len(expected)}; "
                f"missing {list(missing.elements())[:5]}; "
                f"unexpected {list(unexpected.elements())[:5]}"
            )

    return match


def _expect(pcoll, rows, label: str = "Check") -> None:
    """Asserts that ``pcoll`` holds exactly the dict ``rows``, each with its column order."""
    items = pcoll | f"{label}Items" >> beam.Map(_row_items)
    assert_that(items, _same_rows([_row_items(r) for r in rows]), label=label)


def _check_join(left, right, expected, **join_args) -> None:
    with local_pipeline() as p:
        sides = (p | "Left" >> beam.Create(left), p | "Right" >> beam.Create(right))
        _expect(sides | Join(**join_args), expected)


# --------------------------------------------------------------------------- against pandas

# name -> (left key columns, right key columns, Join arguments)
_SCENARIOS = {
    "one_key": (["k1"], ["k1"], {"on": "k1"}),
    "two_keys": (["k1", "k2"], ["k1", "k2"], {"on": ["k1", "k2"]}),
    "left_on_right_on": (
        ["lk1", "lk2"],
        ["rk1", "rk2"],
        {"left_on": ["lk1", "lk2"], "right_on": ["rk1", "rk2"]},
    ),
}


def _random_rows(rng: random.Random, keys: list[str], n: int, value: str, first: int) -> list[dict]:
    """``n`` rows with keys from a small domain (duplicates) and ~15% None key values."""
    rows = []
    for i in range(n):
        row = {k: (None if rng.random() < 0.15 else rng.randrange(3)) for k in keys}
        row[value] = first + i  # makes each row distinct
        row["shared"] = rng.choice([None, "a", "b"])  # collides: right's becomes "right.shared"
        rows.append(row)
    return rows


def _random_sides(seed: int, left_keys: list[str], right_keys: list[str]):
    rng = random.Random(seed)
    left = _random_rows(rng, left_keys, 40, "lv", 0)
    right = _random_rows(rng, right_keys, 30, "rv", 1000)
    return left, right


def _records(df: pd.DataFrame, columns: list[str]) -> list[dict]:
    """``df``'s rows as dicts in ``columns`` order, with pandas' NaN turned back into None."""
    df = df.reindex(columns=columns).astype(object)
    df = df.where(df.notna(), None)
    return df.to_dict("records")


def _pandas_join(left, right, left_keys, right_keys, how) -> list[dict]:
    """The SQL answer, built with pandas on the non-null-key rows plus the null-key rows by hand.

    pandas matches None/NaN keys with each other; SQL never matches a null key. So pandas joins
    only the rows whose keys are all non-null, and the null-key rows are added afterwards: kept
    unmatched (other side None) by the outer sides, kept by anti, dropped otherwise.
    """
    ldf, rdf = pd.DataFrame(left, dtype=object), pd.DataFrame(right, dtype=object)
    lnull, rnull = ldf[left_keys].isna().any(axis=1), rdf[right_keys].isna().any(axis=1)
    if how in ("semi", "anti"):
        left_ok = ldf[~lnull]
        hit = pd.MultiIndex.from_frame(left_ok[left_keys]).isin(
            list(pd.MultiIndex.from_frame(rdf[~rnull][right_keys]))
        )
        out = left_ok[hit] if how == "semi" else pd.concat([left_ok[~hit], ldf[lnull]])
        return _records(out, list(ldf.columns))
    coalesce = left_keys == right_keys
    rdf = rdf.rename(columns={"shared": "right.shared"})
    if coalesce:
        merged = ldf[~lnull].merge(rdf[~rnull], on=left_keys, how=how)
        columns = [*left_keys, "lv", "shared", "rv", "right.shared"]
    else:
        merged = ldf[~lnull].merge(rdf[~rnull], left_on=left_keys, right_on=right_keys, how=how)
        columns = [*left_keys, *right_keys, "lv", "shared", "rv", "right.shared"]
    parts = [merged]
    if how in ("left", "outer"):
        parts.append(ldf[lnull])  # right's columns become NaN, i.e. None
    if how in ("right", "outer"):
        parts.append(rdf[rnull])  # with on=, the key columns come from the right row
    return _records(pd.concat(parts), columns)


@pytest.mark.parametrize("how", JOIN_TYPES)
def test_join_matches_pandas_on_random_data_with_sql_nulls(how):
    with local_pipeline() as p:
        for seed, (name, (left_keys, right_keys, args)) in enumerate(_SCENARIOS.items()):
            left, right = _random_sides(seed, left_keys, right_keys)
            expected = _pandas_join(left, right, left_keys, right_keys, how)
            assert expected, "the random data should give a non-empty answer"
            sides = (p | f"{name}L" >> beam.Create(left), p | f"{name}R" >> beam.Create(right))
            _expect(sides | name >> Join(how=how, **args), expected, label=f"{name}Check")


def test_random_data_has_duplicates_and_null_keys_on_both_sides():
    left, right = _random_sides(1, ["k1", "k2"], ["k1", "k2"])
    for rows in (left, right):
        keys = [(r["k1"], r["k2"]) for r in rows]
        assert any(None in k for k in keys)
        assert len({k for k in keys if None not in k}) < len([k for k in keys if None not in k])


# --------------------------------------------------------------------------- examples

_OWNERS = [
    {"full_name": "Ernesto Evergreen", "has_dog": True},
    {"full_name": "James Jale", "has_dog": True},
    {"full_name": "Wolfgang Winter", "has_dog": None},
    {"full_name": "Shandra Shamas", "has_dog": True},
    {"full_name": "Zaya Zaphora", "has_dog": True},
    {"full_name": "Otto Ownerless", "has_dog": False},
]
_DOGS = [
    {"urls": f"https://example.test/{i}.jpg", "full_name": name, "dog_name": dog}
    for i, (name, dog) in enumerate(
        [
            ("Ernesto Evergreen", "Ernie"),
            ("James Jale", "Jackie"),
            ("Wolfgang Winter", "Wolfie"),
            ("Shandra Shamas", "Shaggie"),
            ("Zaya Zaphora", "Zadie"),
        ]
    )
]


def test_reference_example_owners_join_dogs_on_full_name():
    expected = [
        {
            "full_name": d["full_name"],
            "has_dog": o["has_dog"],
            "urls": d["urls"],
            "dog_name": d["dog_name"],
        }
        for o in _OWNERS
        for d in _DOGS
        if o["full_name"] == d["full_name"]
    ]
    assert [r["full_name"] for r in expected] == [d["full_name"] for d in _DOGS]
    _check_join(_OWNERS, _DOGS, expected, on="full_name")


def test_colliding_right_column_gets_the_prefix():
    left = [{"id": 1, "name": "l", "x": 0}]
    right = [{"id": 1, "name": "r", "y": 2}]
    with local_pipeline() as p:
        sides = (p | "Left" >> beam.Create(left), p | "Right" >> beam.Create(right))
        _expect(
            sides | "Default" >> Join(on="id"),
            [{"id": 1, "name": "l", "x": 0, "right.name": "r", "y": 2}],
            "D",
        )
        _expect(
            sides | "Custom" >> Join(on="id", right_prefix="r_"),
            [{"id": 1, "name": "l", "x": 0, "r_name": "r", "y": 2}],
            "C",
        )


def test_unmatched_left_row_dropped_by_inner_kept_by_left():
    left = [{"id": 1, "a": "one"}, {"id": 2, "a": "two"}]
    right = [{"id": 1, "b": "uno"}, {"id": 3, "b": "tres"}]
    matched = {"id": 1, "a": "one", "b": "uno"}
    with local_pipeline() as p:
        sides = (p | "Left" >> beam.Create(left), p | "Right" >> beam.Create(right))
        _expect(sides | "Inner" >> Join(on="id"), [matched], "I")
        _expect(
            sides | "LeftJoin" >> Join(on="id", how="left"),
            [matched, {"id": 2, "a": "two", "b": None}],
            "L",
        )


def test_null_keys_never_match_and_duplicates_cross():
    left = [{"id": None, "a": 1}, {"id": 7, "a": 2}, {"id": 7, "a": 3}]
    right = [{"id": None, "b": 1}, {"id": 7, "b": 2}, {"id": 7, "b": 3}]
    cross = [{"id": 7, "a": a, "b": b} for a in (2, 3) for b in (2, 3)]
    with local_pipeline() as p:
        sides = (p | "Left" >> beam.Create(left), p | "Right" >> beam.Create(right))
        _expect(sides | "Inner" >> Join(on="id"), cross, "I")
        _expect(
            sides | "Outer" >> Join(on="id", how="outer"),
            [*cross, {"id": None, "a": 1, "b": None}, {"id": None, "a": None, "b": 1}],
            "O",
        )
        _expect(sides | "Semi" >> Join(on="id", how="semi"), left[1:], "S")
        _expect(sides | "Anti" >> Join(on="id", how="anti"), left[:1], "A")


def test_empty_right_side():
    """An empty side has no rows to learn columns from: it adds only the key columns it names."""
    left = [{"id": 1, "a": "x"}, {"id": None, "a": "y"}]
    with local_pipeline() as p:
        sides = (p | "Left" >> beam.Create(left), p | "Right" >> beam.Create([]))
        _expect(sides | "Inner" >> Join(on="id"), [], "I")
        _expect(sides | "LeftJoin" >> Join(on="id", how="left"), left, "L")
        _expect(sides | "Outer" >> Join(on="id", how="outer"), left, "O")
        _expect(sides | "Anti" >> Join(on="id", how="anti"), left, "A")
        _expect(sides | "Semi" >> Join(on="id", how="semi"), [], "S")
        _expect(
            sides | "Split" >> Join(left_on="id", right_on="rid", how="left"),
            [{"id": 1, "rid": None, "a": "x"}, {"id": None, "rid": None, "a": "y"}],
            "LR",
        )


def test_ragged_rows_get_none_for_columns_they_lack():
    left = [{"id": 1, "a": "x"}, {"id": 2, "extra": True, "a": "y"}]
    right = [{"id": 1, "b": 1}, {"id": 2}]
    expected = [
        {"id": 1, "a": "x", "extra": None, "b": 1},
        {"id": 2, "a": "y", "extra": True, "b": None},
    ]
    _check_join(left, right, expected, on="id")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"on": "id", "how": "full"},
            r"how='full'.*'inner', 'left', 'right', 'outer', 'semi', 'anti'",
        ),
        ({"on": "id", "how": "innner"}, r"did you mean 'inner'"),
        ({"on": "id", "left_on": "a", "right_on": "b"}, r"both on='id' and left_on='a'"),
        ({}, r"needs key columns"),
        ({"left_on": "a"}, r"both left_on= and right_on=.*right_on=None"),
        (
            {"left_on": ["a", "b"], "right_on": ["c"]},
            r"\['a', 'b'\].*\['c'\].*2 left key columns with 1",
        ),
        ({"on": []}, r"on=\[\]"),
        ({"on": ["a", 3]}, r"has 3"),
        ({"on": ["a", "a"]}, r"names a column twice"),
        ({"on": "id", "right_prefix": ""}, r"right_prefix=''"),
    ],
)
def test_bad_arguments_raise_config_error(args, message):
    with pytest.raises(ConfigError, match=message):
        Join(**args)


def test_join_needs_a_pair_of_pcollections():
    with local_pipeline() as p:
        only = p | beam.Create([{"id": 1}])
        with pytest.raises(ConfigError, match=r"pair of PCollections"):
            only | Join(on="id")


def test_key_of_errors_name_the_column_side_and_row():
    with pytest.raises(
        SchemaError, match=r"key column 'id' is missing from a right row \{'idx': 1\}"
    ):
        _key_of({"idx": 1}, ("id",), "right")
    with pytest.raises(
        SchemaError, match=r"'tags' holds an unhashable list \[1, 2\] in a left row"
    ):
        _key_of({"tags": [1, 2]}, ("tags",), "left")
    with pytest.raises(SchemaError, match=r"dict rows, but the left side has 3 \(int\)"):
        _key_of(3, ("id",), "left")


def test_missing_key_column_fails_the_pipeline_with_schema_error():
    with pytest.raises(
        SchemaError, match=r"key column 'id' is missing from a left row \{'idx': 1\}"
    ):
        _check_join([{"idx": 1}], [{"id": 1}], [], on="id")


# --------------------------------------------------------------------------- pure functions


def test_key_of_returns_a_tuple_or_none_for_sql_null():
    assert _key_of({"a": 1, "b": "x", "c": 0}, ("a", "b"), "left") == (1, "x")
    assert _key_of({"a": 1, "b": None}, ("a", "b"), "left") is None
    assert _key_of({"a": (1, 2)}, ("a",), "left") == ((1, 2),)


def test_output_layout_orders_keys_left_right_and_prefixes_collisions():
    on = _KeySpec(("id",), ("id",), True)
    assert _output_layout(on, ("id", "a", "n"), ("n", "id", "b")) == (
        ("id", "id", "id"),
        ("a", "a", None),
        ("n", "n", None),
        ("right.n", None, "n"),
        ("b", None, "b"),
    )
    split = _KeySpec(("id",), ("id",), False)
    assert [e[0] for e in _output_layout(split, ("id", "a"), ("id", "a"))] == [
        "id",
        "right.id",
        "a",
        "right.a",
    ]
    # a prefixed name that is taken too gets the prefix again
    assert [e[0] for e in _output_layout(on, ("id", "a", "right.a"), ("a",))] == [
        "id",
        "a",
        "right.a",
        "right.right.a",
    ]


def test_merge_rows_coalesces_on_keys_and_fills_none():
    layout = _output_layout(_KeySpec(("id",), ("id",), True), ("id", "a"), ("id", "b"))
    assert _merge_rows({"id": 1, "a": 2}, {"id": 1, "b": 3}, layout) == {"id": 1, "a": 2, "b": 3}
    assert _merge_rows(None, {"id": 4, "b": 3}, layout) == {"id": 4, "a": None, "b": 3}
    assert _merge_rows({"id": 5, "a": 2}, None, layout) == {"id": 5, "a": 2, "b": None}


def test_column_union_keeps_first_appearance_order():
    fn = _ColumnUnionFn()
    a = fn.add_input(fn.add_input(fn.create_accumulator(), {"x": 1, "y": 2}), {"z": 3, "x": 0})
    b = fn.add_input(fn.create_accumulator(), {"w": 1, "y": 2})
    assert fn.extract_output(fn.merge_accumulators([a, b])) == ["x", "y", "z", "w"]
    assert fn.extract_output(fn.create_accumulator()) == []


# --------------------------------------------------------------------------- pickling


def test_join_and_its_dofns_survive_a_pickle_round_trip():
    join = pickle.loads(pickle.dumps(Join(on="id", how="outer")))
    assert join._spec == _KeySpec(("id",), ("id",), True) and join._how == "outer"
    assert pickler.loads(pickler.dumps(Join(left_on="a", right_on="b")))._spec.right == ("b",)

    spec = _KeySpec(("id",), ("id",), True)
    fns = [
        _KeyRowsFn(("id",), "left"),
        _JoinGroupFn(spec, "left"),
        _UnmatchedFn(spec, "right"),
        _SemiAntiFn("anti"),
        _ColumnUnionFn(),
    ]
    for fn in fns:
        for dumps, loads in ((pickle.dumps, pickle.loads), (pickler.dumps, pickler.loads)):
            copy = loads(dumps(fn))
            assert type(copy) is type(fn) and vars(copy) == vars(fn)

    key_rows = pickle.loads(pickle.dumps(fns[0]))
    assert list(key_rows.process({"id": 3, "a": 1})) == [((3,), {"id": 3, "a": 1})]
    group = pickle.loads(pickle.dumps(fns[1]))
    element = ((2,), {"left": [{"id": 2, "a": 1}], "right": []})
    assert list(group.process(element, ["id", "a"], ["id", "b"])) == [{"id": 2, "a": 1, "b": None}]
