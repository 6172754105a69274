"""Released feature layouts (VSE++ precomp, SCAN/BUTD regions, a dataset plus a matrix) into a feature store."""
