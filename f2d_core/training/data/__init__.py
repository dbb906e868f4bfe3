"""The training set: FFHQ crops, per-photo features, the cache and its report."""
