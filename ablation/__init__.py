"""The ablation study: a grid of losses x image features x text pooling, trained and tested with one budget."""
