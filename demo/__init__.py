"""The demo models: the embedded demo pair, the models it is built from, and a demo training run.

Not the engine: these build the models a new user (and the tests) serve and study, offline.
"""
