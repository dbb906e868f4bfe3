"""Face-recognition training data as the field ships it: identity folders, insightface record files."""
