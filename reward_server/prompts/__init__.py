"""Built-in prompt templates of the VLM judge (``<task>.txt``); a package so they ship in the wheel."""
