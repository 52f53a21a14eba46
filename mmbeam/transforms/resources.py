"""What a model step asks of a cluster runner: worker count and CPUs/GPUs per worker.

``RunModel`` and UDF stages carry a :class:`StepResources` to the runner as an annotation on
their transforms in the pipeline proto (Beam keeps a transform's annotations through fusion), so
any runner can read it from a fused stage with :func:`stage_resources`. mmbeam's Dask and Ray
runners never fuse steps whose requests differ (so a model's preparation runs on every worker)
and run a stage that asks for resources on its own pool: ``concurrency`` actors on Ray, each
requesting ``num_cpus``/``num_gpus``, or ``concurrency=(min, max)`` for a pool that grows while
work waits and shrinks when idle; on Dask the workers declaring the resources. The in-process
runner ignores it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from mmbeam.errors import ConfigError

__all__ = ["ANNOTATION", "StepResources", "check_concurrency", "max_concurrency", "requesting",
           "stage_resources"]

#: the annotation key on a transform of the pipeline proto (JSON of a StepResources)
ANNOTATION = "mmbeam_resources"


def check_concurrency(value: Any) -> int | tuple[int, int] | None:
    """A step's ``concurrency``: None, a positive int (a fixed pool) or ``(min, max)`` positive
    ints with min <= max (an autoscaling pool); a list is taken as a pair."""
    def positive(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if value is None or positive(value):
        return value
    if (isinstance(value, (tuple, list)) and len(value) == 2 and all(map(positive, value))
            and value[0] <= value[1]):
        return (value[0], value[1])
    raise ConfigError(f"concurrency must be a positive int, (min, max) with 1 <= min <= max, "
                      f"or None; got {value!r}")


def max_concurrency(value: int | tuple[int, int] | None) -> int | None:
    """The most instances a ``concurrency`` allows (a pool's max)."""
    return value[1] if isinstance(value, tuple) else value


@dataclass(frozen=True)
class StepResources:
    """``concurrency`` workers (None: the runner decides; ``(min, max)``: an autoscaling pool),
    each with ``num_cpus``/``num_gpus``; ``steps`` names the steps that asked (for errors)."""

    concurrency: int | tuple[int, int] | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    steps: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "concurrency", check_concurrency(self.concurrency))
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, float)) or value < 0):
                raise ConfigError(f"{name} must be a non-negative number or None, got {value!r}")

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.concurrency, self.num_cpus, self.num_gpus))

    @property
    def bounds(self) -> tuple[int, int] | None:
        """``(min, max)`` pool size; None when the runner decides."""
        c = self.concurrency
        return None if c is None else c if isinstance(c, tuple) else (c, c)

    def encode(self) -> bytes:
        """These requests as bytes (a stage annotation)."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> StepResources:
        """The requests encoded by :meth:`encode`."""
        fields = json.loads(data)
        concurrency = fields.get("concurrency")
        if isinstance(concurrency, list):
            fields["concurrency"] = tuple(concurrency)
        return cls(**{**fields, "steps": tuple(fields.get("steps", ()))})

    def merge(self, other: StepResources) -> StepResources:
        """One request covering both steps (fused in one stage): the larger CPU/GPU needs and
        the smaller worker count."""

        def pick(a: Any, b: Any, fn) -> Any:
            return b if a is None else a if b is None else fn(a, b)

        def smaller(a, b):
            (a0, a1), (b0, b1) = (a if isinstance(a, tuple) else (a, a),
                                  b if isinstance(b, tuple) else (b, b))
            low, high = min(a0, b0), min(a1, b1)
            return low if low == high and not isinstance(a, tuple) else (low, high)

        return StepResources(pick(self.concurrency, other.concurrency, smaller),
                             pick(self.num_cpus, other.num_cpus, max),
                             pick(self.num_gpus, other.num_gpus, max),
                             tuple(dict.fromkeys(self.steps + other.steps)))


@contextlib.contextmanager
def requesting(pipeline: Any, resources: StepResources) -> Iterator[None]:
    """Within this block, transforms applied to ``pipeline`` carry ``resources``."""
    if not resources:
        yield
        return
    with pipeline.transform_annotations(**{ANNOTATION: resources.encode()}):
        yield


def stage_resources(transforms: Iterable[Any]) -> StepResources:
    """The merged request of a fused stage's transforms (``beam_runner_api_pb2.PTransform``)."""
    merged = StepResources()
    for transform in transforms:
        data = transform.annotations.get(ANNOTATION)
        if data:
            merged = merged.merge(StepResources.decode(data))
    return merged
