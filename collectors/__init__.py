"""How evidence is gathered: one module per collector family, contract in ``base``."""
