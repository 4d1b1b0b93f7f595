"""The demo models: the embedded demo pair, the models it is built from, a demo training run, and
`lda selftest`, which checks the engine on this device with tiny models against the reference.

Not the engine: these build the models a new user (and the tests) serve and study, offline.
"""
