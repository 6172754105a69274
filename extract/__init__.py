"""Stage 1: CNN image features (VGG19 FC7 / ResNet pooled, 1 or 10 crops) into the HDF5 feature store."""
