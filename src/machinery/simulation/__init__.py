"""Testing machines before they run: scenarios (``machinery test``) and ``machinery simulate``."""
