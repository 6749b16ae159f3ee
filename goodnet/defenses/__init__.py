"""Defenses: one module per method, each naming its paper in its docstring.

Model defenses take a suspect :class:`goodnet.models.Classifier` and clean
data (``Defense(**params).fit(classifier, clean, poisoned=())``); see
:mod:`goodnet.base` for the contract every defense follows.
"""
