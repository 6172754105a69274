"""Stage 3, fine-tuning: the train-stage model with its CNN put back in front and trained on random crops of the raw images."""
