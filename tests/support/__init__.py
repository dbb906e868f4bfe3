"""Helpers the tests share: formula weights, fixture data, real photos from installed packages."""
