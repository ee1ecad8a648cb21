"""Decisions: scheduling policies (pure functions of a snapshot) and the validator that checks them."""
