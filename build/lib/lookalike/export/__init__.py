"""Export: score every publisher user, write thresholded segments, release a DP report."""
