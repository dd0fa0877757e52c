"""fieldtrace's shipped data: the knowledge base (kb/*.yaml) and the example site config.

Not code: this file exists only so the folder ships in the wheel as package data.
"""
