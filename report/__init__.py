"""The report of a run: training curves, Recall@K, config, example retrievals, hard negatives, ablation bars."""
