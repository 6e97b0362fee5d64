"""One ComponentResource per concept of the runbook; pure functions build their specs and options."""
