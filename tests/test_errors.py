"""The exception tree: the classes, the tree drawn in ``mmbeam/errors.py``'s docstring, its
``__all__`` and the README's list of errors cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mmbeam import errors


def _drawn_tree() -> dict[str, str | None]:
    """Each class of the docstring's tree -> its parent there (None for the root)."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in errors.__doc__.splitlines():
        match = re.match(r"^(\s*(?:[│ ]   )*(?:[├└]── )?)([A-Z]\w*Error)\b", line)
        if not match:
            continue
        depth, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def _public_errors() -> set[str]:
    return {n for n in errors.__all__
            if isinstance(getattr(errors, n), type) and issubclass(getattr(errors, n), BaseException)}


def test_the_drawn_tree_is_read_whole():
    tree = _drawn_tree()
    assert tree["MmbeamError"] is None and tree["StageError"] == "MmbeamError"
    assert tree["ImageTooLargeError"] == "DecodeError" and tree["UnsafePathError"] == "UploadError"
    assert len(tree) >= 17


def test_each_error_is_drawn_once():
    drawn = re.findall(r"[├└]── ([A-Z]\w*Error)\b", errors.__doc__)
    assert sorted(n for n in set(drawn) if drawn.count(n) > 1) == []


def test_every_public_error_is_drawn_and_every_drawn_error_is_public():
    assert set(_drawn_tree()) == _public_errors()


@pytest.mark.parametrize("name", sorted(_drawn_tree()))
def test_each_error_subclasses_the_parent_the_tree_draws(name):
    cls, parent = getattr(errors, name), _drawn_tree()[name]
    if parent is None:
        assert cls.__bases__ == (Exception,)
        return
    # the first mmbeam base is the drawn parent (a second base may be a builtin: ValueError...)
    mmbeam_bases = [b for b in cls.__bases__ if issubclass(b, errors.MmbeamError)]
    assert mmbeam_bases == [getattr(errors, parent)]


def test_stage_errors_are_the_ones_drawn_under_stage_error():
    tree = _drawn_tree()

    def under_stage_error(name):
        while name is not None:
            if name == "StageError":
                return True
            name = tree[name]
        return False

    for name in tree:
        assert issubclass(getattr(errors, name), errors.StageError) == under_stage_error(name)


def test_the_readme_names_every_public_error():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    paragraph = readme[readme.index("Errors form one tree"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    assert {n for n in _public_errors() if f"`{n}`" not in paragraph} == set()


def test_the_readme_lists_as_stage_errors_exactly_the_stage_errors():
    """The README draws the tree in words: the errors in the parenthesis after ``StageError``
    are the per-element failures, the others are not."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    paragraph = readme[readme.index("Errors form one tree"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    stage_part = paragraph[paragraph.index("`StageError` ("):]
    stage_part = stage_part[:stage_part.index(")")]
    named = set(re.findall(r"`(\w+Error)`", stage_part)) - {"StageError"}
    assert named == {n for n in _public_errors()
                     if issubclass(getattr(errors, n), errors.StageError) and n != "StageError"}
