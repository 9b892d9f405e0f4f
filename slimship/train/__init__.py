"""Fine-tuning: the train stage (transformers Trainer, AMP, early stopping, resume, DDP)."""
