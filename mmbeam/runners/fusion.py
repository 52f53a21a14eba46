"""Automatic fusion of consecutive per-element transforms, as a FnApiRunner phase.

Written the plain way, ``Download() | DecodeImage() | ResizeImage(...) | EncodeImage(...) |
Upload(...)`` is five ParDos of :class:`~mmbeam.transforms._base.ElementFn`; Beam fuses them
into one stage, but each still keeps its own window of rows in flight and blocks the one bundle
thread on it, so the chain runs at about two thirds of ``mt.Fuse(...)``'s speed.
:func:`fuse_element_fns` merges such a producer into its consumer before Beam's own phases run:
one ParDo whose ElementFn runs the producer's steps then the consumer's as one
:class:`~mmbeam.ops.rowchain.RowChain`, so a chain of five becomes one, as with ``mt.Fuse``.

It merges only when nothing can tell the difference: the PCollection between them has no other
reader (side inputs included), both agree on ``keyed``, environment, windowing and annotations
(resource hints), the producer has only its main output and no exception handling, and the
consumer has no side inputs and is a single step. The merged ElementFn keeps each part's
behaviour (its ``parts``): its metrics, nulls passing through, a failure named by the failing
part's own input, and only the consumer's failures going to its ``failed`` output.

mmbeam's local runner and its Dask and Ray runners run this phase (``--no_fuse_elements`` turns
it off, to see each transform's own window and metrics); portable runners (Flink, Dataflow) do
their own fusion, so there ``mt.Fuse`` is the way to get one kernel.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

from apache_beam.internal import pickler
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import translations
from apache_beam.utils import proto_utils

from mmbeam.ops.rowchain import RowChain
from mmbeam.transforms._base import ElementFn
from mmbeam.transforms.options import MmbeamOptions

__all__ = ["fuse_element_fns", "fuses_elements", "with_element_fusion"]

_log = logging.getLogger(__name__)
_PAR_DO = common_urns.primitives.PAR_DO.urn


def fuses_elements(options: Any) -> bool:
    """Whether ``options`` (PipelineOptions or None) leave automatic fusion on."""
    return options is None or options.view_as(MmbeamOptions).fuse_elements


def with_element_fusion(phases: list, options: Any) -> list:
    """``phases`` with :func:`fuse_element_fns` first, unless ``--no_fuse_elements``."""
    return [fuse_element_fns, *phases] if fuses_elements(options) else list(phases)


def fuse_element_fns(stages, pipeline_context):
    """The phase: ``stages`` (singleton leaf transforms, in topological order) with each
    fusable producer ElementFn merged into its consumer (see the module doc)."""
    stages = list(stages)
    components = pipeline_context.components
    readers = collections.Counter(
        pcoll for stage in stages for t in stage.transforms for pcoll in t.inputs.values())
    producer = {pcoll: stage for stage in stages for t in stage.transforms
                for pcoll in t.outputs.values()}
    fns: dict[str, ElementFn | None] = {}
    merged_away = set()
    result = []
    for stage in stages:
        consumer = _element_transform(stage, fns)
        if consumer is not None and len(consumer.inputs) == 1:
            pcoll = next(iter(consumer.inputs.values()))
            before = producer.get(pcoll)
            upstream = _element_transform(before, fns) if before is not None else None
            if upstream is not None and readers[pcoll] == 1 and _fusable(
                    upstream, fns[upstream.unique_name], consumer, fns[consumer.unique_name],
                    components):
                stage = _merge(before, upstream, consumer, fns, components)
                merged_away.add(before.name)
                for out in consumer.outputs.values():
                    producer[out] = stage
        result.append(stage)
    return [s for s in result if s.name not in merged_away]


def _element_transform(stage, fns) -> beam_runner_api_pb2.PTransform | None:
    """The stage's ParDo if it is one of an ElementFn (no state, timers or splitting)."""
    if len(stage.transforms) != 1:
        return None
    transform = stage.transforms[0]
    if transform.spec.urn != _PAR_DO:
        return None
    if transform.unique_name not in fns:
        fns[transform.unique_name] = _load_fn(transform)
    return transform if fns[transform.unique_name] is not None else None


def _load_fn(transform) -> ElementFn | None:
    payload = proto_utils.parse_Bytes(transform.spec.payload, beam_runner_api_pb2.ParDoPayload)
    if (payload.do_fn.urn != python_urns.PICKLED_DOFN_INFO or payload.side_inputs
            or payload.state_specs or payload.timer_family_specs
            or payload.restriction_coder_id or payload.requests_finalization):
        return None
    try:
        fn, args, kwargs, side, windowing = pickler.loads(payload.do_fn.payload)
    except Exception as exc:  # noqa: BLE001 - a DoFn the driver cannot load is left alone
        _log.debug("not fusing %s: %s", transform.unique_name, exc)
        return None
    if not isinstance(fn, ElementFn) or args or kwargs or side or windowing:
        return None
    return fn


def _fusable(up, up_fn: ElementFn, down, down_fn: ElementFn, components) -> bool:
    if len(up.outputs) != 1 or up_fn.failures or len(down_fn.chain.steps) != 1:
        return False
    (up_in,), (up_out,) = up.inputs.values(), up.outputs.values()
    windowing = {components.pcollections[p].windowing_strategy_id
                 for p in (up_in, up_out, *down.outputs.values())}
    return (up_fn.keyed == down_fn.keyed and len(windowing) == 1
            and up.environment_id == down.environment_id
            and dict(up.annotations) == dict(down.annotations))


def _merge(up_stage, up, down, fns, components) -> translations.Stage:
    """One stage of one ParDo: ``up``'s input, ``down``'s outputs, the two chains as one."""
    up_fn, down_fn = fns[up.unique_name], fns[down.unique_name]
    steps = up_fn.chain.steps + down_fn.chain.steps
    fn = ElementFn(RowChain(steps), keyed=down_fn.keyed, failures=down_fn.failures,
                   memory_budget=min(up_fn.memory_budget, down_fn.memory_budget),
                   max_window=max(up_fn.max_window, down_fn.max_window),
                   parts=(*up_fn.parts, len(up_fn.chain.steps)))
    payload = proto_utils.parse_Bytes(down.spec.payload, beam_runner_api_pb2.ParDoPayload)
    payload.do_fn.payload = pickler.dumps((fn, (), {}, None, None))
    merged = beam_runner_api_pb2.PTransform()
    merged.CopyFrom(down)
    merged.unique_name = _unique(f"{up.unique_name}+{down.unique_name}", components)
    merged.spec.payload = payload.SerializeToString()
    (tag,) = merged.inputs
    merged.inputs[tag] = next(iter(up.inputs.values()))
    components.transforms[merged.unique_name].CopyFrom(merged)
    fns[merged.unique_name] = fn
    return translations.Stage(merged.unique_name, [merged], parent=up_stage.parent)


def _unique(name: str, components) -> str:
    candidate, n = name, 1
    while candidate in components.transforms:
        n += 1
        candidate = f"{name}#{n}"
    return candidate
