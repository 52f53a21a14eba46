"""show() prints the reference documents' table format exactly; notebooks get thumbnails."""

from __future__ import annotations

import numpy as np

import mmbeam.frame as mf
from mmbeam.frame import DataType, col
from mmbeam.frame.display import format_cell

REFERENCE = """\
╭───────────────────┬─────────┬────────────────────────────────┬──────────╮
│ full_name         ┆ has_dog ┆ urls                           ┆ dog_name │
│ ---               ┆ ---     ┆ ---                            ┆ ---      │
│ Utf8              ┆ Boolean ┆ Utf8                           ┆ Utf8     │
╞═══════════════════╪═════════╪════════════════════════════════╪══════════╡
│ Wolfgang Winter   ┆ None    ┆ https://live.staticflickr.com… ┆ Wolfie   │
├╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌┼╌╌╌╌╌╌╌╌╌┼╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌┼╌╌╌╌╌╌╌╌╌╌┤
│ Shandra Shamas    ┆ true    ┆ https://live.staticflickr.com… ┆ Shaggie  │
├╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌┼╌╌╌╌╌╌╌╌╌┼╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌┼╌╌╌╌╌╌╌╌╌╌┤
│ Zaya Zaphora      ┆ true    ┆ https://live.staticflickr.com… ┆ Zadie    │
├╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌┼╌╌╌╌╌╌╌╌╌┼╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌┼╌╌╌╌╌╌╌╌╌╌┤
│ Ernesto Evergreen ┆ true    ┆ https://live.staticflickr.com… ┆ Ernie    │
├╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌┼╌╌╌╌╌╌╌╌╌┼╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌┼╌╌╌╌╌╌╌╌╌╌┤
│ James Jale        ┆ true    ┆ https://live.staticflickr.com… ┆ Jackie   │
╰───────────────────┴─────────┴────────────────────────────────┴──────────╯

(Showing first 5 of 5 rows)
"""

FAMILY = {
    "full_name": ["Wolfgang Winter", "Shandra Shamas", "Zaya Zaphora", "Ernesto Evergreen",
                  "James Jale"],
    "has_dog": [None, True, True, True, True],
    "urls": ["https://live.staticflickr.com/65535/53670606332_1ea5f2ce68_o.jpg",
             "https://live.staticflickr.com/65535/53671838039_b97411a441_o.jpg",
             "https://live.staticflickr.com/65535/53671698613_0230f8af3c_o.jpg",
             "https://live.staticflickr.com/65535/53671838774_03ba68d203_o.jpg",
             "https://live.staticflickr.com/65535/53671700073_2c9441422e_o.jpg"],
    "dog_name": ["Wolfie", "Shaggie", "Zadie", "Ernie", "Jackie"],
}


def test_show_matches_the_reference_table_exactly(capsys):
    mf.from_pydict(FAMILY).show()
    assert capsys.readouterr().out == REFERENCE


def test_show_n_counts_and_cuts(capsys):
    df = mf.from_pydict({"i": list(range(20))})
    df.show(3)
    out = capsys.readouterr().out
    assert out.rstrip().endswith("(Showing first 3 of 20 rows)")
    assert out.count("╌┤") == 2  # separators between 3 rows
    df.where(col("i") > 5).show(2)
    assert capsys.readouterr().out.rstrip().endswith("(Showing first 2 rows)")  # total unknown
    df.where(col("i") > 17).show()
    assert capsys.readouterr().out.rstrip().endswith("(Showing first 2 of 2 rows)")


def test_cells_of_each_type():
    assert format_cell(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", DataType.binary()) == \
        'b"\\xff\\xd8\\xff\\xe0\\x00\\x10JFIF\\x00"'
    assert format_cell(["boxer", "52.3%"], DataType.fixed_size_list(DataType.string(), 2)) == \
        "[boxer, 52.3%]"
    assert format_cell(None, DataType.string()) == "None"
    assert format_cell(False, DataType.bool()) == "false"
    assert format_cell({"a": 1}, DataType.struct({"a": DataType.int64()})) == "{a: 1}"
    assert format_cell(np.zeros((2, 2, 3), np.uint8), DataType.image("RGB")) == "<Image>"


def test_image_cells_show_as_image_and_thumbnails_in_html(capsys):
    img = np.zeros((300, 200, 3), np.uint8)
    img[:, :, 0] = 255
    df = mf.from_pydict({"name": ["red", "none"], "image": [img, None]})
    df.show()
    out = capsys.readouterr().out
    assert "┆ Image[RGB] │" in out and "┆ <Image>    │" in out and "┆ None       │" in out
    html = df.collect()._repr_html_()
    assert html.count("data:image/png;base64,") == 1 and "<th" in html and "Image[RGB]" in html
    assert "None" in html


def test_repr_of_a_lazy_frame_shows_the_schema():
    text = repr(mf.from_pydict({"a": [1]}).with_column("b", col("a") + 1))
    assert "│ a     ┆ b     │" in text and "Int64" in text and "not materialized" in text
