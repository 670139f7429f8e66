"""Pixel conventions shared by the data statistics and the detector's preprocessing."""

# ITU-R BT.601 luma weights: a greyscale run's images and statistics are this weighting of R, G and B
LUMA = (0.299, 0.587, 0.114)
