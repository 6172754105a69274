"""Evaluation: Recall@K metrics, the COCO / Flickr30K test protocols, and the eval stage."""
