"""One training loop (``loop.py``) and one small objective module per method."""
