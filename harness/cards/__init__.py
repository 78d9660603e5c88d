"""Model cards and dataset cards: YAML files parsed into frozen, strictly validated dataclasses.

Unknown keys are errors that name the key and the closest valid one. A card may start with ``include: other.yaml``
(a path relative to the card's folder): the included file is deep-merged under the card, so variants only state
what differs. Cards are data; this package never imports torch.

Modules: ``schema`` (strict parsing, includes, hashing, the enumerations), ``dataset`` (DatasetCard), ``model``
(ModelCard), ``registry`` (card folders, lookup by name, suites, validate). Everything public is re-exported here.
"""
from __future__ import annotations

from harness.cards.dataset import DatasetCard, ElevaterDatasetFields, SplitSpec, OPENCLIP_TEXTS, parse_dataset_card
from harness.cards.model import (ElevaterModelFields, ModelCard, PreprocessSpec, PretrainedTag, WeightsSpec,
                                 parse_model_card)
from harness.cards.registry import (ELEVATER_SUITE, SUITES_FILE, Suite, all_dataset_cards, all_model_cards,
                                    dataset_card_names, get_dataset_card, get_model_card, get_suite,
                                    load_dataset_card, load_model_card, load_suites, method_rank, model_card_names,
                                    validate_all)
from harness.cards.schema import (DATA_FORMATS, DATASET_TYPES, ELEVATER_METRICS, IMAGENET, INTERPOLATIONS, METHODS,
                                  RESIZE_MODES, WEIGHT_SOURCES, card_to_dict, content_hash, load_yaml_with_includes)

__all__ = [
    "DATASET_TYPES", "DATA_FORMATS", "ELEVATER_METRICS", "ELEVATER_SUITE", "IMAGENET", "INTERPOLATIONS", "METHODS",
    "OPENCLIP_TEXTS", "RESIZE_MODES", "SUITES_FILE", "WEIGHT_SOURCES", "DatasetCard", "ElevaterDatasetFields",
    "ElevaterModelFields", "ModelCard", "PreprocessSpec", "PretrainedTag", "SplitSpec", "Suite", "WeightsSpec",
    "all_dataset_cards", "all_model_cards", "card_to_dict", "content_hash", "dataset_card_names",
    "get_dataset_card", "get_model_card", "get_suite", "load_dataset_card", "load_model_card", "load_suites",
    "load_yaml_with_includes", "method_rank", "model_card_names", "parse_dataset_card", "parse_model_card",
    "validate_all",
]
