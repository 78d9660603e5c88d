"""The models layer: OpenCLIP models and the REACT gated architecture, weights resolution and strict loading.

Modules: ``factory`` (build any architecture by name, REACT included), ``react`` (the gated block), ``user_configs``
(the user's own architecture JSONs: HARNESS_MODEL_CONFIGS folders, a card's ``architecture_config``), ``weights``
(where a card's weights are, reading and strict loading), ``build`` (model card -> :class:`LoadedModel`),
``precision`` (autocast / dtypes), ``numerics`` (the toolkit's LayerNorm vs OpenCLIP's), ``tags`` (REACT's
``--pretrained`` tags -> model cards), ``elevater_yaml`` / ``elevater_export`` (the toolkit's model YAMLs in and out).
Importing this package imports neither torch nor open_clip; the functions below do, when called.
"""
from __future__ import annotations

from harness.models.build import LoadedModel, build_model, state_dict_sha256
from harness.core.hashing import file_sha256
from harness.models.weights import (hub_reachable, load_weights_strict, read_state_dict,
                                    read_weights_file, resolve_weights, state_dict_from)

__all__ = ["LoadedModel", "build_model", "file_sha256", "hub_reachable", "load_weights_strict", "read_state_dict",
           "read_weights_file", "resolve_weights", "state_dict_from", "state_dict_sha256"]
