"""BERT encoder + MLM head (padded and packed paths), config presets, HF import/export, FLOP counts."""
from engine.bert.config import BertConfig, PRESETS, from_hf_config, preset, to_hf_config
from engine.bert.flops import training_flops, training_flops_per_token
from engine.bert.hf_io import HFFolderError, hf_state_dict, load_hf_folder, save_hf_folder
from engine.bert.modeling import IGNORE_INDEX, BertForMaskedLM, BertInputError, MLMOutput, count_parameters

__all__ = [
    "BertConfig", "PRESETS", "preset", "from_hf_config", "to_hf_config",
    "BertForMaskedLM", "MLMOutput", "BertInputError", "IGNORE_INDEX", "count_parameters",
    "load_hf_folder", "save_hf_folder", "hf_state_dict", "HFFolderError",
    "training_flops_per_token", "training_flops",
]
