"""Preference data: JSONL records → validated, tokenized examples → padded batches.

``records`` reads the three on-disk formats, ``preference`` tokenizes and truncates, ``batch``
collates, ``sampler`` decides which rows each data-parallel rank sees at each step, and
``synthetic`` makes the bundled default dataset. Nothing here imports megatron or hydra.
"""

from nemo_rpo.data.batch import PreferenceBatch, collate
from nemo_rpo.data.errors import DataError
from nemo_rpo.data.jsonl import read_jsonl, write_jsonl
from nemo_rpo.data.preference import (
    DatasetStats,
    PreferenceDataset,
    PreferenceExample,
    add_kl_pairs,
    load_preference_dataset,
    tokenize_records,
)
from nemo_rpo.data.records import FORMATS, PreferenceRecord, read_preference_records
from nemo_rpo.data.sampler import GlobalBatchSampler, split_micro_batches
from nemo_rpo.data.synthetic import default_train_path, make_synthetic_preferences
from nemo_rpo.data.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, build_tokenizer

__all__ = [
    "FORMATS",
    "ByteTokenizer",
    "DataError",
    "DatasetStats",
    "GlobalBatchSampler",
    "HFTokenizer",
    "PreferenceBatch",
    "PreferenceDataset",
    "PreferenceExample",
    "PreferenceRecord",
    "Tokenizer",
    "add_kl_pairs",
    "build_tokenizer",
    "collate",
    "default_train_path",
    "load_preference_dataset",
    "make_synthetic_preferences",
    "read_jsonl",
    "read_preference_records",
    "split_micro_batches",
    "tokenize_records",
    "write_jsonl",
]
