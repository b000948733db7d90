"""One module per trigger; each registers itself with ``bye.attacks.registry.register_trigger``.

Modules starting with an underscore hold shared helpers and register nothing.
"""
