"""Automatic fusion of consecutive per-element transforms, as a FnApiRunner phase.

Written the plain way, ``Download() | DecodeImage() | ResizeImage(...) | EncodeImage(...) |
Upload(...)`` is five ParDos of :class:`~mmbeam.transforms.element.ElementFn`; Beam fuses them
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
import copy
import logging
from typing import Any

from apache_beam.internal import pickler
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import translations
from apache_beam.utils import proto_utils

from mmbeam.beam_internals import stage_flags
from mmbeam.ops.rowchain import RowChain
from mmbeam.transforms.element import ElementFn
from mmbeam.transforms.options import MmbeamOptions
from mmbeam.transforms.resources import ANNOTATION

__all__ = ["create_stages", "fuse_element_fns", "fuses_elements", "split_at_resource_changes",
           "with_element_fusion"]

_log = logging.getLogger(__name__)
_PAR_DO = common_urns.primitives.PAR_DO.urn


def fuses_elements(options: Any) -> bool:
    """Whether ``options`` (PipelineOptions or None) leave automatic fusion on."""
    return options is None or options.view_as(MmbeamOptions).fuse_elements


def with_element_fusion(phases: list, options: Any) -> list:
    """``phases`` with :func:`fuse_element_fns` first, unless ``--no_fuse_elements``."""
    return [fuse_element_fns, *phases] if fuses_elements(options) else list(phases)


def create_stages(runner, pipeline_proto, options: Any, *, stateful_roots: bool = False,
                  resource_roots: bool = False, after_fusion: tuple = ()):
    """What ``FnApiRunner.create_stages`` does, with :func:`fuse_element_fns` first (unless
    ``--no_fuse_elements``); ``stateful_roots`` makes every stateful DoFn start a stage, so the
    distributed runners can hash-partition its input by key between stages; ``resource_roots``
    starts a stage wherever the resource request changes (:func:`split_at_resource_changes`),
    so a model runs on its own pool and its preparation on every worker; ``after_fusion``
    phases run right after Beam's greedy fusion (the distributed runners add data outputs for
    the PCollections they bring back to the driver)."""
    phases = [
        translations.annotate_downstream_side_inputs,
        *([translations.annotate_stateful_dofns_as_roots] if stateful_roots else []),
        *([split_at_resource_changes] if resource_roots else []),
        translations.fix_side_input_pcoll_coders,
        translations.pack_combiners,
        translations.lift_combiners,
        translations.expand_sdf,
        translations.expand_gbk,
        translations.sink_flattens,
        translations.greedily_fuse,
        *after_fusion,
        translations.read_to_impulse,
        translations.impulse_to_input,
        translations.sort_stages,
        translations.add_impulse_to_dangling_transforms,
        translations.setup_timer_mapping,
        translations.populate_data_channel_coders,
    ]
    return translations.create_and_optimize_stages(
        copy.deepcopy(pipeline_proto),
        phases=with_element_fusion(phases, options),
        known_runner_urns=frozenset([common_urns.primitives.FLATTEN.urn,
                                     common_urns.primitives.GROUP_BY_KEY.urn]),
        **stage_flags(runner))


def split_at_resource_changes(stages, pipeline_context):
    """The phase (before Beam's greedy fusion): a transform whose resource request (the
    :data:`~mmbeam.transforms.resources.ANNOTATION`, e.g. a model's ``num_gpus``) differs from
    that of a producer of one of its inputs becomes a forced root, so Beam's fusion puts a
    stage boundary (a data write and read) between them. Without it a model and the download,
    decode and resize before it would be one stage, all of it on the model's few actors."""
    stages = list(stages)
    wants = {}  # pcollection -> the resource annotation of its producer
    for stage in stages:
        for transform in stage.transforms:
            for pcoll in transform.outputs.values():
                wants[pcoll] = transform.annotations.get(ANNOTATION, b"")
    for stage in stages:
        for transform in stage.transforms:
            mine = transform.annotations.get(ANNOTATION, b"")
            if any(wants.get(pcoll, mine) != mine for pcoll in transform.inputs.values()):
                stage.forced_root = True
    return stages


def fuse_element_fns(stages, pipeline_context):
    """The phase: ``stages`` (singleton leaf transforms, in topological order) with each
    fusable producer ElementFn merged into its consumer (see the module doc)."""
    stages = list(stages)
    components = pipeline_context.components
    readers = collections.Counter(
        pcoll for stage in stages for t in stage.transforms for pcoll in t.inputs.values())
    producer = {pcoll: stage for stage in stages for t in stage.transforms
                for pcoll in t.outputs.values()}
    fns: dict[str, ElementFn | None] = {}  # stage name -> its ElementFn, None if it has none
    merged_away = set()
    result = []
    for stage in stages:
        up_stage = _sole_producer(stage, producer, readers)
        if up_stage is not None and _fusable(up_stage, stage, fns, components):
            stage = _merge(up_stage, stage, fns, components)
            merged_away.add(up_stage.name)
            for pcoll in stage.transforms[0].outputs.values():
                producer[pcoll] = stage
        result.append(stage)
    return [stage for stage in result if stage.name not in merged_away]


def _sole_producer(stage, producer, readers):
    """The stage writing ``stage``'s only input, when both are one ParDo, that input is the
    producer's only output and nothing else reads it."""
    if len(stage.transforms) != 1 or stage.transforms[0].spec.urn != _PAR_DO:
        return None
    inputs = list(stage.transforms[0].inputs.values())  # side inputs included
    up_stage = producer.get(inputs[0]) if len(inputs) == 1 else None
    if up_stage is None or readers[inputs[0]] != 1 or len(up_stage.transforms) != 1:
        return None
    up = up_stage.transforms[0]
    return up_stage if up.spec.urn == _PAR_DO and len(up.outputs) == 1 else None


def _fusable(up_stage, down_stage, fns, components) -> bool:
    up_fn, down_fn = _element_fn(up_stage, fns), _element_fn(down_stage, fns)
    if up_fn is None or down_fn is None or up_fn.failures or len(down_fn.chain.steps) != 1:
        return False
    up, down = up_stage.transforms[0], down_stage.transforms[0]
    windowing = {components.pcollections[pcoll].windowing_strategy_id
                 for pcoll in (*up.inputs.values(), *up.outputs.values(), *down.outputs.values())}
    return (up_fn.keyed == down_fn.keyed and len(windowing) == 1
            and up.environment_id == down.environment_id
            and dict(up.annotations) == dict(down.annotations))


def _element_fn(stage, fns) -> ElementFn | None:
    """The stage's ElementFn (loaded once), None for any other DoFn or one with state, timers,
    splitting or side inputs."""
    if stage.name not in fns:
        fns[stage.name] = _load_fn(stage.transforms[0])
    return fns[stage.name]


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


def _merge(up_stage, down_stage, fns, components) -> translations.Stage:
    """One stage of one ParDo: the producer's input, the consumer's outputs, the two chains
    as one."""
    up, down = up_stage.transforms[0], down_stage.transforms[0]
    up_fn, down_fn = fns[up_stage.name], fns[down_stage.name]
    fn = ElementFn(RowChain(up_fn.chain.steps + down_fn.chain.steps), keyed=down_fn.keyed,
                   failures=down_fn.failures,
                   memory_budget=min(up_fn.memory_budget, down_fn.memory_budget),
                   max_window=max(up_fn.max_window, down_fn.max_window),
                   parts=(*up_fn.parts, len(up_fn.chain.steps)))
    payload = proto_utils.parse_Bytes(down.spec.payload, beam_runner_api_pb2.ParDoPayload)
    payload.do_fn.payload = pickler.dumps((fn, (), {}, None, None))
    merged = beam_runner_api_pb2.PTransform()
    merged.CopyFrom(down)
    merged.unique_name = f"{up.unique_name}+{down.unique_name}"
    merged.spec.payload = payload.SerializeToString()
    (tag,) = merged.inputs
    merged.inputs[tag] = next(iter(up.inputs.values()))
    transform_id = translations.unique_name(components.transforms,
                                            f"{up_stage.name}+{down_stage.name}")
    components.transforms[transform_id].CopyFrom(merged)
    fns[transform_id] = fn
    return translations.Stage(transform_id, [merged], parent=up_stage.parent)
