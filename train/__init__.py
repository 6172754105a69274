"""Stage 2 and 3: caption encoder, image head, losses, trainer, fine-tuning."""
