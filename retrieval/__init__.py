"""Using a trained model: load a train or finetune checkpoint, embed store splits, evaluate (the eval stage)."""
