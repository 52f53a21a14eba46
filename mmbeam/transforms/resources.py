"""What a model step asks of a cluster runner: worker count and CPUs/GPUs per worker.

``RunModel`` and UDF stages carry a :class:`StepResources` to the runner as an annotation on
their transforms in the pipeline proto (Beam keeps a transform's annotations through fusion), so
any runner can read it from a fused stage with :func:`stage_resources`. The RayRunner turns it
into a dedicated pool of ``concurrency`` actors, each requesting ``num_cpus``/``num_gpus``;
runners that do not read it (the in-process runner, Dask) run the step on their usual workers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from mmbeam.errors import ConfigError

__all__ = ["ANNOTATION", "StepResources", "requesting", "stage_resources"]

#: the annotation key on a transform of the pipeline proto (JSON of a StepResources)
ANNOTATION = "mmbeam_resources"


@dataclass(frozen=True)
class StepResources:
    """``concurrency`` workers (None: the runner decides), each with ``num_cpus``/``num_gpus``;
    ``steps`` names the steps that asked (for error messages)."""

    concurrency: int | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    steps: tuple[str, ...] = ()

    def __post_init__(self):
        if self.concurrency is not None and (isinstance(self.concurrency, bool) or not isinstance(
                self.concurrency, int) or self.concurrency < 1):
            raise ConfigError(f"concurrency must be a positive int or None, "
                              f"got {self.concurrency!r}")
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, float)) or value < 0):
                raise ConfigError(f"{name} must be a non-negative number or None, got {value!r}")

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.concurrency, self.num_cpus, self.num_gpus))

    def encode(self) -> bytes:
        """These requests as bytes (a stage annotation)."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> StepResources:
        """The requests encoded by :meth:`encode`."""
        fields = json.loads(data)
        return cls(**{**fields, "steps": tuple(fields.get("steps", ()))})

    def merge(self, other: StepResources) -> StepResources:
        """One request covering both steps (fused in one stage): the larger CPU/GPU needs and
        the smaller worker count."""

        def pick(a: Any, b: Any, fn) -> Any:
            return b if a is None else a if b is None else fn(a, b)

        return StepResources(pick(self.concurrency, other.concurrency, min),
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
