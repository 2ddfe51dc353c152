"""Tiny random-weight twins of the real model classes, for the offline demo and the tests.

Kept apart from the loaders (latentforge.models, latentforge.captioner_models) so that a
recipe change never touches loading code, and the other way round. Nothing here imports those
modules: what a twin needs from a preset is passed in.
"""
