"""A face becomes S*: the MSID encoder, the mapper, the encode path and face files."""
