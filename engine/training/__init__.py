"""Trainer stage: run config, DeepSpeed set-up, the loop, checkpoints, metrics, HF export.

`engine/pretrain.py` = `config.PretrainConfig` → `setup.prepare_run` (every check, nothing written)
→ `setup.init_distributed` → `trainer.Trainer(plan).train()`. `export.export_checkpoint` turns a checkpoint of any
ZeRO stage into a Hugging Face folder.
"""
