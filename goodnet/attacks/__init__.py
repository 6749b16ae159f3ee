"""Attacks: triggers, BadNet poisoning and training, and the built-in benchmarks.

Attacks never import defenses: both build on the core modules only.
"""
