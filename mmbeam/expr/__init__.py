"""Expressions: ``col``, ``lit``, operators and the ``.str`` / ``.url`` / ``.image`` namespaces.

This package builds declarative IR (:mod:`mmbeam.expr.ir`) and infers types
(:mod:`mmbeam.expr.infer`); it never evaluates anything and never imports Beam.
"""

from mmbeam.expr.expr import Expr, col, lit
from mmbeam.expr.infer import infer
from mmbeam.expr.namespaces import ImageNamespace, StrNamespace, UrlNamespace
from mmbeam.expr.udf import UDF, udf

__all__ = ["UDF", "Expr", "ImageNamespace", "StrNamespace", "UrlNamespace", "col", "infer", "lit",
           "udf"]
