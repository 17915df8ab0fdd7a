"""Data: the documented on-disk data-set format, the healthy cohort and synthetic lesions."""
